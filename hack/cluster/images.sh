#!/usr/bin/env bash
# Build the local images with buildah (no registry is reachable) and load them into the
# cluster's containerd (namespace k8s.io).  Every image is cached by a content hash of its
# inputs: an archive $CACHE/images/<name>-<hash>.tar that exists is not rebuilt, and an image
# whose containerd label dmlt.hash matches is not re-imported.
#
# Usage: images.sh [base|pause|coredns|postgres|dashboard|project|all]...   (default: all)
#        (project: the chart's images: operator, trainer and dashboard from the root Dockerfile,
#        and postgres)
# Env:   DMLT_CACHE_DIR, DMLT_CONTAINERD_SOCK (where to load; unset: build only),
#        DMLT_IMAGE_TAG (default dev), DMLT_IMAGE_TARGETS (default "operator trainer").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DMLT_CACHE_DIR:-/var/cache/dmlt}"
SOCK="${DMLT_CONTAINERD_SOCK:-}"
TAG="${DMLT_IMAGE_TAG:-dev}"
CA_BUNDLE="${DMLT_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
DEBIAN_MIRROR="${DMLT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE_REF="localhost/dmlt-base:bookworm"
# buildah keeps its storage, and the host-downloaded wheels, under the cache dir.
BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot /run/dmlt-buildah --storage-driver overlay)
export TMPDIR="$CACHE/buildah/tmp"
mkdir -p "$CACHE/images" "$CACHE/build" "$TMPDIR"

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

hash_files() {  # hash_files DIR PATH... -> sha256 of (relative name + content) of every file
  local dir="$1" p present=(); shift
  for p in "$@"; do [[ -e "$dir/$p" ]] && present+=("$p"); done
  (cd "$dir" && find "${present[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' -print0 \
    | LC_ALL=C sort -z | xargs -0r sha256sum) | sha256sum | cut -c1-16
}

# load_archive NAME REF HASH ARCHIVE: import into containerd unless already there with HASH
load_archive() {
  local name="$1" ref="$2" hash="$3" archive="$4"
  [[ -n "$SOCK" ]] || return 0
  local ctr=(ctr --address "$SOCK" -n k8s.io) full
  full="$(normalize_ref "$ref")"
  if "${ctr[@]}" images ls "name==$full" 2>/dev/null | grep -q "dmlt.hash=$hash"; then
    log "$name: $full already in containerd ($hash)"
    return 0
  fi
  log "$name: importing $archive into containerd as $full"
  "${ctr[@]}" images import "$archive" >/dev/null
  "${ctr[@]}" images label "$full" "dmlt.hash=$hash" >/dev/null \
    || die "$archive did not import as $full (ctr -n k8s.io images ls)"
}

# normalize_ref REF: the name containerd (and kubelet) use for an image reference
normalize_ref() {
  local ref="$1"
  [[ "$ref" == */* ]] || ref="library/$ref"
  [[ "${ref%%/*}" == *.* || "${ref%%/*}" == *:* || "${ref%%/*}" == localhost ]] || ref="docker.io/$ref"
  echo "$ref"
}

# commit_archive CTR REF ARCHIVE: commit a working container and write a docker-archive tarball
commit_archive() {
  local c="$1" ref="$2" archive="$3"
  "${BUILDAH[@]}" commit --quiet --rm "$c" "$ref" >/dev/null
  rm -f "$archive.tmp"
  "${BUILDAH[@]}" push --quiet "$ref" "docker-archive:$archive.tmp:$ref"
  mv "$archive.tmp" "$archive"
}

build_base() {
  local key archive rootfs
  key="$(printf 'bookworm minbase python3,python3-pip,python3-venv,ca-certificates,passwd v1' | sha256sum | cut -c1-16)"
  archive="$CACHE/images/dmlt-base-$key.tar"
  if ! "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE_REF" 2>/dev/null | grep -q "dmlt.hash.*$key"; then
    rootfs="$CACHE/base/bookworm-$key"
    if [[ ! -f "$rootfs.done" ]]; then
      log "base: debootstrap bookworm (minbase + python3) into $rootfs"
      rm -rf "$rootfs"
      debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates,passwd \
        bookworm "$rootfs" "$DEBIAN_MIRROR" > "$CACHE/logs/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $CACHE/logs/debootstrap.log"
      rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname "$rootfs"/var/log/* 2>/dev/null || true
      touch "$rootfs.done"
    fi
    log "base: committing $BASE_IMAGE_REF"
    local c mnt
    c="$("${BUILDAH[@]}" from --quiet scratch)"
    mnt="$("${BUILDAH[@]}" mount "$c")"
    tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
    "${BUILDAH[@]}" umount "$c" >/dev/null
    "${BUILDAH[@]}" config --label "dmlt.hash=$key" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd /bin/bash "$c"
    "${BUILDAH[@]}" commit --quiet --rm "$c" "$BASE_IMAGE_REF" >/dev/null
  fi
  BASE_HASH="$key"
  # also in containerd: hack/cluster.sh's DNS check runs in it
  if [[ -n "$SOCK" ]]; then
    if [[ ! -f "$archive" ]]; then
      rm -f "$archive.tmp"
      "${BUILDAH[@]}" push --quiet "$BASE_IMAGE_REF" "docker-archive:$archive.tmp:$BASE_IMAGE_REF"
      mv "$archive.tmp" "$archive"
    fi
    load_archive base "$BASE_IMAGE_REF" "$key" "$archive"
  fi
}

build_pause() {
  local key archive ref="registry.k8s.io/pause:$PAUSE_TAG"
  key="$(hash_files "$HERE" pause.c)"
  archive="$CACHE/images/pause-$key.tar"
  if [[ ! -f "$archive" ]]; then
    log "pause: gcc -static pause.c -> $ref"
    local work="$CACHE/build/pause" c mnt
    mkdir -p "$work"
    gcc -static -Os -o "$work/pause" "$HERE/pause.c"
    strip "$work/pause"
    c="$("${BUILDAH[@]}" from --quiet scratch)"
    "${BUILDAH[@]}" copy --quiet --chmod 0755 "$c" "$work/pause" /pause >/dev/null
    "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 --label "dmlt.hash=$key" "$c"
    commit_archive "$c" "$ref" "$archive"
  fi
  load_archive pause "$ref" "$key" "$archive"
}

build_coredns() {
  local bin="$CACHE/coredns/$COREDNS_VERSION/bin/coredns" key archive ref="localhost/dmlt-coredns:$COREDNS_VERSION"
  [[ -x "$bin" ]] || "$HERE/build-tools.sh" coredns
  key="$( (sha256sum "$bin"; echo v1) | sha256sum | cut -c1-16)"
  archive="$CACHE/images/coredns-$key.tar"
  if [[ ! -f "$archive" ]]; then
    log "coredns: packaging $bin -> $ref"
    local c
    c="$("${BUILDAH[@]}" from --quiet scratch)"
    "${BUILDAH[@]}" copy --quiet --chmod 0755 "$c" "$bin" /coredns >/dev/null
    "${BUILDAH[@]}" config --entrypoint '["/coredns"]' --label "dmlt.hash=$key" "$c"
    commit_archive "$c" "$ref" "$archive"
  fi
  load_archive coredns "$ref" "$key" "$archive"
}

# bud_root_target TARGET REF KEY: build one target of the root Dockerfile, labelled with KEY; the
# host's wheels are mounted at /wheels and the CA bundle is a build secret (never in a layer).
bud_root_target() {
  local target="$1" ref="$2" key="$3" t0=$SECONDS log_file="$CACHE/logs/build-$1.log"
  log "$target: buildah bud --target $target (log: $log_file)"
  [[ -s "$CA_BUNDLE" ]] || die "CA bundle $CA_BUNDLE missing (pip needs it); set DMLT_CA_BUNDLE"
  if ! "${BUILDAH[@]}" bud --layers --pull=never --network host --target "$target" \
      --build-arg "BASE_IMAGE=$BASE_IMAGE_REF" --secret "id=ca,src=$CA_BUNDLE" \
      -v "$CACHE/wheels:/wheels:ro" \
      --label "dmlt.hash=$key" -t "$ref" -f "$REPO/Dockerfile" "$REPO" > "$log_file" 2>&1; then
    tail -n 30 "$log_file" >&2
    die "image build for $target failed, see $log_file"
  fi
  log "$target: built in $((SECONDS - t0)) s ($("${BUILDAH[@]}" images --format '{{.Size}}' "localhost/$ref"))"
}

# The project images are big (torch): no archive is kept. The buildah image carries the
# content hash as a label (built?), containerd's copy too (loaded?); a docker-archive stream
# carries it from one to the other.
build_project() {
  [[ -n "${BASE_HASH:-}" ]] || build_base
  local target key ref src_hash
  src_hash="$(hash_files "$REPO" Dockerfile .dockerignore pyproject.toml README.md LICENSE \
    requirements trainer_image/dmlt_trainer operator/dmlt_operator contract/dmlt_contract sdk/dmlt)"
  # The requirement lists, as the Dockerfile's `requirements` stage writes them.
  local reqs="$CACHE/build/requirements"
  mkdir -p "$reqs"
  python3 - "$REPO/pyproject.toml" "$reqs" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extra = project.get("optional-dependencies", {})
lists = {"trainer": project["dependencies"] + extra.get("postgres", []), "operator": extra.get("operator", [])}
for name, reqs in lists.items():
    open(f"{sys.argv[2]}/{name}.txt", "w").write("\n".join(reqs) + "\n")
PY
  # When the trainer's requirements change, drop the untagged images of earlier builds
  # (buildah's layer cache): each holds a multi-GB torch layer. Source-only changes, and changes
  # to the operator's small requirement list, keep them.
  local deps_key trainer_key
  deps_key="$(printf '%s %s %s' "$(hash_files "$reqs" trainer.txt operator.txt)" \
    "$(hash_files "$REPO/requirements" trainer.lock.txt operator.lock.txt)" "$BASE_HASH" | sha256sum | cut -c1-16)"
  trainer_key="$(printf '%s %s %s' "$(hash_files "$reqs" trainer.txt)" \
    "$(hash_files "$REPO/requirements" trainer.lock.txt)" "$BASE_HASH" | sha256sum | cut -c1-16)"
  if [[ "$(cat "$CACHE/buildah/deps.key" 2>/dev/null)" != "$trainer_key" ]]; then
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
    echo "$trainer_key" >"$CACHE/buildah/deps.key"
  fi
  # Wheels come from a host-side folder that only ever grows (pip download skips what is
  # there): a changed requirement downloads the difference, not torch's 3.5 GB again.
  local wheels="$CACHE/wheels" pip="$REPO/.venv/bin/pip"
  mkdir -p "$wheels"
  if [[ -x "$pip" && ! -f "$wheels/.done-$deps_key" ]]; then
    log "wheels: downloading what is missing into $wheels"
    # One download per image, each with its own lock (requirements/<target>.lock.txt) as constraints.
    if (for t in trainer operator; do "$pip" download --quiet -d "$wheels" -r "$reqs/$t.txt" \
        -c "$REPO/requirements/$t.lock.txt" "setuptools>=69" wheel || exit 1; done) \
        > "$CACHE/logs/wheels.log" 2>&1; then
      touch "$wheels/.done-$deps_key"
    else
      log "wheels: pip download failed (see $CACHE/logs/wheels.log); the build downloads instead"
    fi
  fi
  for target in ${DMLT_IMAGE_TARGETS:-operator trainer}; do
    ref="dmlt-$target:$TAG"
    key="$(printf '%s %s %s' "$src_hash" "$BASE_HASH" "$target" | sha256sum | cut -c1-16)"
    if ! "${BUILDAH[@]}" inspect --type image --format '{{.Docker.Config.Labels}}' \
        "localhost/$ref" 2>/dev/null | grep -q "dmlt.hash:$key"; then
      bud_root_target "$target" "$ref" "$key"
    fi
    [[ -n "$SOCK" ]] || continue
    if ctr --address "$SOCK" -n k8s.io images ls "name==$(normalize_ref "$ref")" 2>/dev/null | grep -q "dmlt.hash=$key"; then
      log "$target: $(normalize_ref "$ref") already in containerd ($key)"
      continue
    fi
    # Stream the image straight into containerd (no archive on disk: for the trainer that is
    # ~6 GB less to write). buildah's archive also names the image localhost/NAME; drop that.
    local full t0=$SECONDS
    full="$(normalize_ref "$ref")"
    load_into_containerd "$target" "$ref" "$full" "$key"
    # (removing a name also runs containerd's garbage collection: --sync waits for it, so the
    # layers of the image version this one replaced are freed now, not at some later GC)
    ctr --address "$SOCK" -n k8s.io images rm --sync "localhost/$ref" >/dev/null 2>&1 || true
    log "$target: loaded in $((SECONDS - t0)) s"
    # archives of older versions of this script
    rm -f "$CACHE/images/dmlt-$target-"*.tar
  done
}

# PostgreSQL (the chart's Optuna storage) from Debian's package on the same base, from
# hack/postgres/. Cached like the project images: a dmlt.hash label on the buildah image
# (built?) and on containerd's copy (loaded?); no archive is kept.
build_postgres() {
  [[ -n "${BASE_HASH:-}" ]] || build_base
  local ref="dmlt-postgres:$TAG" key full t0
  key="$(printf '%s %s postgres' "$(hash_files "$REPO/hack/postgres" Dockerfile docker-entrypoint.sh)" \
    "$BASE_HASH" | sha256sum | cut -c1-16)"
  if ! "${BUILDAH[@]}" inspect --type image --format '{{.Docker.Config.Labels}}' \
      "localhost/$ref" 2>/dev/null | grep -q "dmlt.hash:$key"; then
    log "postgres: buildah bud hack/postgres (log: $CACHE/logs/build-postgres.log)"
    t0=$SECONDS
    local secret=()
    [[ -s "$CA_BUNDLE" ]] && secret=(--secret "id=ca,src=$CA_BUNDLE")
    if ! "${BUILDAH[@]}" bud --pull=never --network host --build-arg "BASE_IMAGE=$BASE_IMAGE_REF" \
        "${secret[@]}" --label "dmlt.hash=$key" -t "$ref" -f "$REPO/hack/postgres/Dockerfile" \
        "$REPO/hack/postgres" > "$CACHE/logs/build-postgres.log" 2>&1; then
      tail -n 30 "$CACHE/logs/build-postgres.log" >&2
      die "image build for postgres failed, see $CACHE/logs/build-postgres.log"
    fi
    log "postgres: built in $((SECONDS - t0)) s ($("${BUILDAH[@]}" images --format '{{.Size}}' "localhost/$ref"))"
  fi
  stream_load postgres "$ref" "$key"
}

# stream_load NAME REF KEY: stream a buildah image into containerd unless its copy there
# already carries the content hash KEY (no archive on disk).
stream_load() {
  local name="$1" ref="$2" key="$3" full
  [[ -n "$SOCK" ]] || return 0
  full="$(normalize_ref "$ref")"
  if ctr --address "$SOCK" -n k8s.io images ls "name==$full" 2>/dev/null | grep -q "dmlt.hash=$key"; then
    log "$name: $full already in containerd ($key)"
    return 0
  fi
  load_into_containerd "$name" "$ref" "$full" "$key"
}

# load_into_containerd NAME REF FULL KEY: stream the buildah image REF into containerd as FULL,
# labelled with its content hash KEY.
load_into_containerd() {
  local name="$1" ref="$2" full="$3" key="$4"
  log "$name: loading into containerd as $full"
  "${BUILDAH[@]}" push --quiet "$ref" "docker-archive:/dev/stdout:$full" \
    | ctr --address "$SOCK" -n k8s.io images import - >/dev/null \
    || die "loading $ref into containerd failed"
  ctr --address "$SOCK" -n k8s.io images label "$full" "dmlt.hash=$key" >/dev/null \
    || die "$ref did not load as $full (ctr -n k8s.io images ls)"
}

# optuna-dashboard (the chart's study UI) from the root Dockerfile's `dashboard` target: pinned
# requirements only, so it is keyed on the Dockerfile and that list, not on the project's code.
build_dashboard() {
  [[ -n "${BASE_HASH:-}" ]] || build_base
  local ref="dmlt-dashboard:$TAG" key wheels="$CACHE/wheels" pip="$REPO/.venv/bin/pip"
  key="$(printf '%s %s dashboard' "$(hash_files "$REPO" Dockerfile .dockerignore hack/dashboard/requirements.txt)" \
    "$BASE_HASH" | sha256sum | cut -c1-16)"
  if ! "${BUILDAH[@]}" inspect --type image --format '{{.Docker.Config.Labels}}' \
      "localhost/$ref" 2>/dev/null | grep -q "dmlt.hash:$key"; then
    mkdir -p "$wheels"
    if [[ -x "$pip" ]] && ! "$pip" download --quiet -d "$wheels" -r "$REPO/hack/dashboard/requirements.txt" \
        > "$CACHE/logs/wheels-dashboard.log" 2>&1; then
      log "dashboard: pip download failed (see $CACHE/logs/wheels-dashboard.log); the build downloads instead"
    fi
    bud_root_target dashboard "$ref" "$key"
  fi
  stream_load dashboard "$ref" "$key"
}

mkdir -p "$CACHE/logs"
command -v buildah >/dev/null || die "buildah missing: apt-get install buildah (hack/cluster.sh up installs it)"
# An interrupted build leaves its working container behind, a multi-GB writable layer each.
"${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
rm -rf "$TMPDIR"/storage* 2>/dev/null || true
targets=("$@")
[[ ${#targets[@]} -eq 0 || "${targets[0]}" == all ]] && targets=(base pause coredns project)
for t in "${targets[@]}"; do
  case "$t" in
    base) build_base ;;
    pause) build_pause ;;
    coredns) build_coredns ;;
    postgres) build_postgres ;;
    dashboard) build_dashboard ;;
    project) build_project; build_postgres; build_dashboard ;;
    *) die "unknown image target: $t" ;;
  esac
done
