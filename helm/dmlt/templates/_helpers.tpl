{{/* Chart name, overridable. */}}
{{- define "dmlt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name, with the chart name unless it has it. */}}
{{- define "dmlt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dmlt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "dmlt.labels" -}}
helm.sh/chart: {{ include "dmlt.chart" . }}
app.kubernetes.io/name: {{ include "dmlt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dmlt
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "dmlt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dmlt.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dmlt.operator.fullname" -}}
{{- printf "%s-operator" (include "dmlt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dmlt.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "dmlt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dmlt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dmlt.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The MLflow URI jobs get when they set none. */}}
{{- define "dmlt.defaultTrackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "dmlt.mlflow.fullname" .) .Release.Namespace (int .Values.mlflow.port) }}
{{- else }}
{{- .Values.operator.defaultTrackingUri }}
{{- end }}
{{- end }}

{{- define "dmlt.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{- define "dmlt.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "dmlt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret (in each study's namespace) whose key holds the default Optuna storage URL. */}}
{{- define "dmlt.storageSecretName" -}}
{{- if .Values.postgresql.enabled }}
{{- include "dmlt.postgresql.fullname" . }}
{{- else }}
{{- .Values.postgresql.existingSecret }}
{{- end }}
{{- end }}

{{- define "dmlt.storageSecretKey" -}}
{{- if .Values.postgresql.enabled }}url{{ else }}{{ .Values.postgresql.existingSecretKey }}{{ end }}
{{- end }}

{{/*
The PostgreSQL password: set in values, else kept from the Secret of an earlier install (it must
match the data on the retained volume), else generated. Rendered without a cluster (helm
template, lint, manifests/) there is nothing to look up and no randomness wanted, so it is
derived from the release: re-applying the same manifests keeps it, but anyone can compute it.
*/}}
{{- define "dmlt.postgresql.password" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "dmlt.postgresql.fullname" .) }}
{{- if .Values.postgresql.auth.password }}
{{- .Values.postgresql.auth.password }}
{{- else if and $existing $existing.data (hasKey $existing.data "password") }}
{{- index $existing.data "password" | b64dec }}
{{- else if lookup "v1" "Namespace" "" "kube-system" }}
{{- randAlphaNum 32 }}
{{- else }}
{{- printf "dmlt-postgresql/%s/%s" .Release.Namespace (include "dmlt.fullname" .) | sha256sum | trunc 32 }}
{{- end }}
{{- end }}

{{- define "dmlt.dashboard.fullname" -}}
{{- printf "%s-dashboard" (include "dmlt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when the dashboard is deployed: enabled, and there is a study database to show. */}}
{{- define "dmlt.dashboard.enabled" -}}
{{- if and .Values.dashboard.enabled (include "dmlt.storageSecretName" .) }}true{{ end }}
{{- end }}

{{/* The progress receiver's Service (both replicas serve it) and its TLS Secret. */}}
{{- define "dmlt.progress.serviceName" -}}
{{- printf "%s-progress" (include "dmlt.operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dmlt.progress.secretName" -}}
{{- .Values.operator.progress.tls.existingSecret | default (printf "%s-progress-tls" (include "dmlt.operator.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{/* The URL trainer Pods push to (the serving certificate names this host). */}}
{{- define "dmlt.progress.url" -}}
{{- printf "https://%s.%s.svc:%d" (include "dmlt.progress.serviceName" .) .Release.Namespace (int .Values.operator.progress.port) }}
{{- end }}

{{/*
"true" when the progress receiver runs: enabled, and its certificate exists or can be made
(a named existingSecret, the Secret of an earlier install, or a cluster to install into). Rendered
without a cluster (helm template, manifests/) a generated key would differ on every render, so
there the receiver is off and the operator reads progress from rank 0's log instead.
*/}}
{{- define "dmlt.progress.enabled" -}}
{{- $p := .Values.operator.progress }}
{{- if $p.enabled }}
{{- if or $p.tls.existingSecret (lookup "v1" "Secret" .Release.Namespace (include "dmlt.progress.secretName" .)) (lookup "v1" "Namespace" "" "kube-system") }}true{{ end }}
{{- end }}
{{- end }}
