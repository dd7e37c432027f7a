#!/usr/bin/env bash
# Build the pinned upstream binaries from Go source (Go module proxy only) into
# ${DMLT_CACHE_DIR}/<tool>/<version>/bin.  A finished build leaves a .done stamp;
# a present stamp skips the build.  Usage: build-tools.sh [k8s|etcd|coredns|helm|kind|local-path|kwok|kueue|all]...
# kwok (simulated nodes for benchmarks/bench_scale.py and the e2e scale test) is built by
# `hack/cluster.sh up`; kueue (the job queueing controller, deployed by `hack/cluster.sh up` with
# DMLT_KUEUE=1) only when named or by `all`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DMLT_CACHE_DIR:-/var/cache/dmlt}"
export PATH="/usr/local/go/bin:$PATH"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
export GOCACHE="${GOCACHE:-$CACHE/go-build}" GOMODCACHE="${GOMODCACHE:-$CACHE/go-mod}"
# Two cores shared with other work: be nice and keep parallelism at the core count.
GO_BUILD=(nice -n 10 go build -p "$(nproc)" -trimpath)

log() { printf '[build-tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

stamp_ok() { [[ -f "$1/.done" ]]; }

build_k8s() {
  local v="$K8S_VERSION" dir="$CACHE/k8s/$K8S_VERSION"
  stamp_ok "$dir" && { log "k8s $v cached in $dir/bin"; return; }
  log "building Kubernetes $v (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl)"
  local staging="v0.${v#v1.}" minor
  minor="$(cut -d. -f2 <<<"$v")"
  mkdir -p "$dir/src" "$dir/bin"
  cd "$dir/src"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module dmlt.local/k8s-build"
    echo
    echo "go 1.24.0"
    echo
    echo "godebug default=go1.24"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    # k8s.io/kubernetes points its staging modules at ./staging/...; use the published ones.
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } > go.mod
  local vpkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version) ld="-s -w"
  for p in "${vpkgs[@]}"; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  "${GO_BUILD[@]}" -ldflags "$ld" -o "$dir/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
  touch "$dir/.done"
  log "Kubernetes $v built: $(ls "$dir/bin" | tr '\n' ' ')"
}

# go install a single main package at a pinned version into $CACHE/<name>/<version>/bin
# (NICE: the build's niceness, 10 unless set)
go_install_pinned() {
  local name="$1" version="$2" pkg="$3" ld="${4:-}"
  local dir="$CACHE/$name/$version"
  stamp_ok "$dir" && { log "$name $version cached in $dir/bin"; return; }
  log "building $name $version ($pkg)"
  mkdir -p "$dir/bin"
  GOBIN="$dir/bin" nice -n "${NICE:-10}" go install -p "$(nproc)" -trimpath -ldflags "-s -w $ld" "$pkg@$version"
  touch "$dir/.done"
}

# wrapper_module NAME VERSION MODULE GO: cd into $CACHE/NAME/VERSION/src, where a go.mod of a
# module of our own requires MODULE at VERSION (its bin/ beside it)
wrapper_module() {
  local name="$1" v="$2" module="$3" go="$4"
  mkdir -p "$CACHE/$name/$v/src" "$CACHE/$name/$v/bin"
  cd "$CACHE/$name/$v/src"
  printf 'module dmlt.local/%s-build\n\ngo %s\n\nrequire %s %s\n' "$name" "$go" "$module" "$v" > go.mod
}

# CoreDNS with only the plugins the in-cluster Corefile uses (upstream's main pulls in every
# cloud provider's SDK and builds several times longer).
build_coredns() {
  local v="$COREDNS_VERSION" dir="$CACHE/coredns/$COREDNS_VERSION"
  stamp_ok "$dir" && { log "coredns $v cached in $dir/bin"; return; }
  log "building CoreDNS $v (plugins: kubernetes forward cache errors health ready log loop reload loadbalance prometheus)"
  wrapper_module coredns "$v" github.com/coredns/coredns 1.24.0
  cat > main.go <<'GO'
// CoreDNS with the plugins a Kubernetes cluster DNS needs (built by dmlt's hack/cluster).
package main

import (
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
  "${GO_BUILD[@]}" -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$v" -o "$dir/bin/coredns" .
  touch "$dir/.done"
  log "CoreDNS $v built"
}
build_helm() {
  go_install_pinned helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}
# etcd's server. Its module replaces its sibling modules with ../ paths, so `go install pkg@v`
# refuses it; a wrapper module requires it and takes the siblings' published releases instead.
build_etcd() {
  local v="$ETCD_VERSION" dir="$CACHE/etcd/$ETCD_VERSION"
  stamp_ok "$dir" && { log "etcd $v cached in $dir/bin"; return; }
  log "building etcd $v"
  wrapper_module etcd "$v" go.etcd.io/etcd/server/v3 1.26.0
  "${GO_BUILD[@]}" -ldflags "-s -w" -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3
  touch "$dir/.done"
  log "etcd $v built"
}
build_kind() { go_install_pinned kind "$KIND_VERSION" sigs.k8s.io/kind; }
# kwok's node/pod simulator only (not kwokctl), for benchmarks/bench_scale.py, with the stages
# kwokctl configures by default, from the same module source, in stages.yaml beside bin/: nodes
# Ready with lease heartbeats, Pods Running at once, deleted Pods gone.
KWOK_STAGES=(node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease
  pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete)
build_kwok() {
  local dir="$CACHE/kwok/$KWOK_VERSION" src s
  go_install_pinned kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
  [[ -f "$dir/stages.yaml" ]] && return
  src="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  for s in "${KWOK_STAGES[@]}"; do
    echo "---"
    cat "$src/kustomize/stage/$s.yaml"
  done > "$dir/stages.yaml.tmp"
  mv "$dir/stages.yaml.tmp" "$dir/stages.yaml"
}
build_local_path() {
  go_install_pinned local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" \
    github.com/rancher/local-path-provisioner "-X main.VERSION=$LOCAL_PATH_PROVISIONER_VERSION"
}
# Kueue's manager (cmd/kueue; the binary is named kueue) with the version stamps its Makefile
# sets. Its module's go.mod asks for go 1.25.0 (the installed 1.26 builds it) and has no replace
# directives, so `go install pkg@version` works. At the lowest priority: it is a large build
# (every integration's API types) and is only needed when DMLT_KUEUE=1.
# Its Helm chart (charts/kueue, the manifests hack/cluster/kueue.sh renders) is copied from the
# same module source into chart/ beside bin/.
build_kueue() {
  local dir="$CACHE/kueue/$KUEUE_VERSION" src
  NICE=19 go_install_pinned kueue "$KUEUE_VERSION" "sigs.k8s.io/kueue/cmd/kueue" \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.BuildDate=1970-01-01T00:00:00Z"
  [[ -f "$dir/chart/Chart.yaml" ]] && return
  src="$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  rm -rf "$dir/chart.tmp"
  cp -r "$src/charts/kueue" "$dir/chart.tmp"
  chmod -R u+w "$dir/chart.tmp"
  mv "$dir/chart.tmp" "$dir/chart"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 || "${targets[0]}" == all ]] && targets=(k8s etcd coredns helm kind local-path kwok kueue)
for t in "${targets[@]}"; do
  case "$t" in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    coredns) build_coredns ;;
    helm) build_helm ;;
    kind) build_kind ;;
    local-path) build_local_path ;;
    kwok) build_kwok ;;
    kueue) build_kueue ;;
    *) echo "unknown target: $t" >&2; exit 2 ;;
  esac
done
