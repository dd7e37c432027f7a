#!/usr/bin/env bash
# The local-path-provisioner image for hack/cluster.sh: the binary build-tools.sh builds, alone
# on scratch (it runs no other program; its helper Pods run on the local Debian base), committed
# with buildah and loaded into the cluster's containerd. Cached like images.sh's images: an
# archive per content hash, and a dmlt.hash label on containerd's copy (loaded?).
#
# Usage: local-path.sh image     prints the image reference on stdout
# Env:   DMLT_CACHE_DIR, DMLT_CONTAINERD_SOCK (the cluster's containerd; required)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=binary-image.sh
source "$HERE/binary-image.sh"
SOCK="${DMLT_CONTAINERD_SOCK:?DMLT_CONTAINERD_SOCK: the containerd socket to load the image into}"
VERSION="$LOCAL_PATH_PROVISIONER_VERSION"
BIN="$CACHE/local-path-provisioner/$VERSION/bin/local-path-provisioner"
REF="localhost/dmlt-local-path-provisioner:$VERSION"

log() { printf '[local-path %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

build_image() {
  [[ -x "$BIN" ]] || "$HERE/build-tools.sh" local-path
  package_binary local-path-provisioner "$BIN" "$REF" /local-path-provisioner
  load_archive "$SOCK" "$REF"
  echo "$REF"
}

case "${1:-}" in
  image) build_image ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
