#!/usr/bin/env bash
# A real single-node Kubernetes for dmlt's e2e tests, built from upstream source.
#
#   hack/cluster.sh up          install packages, build (cached) and start the cluster, load images
#   hack/cluster.sh env         print the shell lines that put helm and the cluster's kubectl on
#                               PATH and set KUBECONFIG: eval "$(hack/cluster.sh env)"
#   hack/cluster.sh down        stop everything `up` started; remove its network rules, mounts, state
#   hack/cluster.sh status      processes, node, system pods and the StorageClass
#   hack/cluster.sh kubeconfig  print the admin kubeconfig path (export KUBECONFIG=$(... kubeconfig))
#   hack/cluster.sh images      build the project images (content-hash cached) and load them
#   hack/cluster.sh tools       build every pinned tool (Kubernetes, etcd, CoreDNS, helm, kind,
#                               local-path-provisioner, kwok, Kueue) into the cache
#   hack/cluster.sh logs [NAME] list component logs, or tail one
#   hack/cluster.sh kubectl ... the cluster's kubectl with the admin kubeconfig
#
# DMLT_KUEUE=1 hack/cluster.sh up also builds (cached) and installs Kueue (KUEUE_VERSION in
# hack/cluster/versions.env; namespace kueue-system, integration batch/Job) and waits for its
# webhook and visibility API; without it Kueue is not installed. Check it: hack/cluster/kueue.sh smoke.
#
# Needs root, Debian 12 (apt reachable), Go >= 1.24 in /usr/local/go, and the Go module proxy.
# Builds are cached by version under ${DMLT_CACHE_DIR:-/var/cache/dmlt}; cluster state lives in
# ${DMLT_STATE_DIR:-/var/lib/dmlt-cluster} and /run/dmlt-cluster and is removed by `down`.
# Everything is local: no container registry is used (images are built and imported).
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIB="$HACK/cluster"
# shellcheck source=cluster/versions.env
source "$LIB/versions.env"

CACHE="${DMLT_CACHE_DIR:-/var/cache/dmlt}"
STATE="${DMLT_STATE_DIR:-/var/lib/dmlt-cluster}"
RUND=/run/dmlt-cluster
LOGS="$STATE/logs"
PKI="$STATE/pki"
PIDS="$RUND/pids"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
CTRD_ROOT="$CACHE/containerd"          # image store: kept across down/up (a cache)
CTRD_STATE="$RUND/containerd"
SOCK="$CTRD_STATE/containerd.sock"
CNI_CONF_DIR="$STATE/cni/net.d"
CNI_BIN_DIR=/usr/lib/cni
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"
# helm and the cluster's kubectl, linked here for `env` (under $STATE: gone with the cluster)
TOOLS_DIR="$STATE/bin"
HELM="$CACHE/helm/$HELM_VERSION/bin/helm"
# dynamic volumes: the default StorageClass and the host directory its volumes live in
STORAGE_CLASS=standard
LOCAL_PATH_DIR="$STATE/local-path-provisioner"
# the Debian base image (hack/cluster/images.sh): the DNS check and the volume helper Pods
BASE_IMAGE=localhost/dmlt-base:bookworm

NODE_NAME="$(hostname | tr '[:upper:]' '[:lower:]')"
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
CLUSTER_DOMAIN=cluster.local
CNI_BRIDGE=cni0
PORTS=(2379 2380 2381 6443 10250 10248 10249 10256 10257 10259)
COMPONENTS_START=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah
  debootstrap openssl socat ethtool iproute2 util-linux kmod ca-certificates gcc libc6-dev
  procps curl)
REQUIRED_CGROUPS=(cpu cpuacct cpuset memory pids devices freezer)

WAIT_NODE_S="${DMLT_WAIT_NODE_S:-180}"
WAIT_BUILD_S="${DMLT_WAIT_BUILD_S:-3000}"
# Kueue (job queueing) on the cluster: only when DMLT_KUEUE=1
KUEUE="${DMLT_KUEUE:-0}"
KUEUE_NAMESPACE=kueue-system

export PATH="/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# ---------------------------------------------------------------------------------------------
log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  printf '[cluster] ERROR: %s\n' "$*" >&2
  [[ -d "$LOGS" ]] && printf '[cluster] component logs: %s (hack/cluster.sh logs NAME)\n' "$LOGS" >&2
  exit 1
}

kctl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=20s "$@"; }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every second; die naming the logs on timeout.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 1
  done
}

pid_alive() {  # pid_alive NAME: true if the recorded process for NAME is running
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  # guard against a reused pid: the command line must still mention the component
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1"
}

# start_proc NAME CMD...: run CMD detached (own session), output to $LOGS/NAME.log
start_proc() {
  local name="$1"; shift
  if pid_alive "$name"; then log "$name already running"; return; fi
  mkdir -p "$PIDS" "$LOGS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name.pid"
  sleep 0.2
  pid_alive "$name" || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited at start, see $LOGS/$name.log"; }
}

stop_proc() {  # stop_proc NAME [GRACE_S]
  local name="$1" grace="${2:-10}" pid
  pid_alive "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
  pid="$(cat "$PIDS/$name.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while [[ -d "/proc/$pid" ]] && ((SECONDS < deadline)); do sleep 0.2; done
  if [[ -d "/proc/$pid" ]]; then
    log "$name did not stop in ${grace}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PIDS/$name.pid"
}

# ---------------------------------------------------------------------------------------------
# prerequisites

check_root() { [[ $EUID -eq 0 ]] || die "must run as root (try: sudo $0 ${CMD:-up})"; }

take_lock() {  # one up/down/images at a time (fd 9 stays open, and locked, until exit)
  [[ -n "${LOCKED:-}" ]] && return
  exec 9>"/run/dmlt-cluster.lock"
  flock -w 5 9 || die "another 'hack/cluster.sh up/down/images' is running (lock /run/dmlt-cluster.lock)"
  LOCKED=1
}

check_go() {
  command -v go >/dev/null || die "Go not found in /usr/local/go/bin: install Go >= 1.24 (https://go.dev/dl) to build Kubernetes from source"
}

check_cgroups() {
  if [[ -f /sys/fs/cgroup/cgroup.controllers && ! -d /sys/fs/cgroup/memory ]]; then
    # cgroup v2 only
    local c
    for c in cpu cpuset memory pids; do
      grep -qw "$c" /sys/fs/cgroup/cgroup.controllers \
        || die "cgroup v2 controller '$c' is not available: enable it (echo +$c > /sys/fs/cgroup/cgroup.subtree_control)"
    done
    return
  fi
  local c missing=()
  for c in "${REQUIRED_CGROUPS[@]}"; do
    awk -v c="$c" '$9 == "cgroup" && (","$NF",") ~ (","c",") {found=1} END {exit !found}' /proc/self/mountinfo \
      || missing+=("$c")
  done
  if ((${#missing[@]})); then
    local remedy=""
    for c in "${missing[@]}"; do remedy+="mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; "; done
    die "cgroup v1 controller(s) not mounted: ${missing[*]}. Remedy: $remedy"
  fi
}

check_ports() {
  local p line
  for p in "${PORTS[@]}"; do
    line="$(ss -Htlnp "sport = :$p" 2>/dev/null | head -n1)"
    if [[ -n "$line" ]]; then
      die "port $p is already in use ($(grep -o 'users:(.*)' <<<"$line" || echo "$line")). Stop that process, or run 'hack/cluster.sh down' if it is a previous cluster"
    fi
  done
}

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return
  log "installing Debian packages: ${missing[*]} (log: $CACHE/logs/apt.log)"
  mkdir -p "$CACHE/logs"
  # No init system here: keep package scripts from starting containerd as a service.
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}"
  } >>"$CACHE/logs/apt.log" 2>&1 || rc=$?
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get failed (rc=$rc), see $CACHE/logs/apt.log"
  # Debian's containerd package may have started its own daemon (policy-rc.d above
  # usually prevents it); it would hold our ports.
}

# ---------------------------------------------------------------------------------------------
# host network setup

set_sysctl() {  # remember the old value once, so `down` can restore it
  local key="$1" val="$2" path="/proc/sys/${1//.//}"
  [[ -e "$path" ]] || die "sysctl $key missing (kernel module? try: modprobe br_netfilter)"
  mkdir -p "$STATE"
  grep -q "^$key=" "$STATE/sysctl.orig" 2>/dev/null || echo "$key=$(cat "$path")" >>"$STATE/sysctl.orig"
  echo "$val" >"$path"
}

setup_host_network() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  set_sysctl net.ipv4.ip_forward 1
  set_sysctl net.bridge.bridge-nf-call-iptables 1
  set_sysctl net.bridge.bridge-nf-call-ip6tables 1
  guard_service_cidr
}

# guard_service_cidr: a packet still addressed to a Service ClusterIP after kube-proxy's DNAT
# (nat OUTPUT/PREROUTING run before filter) has no Service rule yet: reject it here instead of
# letting it leave through the default route. On this machine the default gateway answers any
# address: TLS on any IP:443 is accepted by an egress proxy ("Server: keryx", 404 for every path).
# A host process that dials a ClusterIP in the second between a Service's creation and kube-proxy's
# sync otherwise gets that proxy, and keeps the connection: the apiserver's aggregator pooled one
# such HTTP/2 connection to kueue-visibility-server and got 404 on every proxied request (issue 16;
# docs/local-cluster.md "Kueue"). Rejected, the client fails fast and dials again, through the DNAT
# once the rules are there. The comment has "dmlt", so `down` (iptables_cleanup) removes the rules.
guard_service_cidr() {
  local chain rule=(-d "$SERVICE_CIDR" -m comment --comment "dmlt: no un-NATed ClusterIP traffic off the node" -j REJECT)
  for chain in OUTPUT FORWARD; do
    iptables -t filter -C "$chain" "${rule[@]}" 2>/dev/null || iptables -t filter -I "$chain" 1 "${rule[@]}"
  done
}

# ---------------------------------------------------------------------------------------------
# PKI (openssl; ECDSA P-256 keys, one CA)

node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

gen_cert() {  # [CA=name] gen_cert NAME CN O USAGE(server|client|both) [SAN]
  local name="$1" cn="$2" o="$3" usage="$4" san="${5:-}" eku ca="${CA:-ca}"
  case "$usage" in
    server) eku=serverAuth ;;
    client) eku=clientAuth ;;
    both) eku=serverAuth,clientAuth ;;
  esac
  local subj="/CN=$cn"
  [[ -n "$o" ]] && subj="/O=$o$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

write_kubeconfig() {  # write_kubeconfig FILE CERTNAME SERVER
  local file="$1" cert="$2" server="$3"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dmlt
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: dmlt
  context:
    cluster: dmlt
    user: $cert
current-context: dmlt
EOF
  chmod 600 "$file"
}

make_pki() {
  [[ -f "$PKI/.done" ]] && return
  local ip="$1"
  log "generating certificates in $PKI"
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  local ca
  for ca in ca front-proxy-ca; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/$ca.key" -subj "/CN=dmlt-cluster-$ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/$ca.crt" 2>/dev/null
  done
  # the apiserver's client identity towards aggregated API servers
  CA=front-proxy-ca gen_cert front-proxy-client front-proxy-client "" client
  gen_cert etcd-server etcd-server "" both "DNS:localhost,IP:127.0.0.1"
  gen_cert apiserver-etcd-client kube-apiserver-etcd-client "" client
  gen_cert apiserver kube-apiserver "" server \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,DNS:$NODE_NAME,IP:$API_SERVICE_IP,IP:127.0.0.1,IP:$ip"
  gen_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
  gen_cert admin kubernetes-admin system:masters client
  gen_cert controller-manager system:kube-controller-manager "" client
  gen_cert scheduler system:kube-scheduler "" client
  gen_cert kube-proxy system:kube-proxy "" client
  gen_cert kubelet-client "system:node:$NODE_NAME" system:nodes client
  gen_cert kubelet-server "system:node:$NODE_NAME" system:nodes server "DNS:$NODE_NAME,DNS:localhost,IP:$ip,IP:127.0.0.1"
  # service-account token signing key pair
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local server="https://127.0.0.1:6443"
  write_kubeconfig "$STATE/admin.kubeconfig" admin "$server"
  write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager "$server"
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler "$server"
  write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy "$server"
  write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet-client "$server"
  touch "$PKI/.done"
}

# ---------------------------------------------------------------------------------------------
# components

write_configs() {
  local ip="$1" RESTRICT_OOM=false
  # CAP_SYS_RESOURCE is bit 24 of the capability mask
  (( (0x$(awk '/^CapEff/ {print $2}' /proc/self/status) >> 24) & 1 )) || RESTRICT_OOM=true
  mkdir -p "$CNI_CONF_DIR" "$STATE/kubelet" "$CTRD_ROOT" "$CTRD_STATE"
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$CTRD_STATE/containerd.sock.ttrpc"
[debug]
  address = "$CTRD_STATE/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:$PAUSE_TAG"
  # Pod network namespaces under our state dir, so "down" finds and removes them all.
  netns_mounts_under_state_dir = true
  # This machine's root lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own
  # (the sandbox asks for -998, which fails with "can't get final child's PID from pipe").
  restrict_oom_score_adj = $RESTRICT_OOM
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUND/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
EOF
  cat >"$CNI_CONF_DIR/10-dmlt.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dmlt",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUND/cni-ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: "unix://$SOCK"
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: ["$DNS_SERVICE_IP"]
tlsCertFile: "$PKI/kubelet-server.crt"
tlsPrivateKeyFile: "$PKI/kubelet-server.key"
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podCIDR: $NODE_POD_CIDR
resolvConf: /etc/resolv.conf
serializeImagePulls: false
rotateCertificates: false
# The image store also holds the cached project images: don't let image GC remove them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
maxPods: 60
EOF
  cat >"$STATE/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$STATE/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $CLUSTER_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Leave the host's conntrack and route_localnet sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
}

start_containerd() {
  start_proc containerd containerd --config "$STATE/containerd.toml"
  wait_for 30 "containerd ($LOGS/containerd.log)" ctr --address "$SOCK" version
}

start_etcd() {
  start_proc etcd "$CACHE/etcd/$ETCD_VERSION/bin/etcd" --name dmlt --data-dir "$STATE/etcd" \
    --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster dmlt=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
    --trusted-ca-file "$PKI/ca.crt" --client-cert-auth
  wait_for 30 "etcd ($LOGS/etcd.log)" curl -fsS --max-time 2 http://127.0.0.1:2381/health
}

start_control_plane() {
  local ip="$1"
  start_proc kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address="$ip" --bind-address=0.0.0.0 --secure-port=6443 \
    --etcd-servers=https://127.0.0.1:2379 --etcd-cafile="$PKI/ca.crt" \
    --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --anonymous-auth=false \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false --event-ttl=1h
  wait_for 90 "kube-apiserver to become ready ($LOGS/kube-apiserver.log)" kctl get --raw /readyz
  start_proc kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
    --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" --controllers='*,bootstrapsigner,tokencleaner' --profiling=false
  start_proc kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

start_node() {
  local ip="$1"
  start_proc kubelet "$BIN/kubelet" --config="$STATE/kubelet-config.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$ip"
  start_proc kube-proxy "$BIN/kube-proxy" --config="$STATE/kube-proxy-config.yaml"
}

node_ready() {
  [[ "$(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

deploy_coredns() {
  log "deploying CoreDNS (kube-dns at $DNS_SERVICE_IP)"
  sed -e "s#@IMAGE@#localhost/dmlt-coredns:$COREDNS_VERSION#" -e "s#@DNS_IP@#$DNS_SERVICE_IP#" \
    -e "s#@DOMAIN@#$CLUSTER_DOMAIN#" "$LIB/coredns.yaml" | kctl apply -f - >/dev/null
  if ! kctl -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null; then
    kctl -n kube-system get pods -o wide >&2 || true
    die "CoreDNS did not become ready within 120s (kubectl -n kube-system describe pod -l k8s-app=kube-dns)"
  fi
}

check_dns_from_pod() {
  log "checking DNS from a Pod"
  local name=dmlt-dns-check
  kctl delete pod "$name" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  wait_for 60 "the default ServiceAccount" kctl -n default get serviceaccount default
  cat <<EOF | kctl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: default}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: check
    image: $BASE_IMAGE
    imagePullPolicy: IfNotPresent
    command: ["python3", "-c"]
    args:
    - |
      import socket, sys, time
      for _ in range(60):
          try:
              print(socket.gethostbyname("kubernetes.default.svc.$CLUSTER_DOMAIN"), socket.gethostbyname("kube-dns.kube-system"))
              sys.exit(0)
          except OSError as e:
              print("retry:", e, flush=True)
              time.sleep(1)
      sys.exit(1)
    securityContext: {runAsUser: 65534, allowPrivilegeEscalation: false}
EOF
  local deadline=$((SECONDS + 90)) phase=""
  while ((SECONDS < deadline)); do
    phase="$(kctl get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 1
  done
  if [[ "$phase" != Succeeded ]]; then
    kctl logs "$name" >&2 || true
    kctl describe pod "$name" >&2 || true
    die "DNS check Pod did not succeed (phase: ${phase:-unknown})"
  fi
  log "DNS answers from a Pod: $(kctl logs "$name" | tail -n1)"
  kctl delete pod "$name" --wait=false >/dev/null
}

deploy_local_path() {
  local image
  image="$(DMLT_CONTAINERD_SOCK="$SOCK" DMLT_CACHE_DIR="$CACHE" "$LIB/local-path.sh" image)"
  log "deploying local-path-provisioner $LOCAL_PATH_PROVISIONER_VERSION (default StorageClass $STORAGE_CLASS, volumes under $LOCAL_PATH_DIR)"
  mkdir -p "$LOCAL_PATH_DIR"
  sed -e "s#@IMAGE@#$image#" -e "s#@HELPER_IMAGE@#$BASE_IMAGE#" -e "s#@DATA_DIR@#$LOCAL_PATH_DIR#" \
    "$LIB/local-path-storage.yaml" | kctl apply -f - >/dev/null
  if ! kctl -n local-path-storage rollout status deployment/local-path-provisioner --timeout=120s >/dev/null; then
    kctl -n local-path-storage get pods -o wide >&2 || true
    die "local-path-provisioner did not become ready within 120s (kubectl -n local-path-storage logs deploy/local-path-provisioner)"
  fi
}

# Kueue's webhook answers: a server-side dry run goes through its admission webhooks (they have
# no side effects), so this fails until the manager serves them with a certificate the apiserver
# trusts. The Job, named for a queue, must come back suspended: the batch/Job integration is on.
kueue_webhook_answers() {
  kctl create --dry-run=server -o name -f - <<EOF >/dev/null || return 1
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: dmlt-webhook-probe}
EOF
  [[ "$(kctl create --dry-run=server -o jsonpath='{.spec.suspend}' -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: dmlt-webhook-probe, namespace: default, labels: {kueue.x-k8s.io/queue-name: probe}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: probe, image: $BASE_IMAGE}]
EOF
  )" == true ]]
}

# Available, and answering through the aggregator's proxy: Available comes from the availability
# controller's own connections, the proxied requests (kubectl, the namespace controller) use the
# proxy's; both must reach Kueue.
kueue_visibility_available() {
  local v
  for v in v1beta1 v1beta2; do
    [[ "$(kctl get apiservice "$v.visibility.kueue.x-k8s.io" \
      -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]] || return 1
    kctl get --raw "/apis/visibility.kueue.x-k8s.io/$v" >/dev/null 2>&1 || return 1
  done
}

# Kueue from its own chart (hack/cluster/kueue.sh renders it with hack/cluster/kueue-values.yaml);
# its cert-controller makes the webhook certificate (no cert-manager). The apiserver, a host
# process, reaches the webhook Service's ClusterIP through kube-proxy's rules on the host.
deploy_kueue() {
  [[ "$KUEUE" == 1 ]] || return 0
  wait_kueue_build
  DMLT_CONTAINERD_SOCK="$SOCK" DMLT_CACHE_DIR="$CACHE" "$LIB/kueue.sh" image >/dev/null
  log "deploying Kueue $KUEUE_VERSION (namespace $KUEUE_NAMESPACE, integration batch/Job)"
  # server-side: the CRDs are too large for client-side apply's last-applied annotation
  DMLT_CACHE_DIR="$CACHE" "$LIB/kueue.sh" manifests \
    | kctl apply --server-side --force-conflicts --field-manager=dmlt-cluster -f - >/dev/null
  if ! kctl -n "$KUEUE_NAMESPACE" rollout status deployment/kueue-controller-manager --timeout=180s >/dev/null; then
    kctl -n "$KUEUE_NAMESPACE" get pods -o wide >&2 || true
    die "Kueue did not become ready within 180s (kubectl -n $KUEUE_NAMESPACE logs deploy/kueue-controller-manager)"
  fi
  wait_for 120 "Kueue's webhook to answer (kubectl -n $KUEUE_NAMESPACE logs deploy/kueue-controller-manager)" \
    kueue_webhook_answers
  # Its visibility API (pending workloads and their positions) is an aggregated API: while it is
  # unavailable, no namespace can finish deleting (the namespace controller needs every group's
  # discovery), so wait for it too.
  wait_for 120 "Kueue's visibility API (kubectl get apiservice v1beta2.visibility.kueue.x-k8s.io -o yaml)" \
    kueue_visibility_available
  log "Kueue $KUEUE_VERSION is ready"
}

# ---------------------------------------------------------------------------------------------
# the user's shell: helm, kubectl and a kubeconfig

# install_user_tools: link helm and kubectl into $TOOLS_DIR; with sudo, give the calling user a
# kubeconfig of their own (the admin one is root's, mode 600)
install_user_tools() {
  [[ -x "$HELM" ]] || die "helm $HELM_VERSION missing at $HELM (build it: hack/cluster/build-tools.sh helm)"
  mkdir -p "$TOOLS_DIR"
  ln -sfn "$BIN/kubectl" "$TOOLS_DIR/kubectl"
  ln -sfn "$HELM" "$TOOLS_DIR/helm"
  if [[ -n "${SUDO_UID:-}" && "$SUDO_UID" != 0 ]]; then
    install -m 600 -o "$SUDO_UID" -g "${SUDO_GID:-$SUDO_UID}" "$KUBECONFIG_ADMIN" "$(user_kubeconfig "$SUDO_UID")"
  fi
}

user_kubeconfig() { echo "$STATE/kubeconfig-$1"; }  # user_kubeconfig UID

# the kubeconfig the caller can read: root's admin one, or the copy `sudo ... up` made for them
caller_kubeconfig() {
  if [[ -r "$KUBECONFIG_ADMIN" ]]; then echo "$KUBECONFIG_ADMIN"
  elif [[ -r "$(user_kubeconfig "$EUID")" ]]; then user_kubeconfig "$EUID"
  else return 1; fi
}

cmd_env() {
  local kubeconfig
  if ! kubeconfig="$(caller_kubeconfig)" || [[ ! -x "$TOOLS_DIR/kubectl" ]] \
      || ! "$TOOLS_DIR/kubectl" --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
    echo "hack/cluster.sh env: the local cluster is not up (start it with: sudo hack/cluster.sh up)" >&2
    return 1
  fi
  printf 'export PATH="%s:$PATH"\n' "$TOOLS_DIR"
  printf 'export KUBECONFIG="%s"\n' "$kubeconfig"
}

# ---------------------------------------------------------------------------------------------
# builds

# what `up` needs: the cluster, its DNS, its volume provisioner, helm for the user, and kwok for
# the e2e scale test's simulated nodes (tests/e2e/test_scale_kwok.py)
UP_TOOLS=(k8s etcd coredns local-path helm kwok)
tools_built() {
  [[ -f "$CACHE/k8s/$K8S_VERSION/.done" && -f "$CACHE/etcd/$ETCD_VERSION/.done" \
    && -f "$CACHE/coredns/$COREDNS_VERSION/.done" \
    && -f "$CACHE/local-path-provisioner/$LOCAL_PATH_PROVISIONER_VERSION/.done" \
    && -f "$CACHE/helm/$HELM_VERSION/.done" && -f "$CACHE/kwok/$KWOK_VERSION/stages.yaml" ]]
}

start_tool_build() {  # background: Kubernetes (the long pole), CoreDNS, the provisioner, helm
  mkdir -p "$CACHE/logs"
  tools_built && return
  log "building upstream binaries in the background (log: $CACHE/logs/build-tools.log)"
  # (9>&-: background jobs must not inherit, and so hold, the up/down lock)
  "$LIB/build-tools.sh" "${UP_TOOLS[@]}" >"$CACHE/logs/build-tools.log" 2>&1 9>&- &
  BUILD_PID=$!
}

# wait_build PID WHAT LOG: wait (up to WAIT_BUILD_S) for a background build; die naming its log.
wait_build() {
  local pid="$1" what="$2" build_log="$3" deadline=$((SECONDS + WAIT_BUILD_S))
  log "waiting for the build of $what (tail -f $build_log)"
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || { kill "$pid" 2>/dev/null; die "build of $what took over ${WAIT_BUILD_S}s, see $build_log"; }
    sleep 2
  done
  wait "$pid" || { tail -n 30 "$build_log" >&2; die "build of $what failed, see $build_log"; }
}

wait_tool_build() {
  [[ -n "${BUILD_PID:-}" ]] || return 0
  wait_build "$BUILD_PID" "${UP_TOOLS[*]}" "$CACHE/logs/build-tools.log"
  BUILD_PID=
  tools_built || die "build finished but binaries are missing, see $CACHE/logs/build-tools.log"
}

# Kueue's manager, when DMLT_KUEUE=1: its own background build (at the lowest priority, beside
# the Kubernetes build), waited for only when Kueue is deployed, after the cluster is up.
start_kueue_build() {
  [[ "$KUEUE" == 1 && ! -f "$CACHE/kueue/$KUEUE_VERSION/chart/Chart.yaml" ]] || return 0
  log "building Kueue $KUEUE_VERSION in the background (log: $CACHE/logs/build-kueue.log)"
  # (flock: one build at a time with `tools` and the detached kind build, which take it too)
  flock "$CACHE/.tools.lock" "$LIB/build-tools.sh" kueue >"$CACHE/logs/build-kueue.log" 2>&1 9>&- &
  KUEUE_BUILD_PID=$!
}

wait_kueue_build() {
  [[ -n "${KUEUE_BUILD_PID:-}" ]] || return 0
  wait_build "$KUEUE_BUILD_PID" "Kueue $KUEUE_VERSION" "$CACHE/logs/build-kueue.log"
  KUEUE_BUILD_PID=
}

load_images() {  # load_images WHAT...
  DMLT_CONTAINERD_SOCK="$SOCK" DMLT_CACHE_DIR="$CACHE" "$LIB/images.sh" "$@"
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
  local t0=$SECONDS
  check_root
  take_lock
  check_go
  mkdir -p "$CACHE/logs"
  if pid_alive kube-apiserver && [[ -f "$KUBECONFIG_ADMIN" ]] && kctl get --raw /readyz >/dev/null 2>&1; then
    log "cluster already running; checking node and images"
  else
    # a half-started previous cluster: clean it up first
    if compgen -G "$PIDS/*.pid" >/dev/null || [[ -d "$STATE" ]]; then
      log "removing leftovers of a previous cluster"
      cmd_down
    fi
    check_cgroups
    check_ports
  fi
  start_tool_build
  start_kueue_build
  ensure_packages
  # the image build runs beside the Go build (it is mostly download and unpack)
  local ip
  ip="$(node_ip)"
  [[ -n "$ip" ]] || die "no IPv4 default route: the node needs an address (ip -4 route)"
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  setup_host_network
  make_pki "$ip"
  write_configs "$ip"
  start_containerd
  load_images base pause
  log "building project images in the background (log: $CACHE/logs/images.log)"
  load_images project >"$CACHE/logs/images.log" 2>&1 9>&- &
  local images_pid=$!
  wait_tool_build
  start_etcd
  start_control_plane "$ip"
  start_node "$ip"
  wait_for "$WAIT_NODE_S" "node $NODE_NAME to be Ready (kubelet log: $LOGS/kubelet.log)" node_ready
  log "node $NODE_NAME is Ready"
  load_images coredns
  deploy_coredns
  check_dns_from_pod
  deploy_local_path
  deploy_kueue
  install_user_tools
  log "waiting for the project images"
  if ! wait "$images_pid"; then
    tail -n 20 "$CACHE/logs/images.log" >&2
    die "project image build failed, see $CACHE/logs/images.log (the cluster itself is up)"
  fi
  # kind serves the kind path only: build it detached, after the cluster is up (once; cached),
  # so it does not lengthen `up`. flock keeps two builds from racing.
  if [[ ! -f "$CACHE/kind/$KIND_VERSION/.done" ]]; then
    log "building kind $KIND_VERSION in the background (log: $CACHE/logs/build-kind.log)"
    setsid flock -n "$CACHE/.tools.lock" "$LIB/build-tools.sh" kind \
      >>"$CACHE/logs/build-kind.log" 2>&1 </dev/null 9>&- &
  fi
  log "cluster up in $((SECONDS - t0)) s; helm $HELM_VERSION and kubectl $K8S_VERSION for this shell:"
  printf 'eval "$(%s env)"\n' "$0"
}

iptables_cleanup() {  # remove every KUBE-*/CNI-* chain and the rules that jump to them
  local ipt table chain rule
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in nat filter mangle raw; do
      "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
      # rules (in any chain) that jump to our chains, or that kube-proxy/CNI tagged
      while IFS= read -r rule; do
        eval "\"$ipt\" -t \"$table\" ${rule/-A /-D }" 2>/dev/null || true
      done < <("$ipt" -t "$table" -S | grep -E '^-A ' | grep -vE '^-A (KUBE-|CNI-)' \
        | grep -E -- '-j (KUBE-|CNI-)|-g (KUBE-|CNI-)|kubernetes|dmlt' || true)
      for chain in $("$ipt" -t "$table" -S | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

unmount_under() {  # unmount everything mounted below the given directories, deepest first
  local d m
  for d in "$@"; do
    [[ -d "$d" ]] || continue
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$d" '{m = $5; gsub(/\\040/, " ", m); if (index(m, d "/") == 1 || m == d) print m}' /proc/self/mountinfo | sort -r)
  done
}

cmd_down() {
  local t0=$SECONDS
  check_root
  take_lock
  log "stopping the cluster"
  stop_proc kube-proxy 5
  stop_proc kube-scheduler 5
  stop_proc kube-controller-manager 5
  stop_proc kubelet 10
  if pid_alive containerd; then
    # kill every container directly (faster than draining Pods through the API)
    local ctr=(timeout 20 ctr --address "$SOCK" -n k8s.io) id
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 0.5
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks rm -f "$id" >/dev/null 2>&1 || true; done
    for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers rm "$id" >/dev/null 2>&1 || true; done
  fi
  stop_proc containerd 10
  # shims of our containerd (matched by our socket path, not by name)
  local pid
  for pid in $(pgrep -f -- "containerd-shim.* -address $SOCK" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
  stop_proc kube-apiserver 10
  stop_proc etcd 10
  if [[ -x "$BIN/kube-proxy" ]]; then
    timeout 20 "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  iptables_cleanup
  # our mounts: pod network namespaces (under containerd's state dir), volumes, shm, overlays
  unmount_under "$STATE" "$RUND" "$CTRD_ROOT"
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  # restore the sysctls `up` changed
  if [[ -f "$STATE/sysctl.orig" ]]; then
    local kv
    while IFS= read -r kv; do
      echo "${kv#*=}" >"/proc/sys/$(tr . / <<<"${kv%%=*}")" 2>/dev/null || true
    done <"$STATE/sysctl.orig"
  fi
  # keep the last cluster's logs for post-mortems, then drop all state
  if [[ -d "$LOGS" ]]; then
    rm -rf "$CACHE/logs/last-cluster"; mkdir -p "$CACHE/logs"
    cp -a "$LOGS" "$CACHE/logs/last-cluster" 2>/dev/null || true
  fi
  rm -rf "$STATE" "$RUND"
  # CRI's per-sandbox files in the (cached) containerd root
  rm -rf "$CTRD_ROOT/io.containerd.grpc.v1.cri/sandboxes" "$CTRD_ROOT/io.containerd.grpc.v1.cri/containers"
  log "cluster down in $((SECONDS - t0)) s (last logs: $CACHE/logs/last-cluster)"
}

cmd_status() {
  local c rc=0
  for c in "${COMPONENTS_START[@]}"; do
    if pid_alive "$c"; then printf '%-24s running (pid %s)\n' "$c" "$(cat "$PIDS/$c.pid")"
    else printf '%-24s stopped\n' "$c"; rc=1; fi
  done
  if [[ -f "$KUBECONFIG_ADMIN" ]] && kctl get --raw /readyz >/dev/null 2>&1; then
    kctl get nodes -o wide
    kctl describe nodes | sed -n '/^Taints:/p;/^Conditions:/,/^Addresses:/p' | grep -v '^Addresses:'
    kctl get pods -A -o wide
    kctl get storageclass
    if kctl get namespace "$KUEUE_NAMESPACE" >/dev/null 2>&1; then
      kctl -n "$KUEUE_NAMESPACE" get deployments -o wide
      kctl get clusterqueues,localqueues -A 2>/dev/null || true
    fi
  fi
  echo "KUBECONFIG=$KUBECONFIG_ADMIN"
  return $rc
}

cmd_logs() {
  if [[ $# -eq 0 ]]; then
    ls -la "$LOGS" 2>/dev/null || echo "no cluster logs in $LOGS (last cluster: $CACHE/logs/last-cluster)"
  else
    tail -n "${LINES_:-100}" "$LOGS/$1.log"
  fi
}

cmd_images() {
  check_root
  take_lock
  if pid_alive containerd; then
    load_images project
  else
    log "cluster not running: building only (images load on the next 'up')"
    DMLT_CACHE_DIR="$CACHE" "$LIB/images.sh" project
  fi
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  CMD="$cmd"
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
    env) cmd_env ;;
    images) cmd_images "$@" ;;
    tools) check_go; mkdir -p "$CACHE"; flock "$CACHE/.tools.lock" "$LIB/build-tools.sh" all ;;
    logs) cmd_logs "$@" ;;
    kubectl) kctl "$@" ;;
    *)
      sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
      [[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help || "$cmd" == help ]] || exit 2
      ;;
  esac
}

# sourcing the file (for debugging single steps) defines the functions only
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
