#!/usr/bin/env bash
# Kueue for hack/cluster.sh (`DMLT_KUEUE=1 hack/cluster.sh up`): the manager that build-tools.sh
# builds from source (sigs.k8s.io/kueue/cmd/kueue at KUEUE_VERSION), alone on scratch as
# /manager (the path Kueue's chart runs), user 65532; and the manifests of Kueue's own Helm chart
# (charts/kueue of the same module, copied into the cache by the build) rendered with
# kueue-values.yaml and the local image. Image cached like local-path.sh's: an archive per content
# hash, and a dmlt.hash label on containerd's copy.
#
# Usage: kueue.sh package    build the image archive only (no containerd); prints its path
#        kueue.sh image      package, load into the cluster's containerd; prints the image reference
#        kueue.sh manifests  print the manifests (Namespace kueue-system + the chart's output)
#        kueue.sh smoke      check on a running cluster that Kueue admits a queued batch/v1 Job
#                            (kubectl from PATH or $KUBECTL; eval "$(hack/cluster.sh env)" first)
# Env:   DMLT_CACHE_DIR, DMLT_CONTAINERD_SOCK (the cluster's containerd; `image` only)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=binary-image.sh
source "$HERE/binary-image.sh"
VERSION="$KUEUE_VERSION"
DIR="$CACHE/kueue/$VERSION"
BIN="$DIR/bin/kueue"
CHART="$DIR/chart"
HELM="$CACHE/helm/$HELM_VERSION/bin/helm"
REPO=localhost/dmlt-kueue
REF="$REPO:$VERSION"
NAMESPACE=kueue-system
# the Debian base image (images.sh) for the smoke check's Job
BASE_IMAGE=localhost/dmlt-base:bookworm

log() { printf '[kueue %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

built() { [[ -x "$BIN" && -f "$CHART/Chart.yaml" ]] || "$HERE/build-tools.sh" kueue; }

package() {  # the image archive for the current binary, built once per content hash
  built
  package_binary kueue "$BIN" "$REF" /manager
}

image() {
  local sock="${DMLT_CONTAINERD_SOCK:?DMLT_CONTAINERD_SOCK: the containerd socket to load the image into}"
  package
  load_archive "$sock" "$REF"
  echo "$REF"
}

manifests() {
  built
  [[ -x "$HELM" ]] || "$HERE/build-tools.sh" helm
  # Pod Security: the manager meets `restricted` (non-root, no capabilities, RuntimeDefault
  # seccomp, read-only root filesystem).
  cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: restricted
EOF
  "$HELM" template kueue "$CHART" --namespace "$NAMESPACE" -f "$HERE/kueue-values.yaml" \
    --set "controllerManager.manager.image.repository=$REPO" \
    --set "controllerManager.manager.image.tag=$VERSION" \
    --set controllerManager.manager.image.pullPolicy=IfNotPresent
}

# smoke: a ResourceFlavor, a ClusterQueue with 1 CPU of quota, a LocalQueue, and a suspended Job
# that names the queue: Kueue admits it (creates its Workload, unsuspends it), and it completes.
smoke() {
  local kubectl="${KUBECTL:-kubectl}" ns=dmlt-kueue-smoke t0=$SECONDS rc=0
  local k=("$kubectl" --request-timeout=20s)
  cleanup() {
    "${k[@]}" delete namespace "$ns" --ignore-not-found --wait=true --timeout=60s >/dev/null || true
    "${k[@]}" delete clusterqueue dmlt-smoke --ignore-not-found >/dev/null || true
    "${k[@]}" delete resourceflavor dmlt-smoke --ignore-not-found >/dev/null || true
  }
  cleanup
  log "smoke: ResourceFlavor, ClusterQueue (cpu 1), LocalQueue and a suspended Job in $ns"
  "${k[@]}" apply -f - >/dev/null <<EOF
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: dmlt-smoke}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: dmlt-smoke}
spec:
  namespaceSelector: {}
  resourceGroups:
  - coveredResources: [cpu]
    flavors:
    - name: dmlt-smoke
      resources:
      - {name: cpu, nominalQuota: 1}
---
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels: {pod-security.kubernetes.io/enforce: restricted}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {name: dmlt-smoke, namespace: $ns}
spec: {clusterQueue: dmlt-smoke}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: smoke
  namespace: $ns
  labels: {kueue.x-k8s.io/queue-name: dmlt-smoke}
spec:
  suspend: true
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65534, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: smoke
        image: $BASE_IMAGE
        imagePullPolicy: IfNotPresent
        command: ["python3", "-c", "print('admitted by Kueue')"]
        resources: {requests: {cpu: 500m}}
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
EOF
  # Admitted: Kueue unsuspends the Job once the Workload it made for it is admitted to the
  # ClusterQueue (nothing else unsuspends it); then the Job runs to completion.
  local cq=""
  if ! "${k[@]}" -n "$ns" wait job/smoke --for=jsonpath='{.spec.suspend}'=false --timeout=60s >/dev/null; then
    rc=1; log "smoke: the Job was not admitted (unsuspended) within 60s"
  elif cq="$("${k[@]}" -n "$ns" get workloads.kueue.x-k8s.io -o jsonpath='{.items[0].status.admission.clusterQueue}')" \
      && [[ "$cq" != dmlt-smoke ]]; then
    rc=1; log "smoke: the Job runs but its Workload is not admitted to ClusterQueue dmlt-smoke (admission: '$cq')"
  elif ! "${k[@]}" -n "$ns" wait job/smoke --for=condition=Complete --timeout=120s >/dev/null; then
    rc=1; log "smoke: the admitted Job did not complete within 120s"
  fi
  "${k[@]}" -n "$ns" get workloads.kueue.x-k8s.io -o wide >&2 || true
  "${k[@]}" get clusterqueue dmlt-smoke -o wide >&2 || true
  if ((rc)); then
    "${k[@]}" -n "$ns" describe job/smoke >&2 || true
    "${k[@]}" -n "$ns" describe workloads.kueue.x-k8s.io >&2 || true
  else
    log "smoke: Job admitted by Kueue and completed ($("${k[@]}" -n "$ns" logs job/smoke 2>/dev/null | tail -n1)) in $((SECONDS - t0)) s"
  fi
  cleanup
  return $rc
}

case "${1:-}" in
  package) package; echo "$ARCHIVE" ;;
  image) image ;;
  manifests) manifests ;;
  smoke) smoke ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
