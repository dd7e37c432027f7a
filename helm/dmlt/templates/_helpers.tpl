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
