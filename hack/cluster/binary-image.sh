# Sourced by local-path.sh and kueue.sh (after they set HERE): a static binary that
# build-tools.sh built, alone on scratch as an image (user 65532), cached as an archive per
# content hash, and loaded into the cluster's containerd with a dmlt.hash label (loaded?).
# The sourcing script defines log().
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DMLT_CACHE_DIR:-/var/cache/dmlt}"
BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot /run/dmlt-buildah --storage-driver overlay)

# package_binary NAME BIN REF PATH: the archive of BIN at PATH (its entrypoint) as REF; sets
# ARCHIVE and KEY (the binary's content hash).
package_binary() {
  local name="$1" bin="$2" ref="$3" path="$4" c
  KEY="$( (sha256sum "$bin"; echo v1) | sha256sum | cut -c1-16)"
  ARCHIVE="$CACHE/images/$name-$KEY.tar"
  [[ -f "$ARCHIVE" ]] && return
  log "packaging $bin -> $ref"
  mkdir -p "$CACHE/images"
  c="$("${BUILDAH[@]}" from --quiet scratch)"
  "${BUILDAH[@]}" copy --quiet --chmod 0755 "$c" "$bin" "$path" >/dev/null
  "${BUILDAH[@]}" config --entrypoint "[\"$path\"]" --user 65532:65532 --label "dmlt.hash=$KEY" "$c"
  "${BUILDAH[@]}" commit --quiet --rm "$c" "$ref" >/dev/null
  rm -f "$ARCHIVE.tmp"
  "${BUILDAH[@]}" push --quiet "$ref" "docker-archive:$ARCHIVE.tmp:$ref"
  mv "$ARCHIVE.tmp" "$ARCHIVE"
}

# load_archive SOCK REF: import ARCHIVE into containerd as REF unless it is there with KEY.
load_archive() {
  local ctr=(ctr --address "$1" -n k8s.io) ref="$2"
  if ! "${ctr[@]}" images ls "name==$ref" 2>/dev/null | grep -q "dmlt.hash=$KEY"; then
    log "importing $ARCHIVE into containerd as $ref"
    "${ctr[@]}" images import "$ARCHIVE" >/dev/null
    "${ctr[@]}" images label "$ref" "dmlt.hash=$KEY" >/dev/null
  fi
}
