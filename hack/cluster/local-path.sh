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
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DMLT_CACHE_DIR:-/var/cache/dmlt}"
SOCK="${DMLT_CONTAINERD_SOCK:?DMLT_CONTAINERD_SOCK: the containerd socket to load the image into}"
VERSION="$LOCAL_PATH_PROVISIONER_VERSION"
BIN="$CACHE/local-path-provisioner/$VERSION/bin/local-path-provisioner"
REF="localhost/dmlt-local-path-provisioner:$VERSION"
BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot /run/dmlt-buildah --storage-driver overlay)
CTR=(ctr --address "$SOCK" -n k8s.io)

log() { printf '[local-path %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

build_image() {
  [[ -x "$BIN" ]] || "$HERE/build-tools.sh" local-path
  local key archive c
  key="$( (sha256sum "$BIN"; echo v1) | sha256sum | cut -c1-16)"
  archive="$CACHE/images/local-path-provisioner-$key.tar"
  if [[ ! -f "$archive" ]]; then
    log "packaging $BIN -> $REF"
    mkdir -p "$CACHE/images"
    c="$("${BUILDAH[@]}" from --quiet scratch)"
    "${BUILDAH[@]}" copy --quiet --chmod 0755 "$c" "$BIN" /local-path-provisioner >/dev/null
    "${BUILDAH[@]}" config --entrypoint '["/local-path-provisioner"]' --user 65532:65532 \
      --label "dmlt.hash=$key" "$c"
    "${BUILDAH[@]}" commit --quiet --rm "$c" "$REF" >/dev/null
    rm -f "$archive.tmp"
    "${BUILDAH[@]}" push --quiet "$REF" "docker-archive:$archive.tmp:$REF"
    mv "$archive.tmp" "$archive"
  fi
  if ! "${CTR[@]}" images ls "name==$REF" 2>/dev/null | grep -q "dmlt.hash=$key"; then
    log "importing $archive into containerd as $REF"
    "${CTR[@]}" images import "$archive" >/dev/null
    "${CTR[@]}" images label "$REF" "dmlt.hash=$key" >/dev/null
  fi
  echo "$REF"
}

case "${1:-}" in
  image) build_image ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
