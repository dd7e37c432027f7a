#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
# Runs unit and integration tests, then the e2e tests against a Kubernetes cluster: the one
# KUBECONFIG points at, or else the local one of hack/cluster.sh, which is brought up (cached
# builds) in the background while the first two tiers run, and torn down again at the end, also
# on failure; it runs Kueue unless DMLT_KUEUE=0. DMLT_E2E=0 leaves the e2e tier (and the cluster)
# out. Arguments go to pytest.
# pytest's exit 5 (nothing collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "test: .venv is missing: run 'bash hack/setup.sh' first" >&2
  exit 1
fi
export MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
e2e="${DMLT_E2E:-1}"
local_cluster=0
up_log=""

log() { printf '[test %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The local cluster runs Kueue (the e2e queueing tests need it); DMLT_KUEUE=0 leaves it out.
export DMLT_KUEUE="${DMLT_KUEUE:-1}"
cluster_up() {  # one clean retry: a component left over from an earlier run can fail the first start
  bash hack/cluster.sh up && return 0
  echo "test: the local cluster did not come up; tearing down and trying once more" >&2
  bash hack/cluster.sh down || true
  bash hack/cluster.sh up
}

if [ "$e2e" = 1 ] && [ -z "${KUBECONFIG:-}" ]; then
  local_cluster=1
  up_log="$(mktemp -t dmlt-cluster-up.XXXXXX)"
  trap 'bash hack/cluster.sh down || echo "test: cluster teardown failed" >&2; rm -f "$up_log"' EXIT
  log "bringing up the local cluster in the background (log: $up_log)"
  cluster_up >"$up_log" 2>&1 &
  up_pid=$!
fi

.venv/bin/python -m pytest tests/unit tests/integration "$@"
rc_first=$?
rc_e2e=5
if [ "$e2e" = 1 ]; then
  if [ "$local_cluster" = 1 ]; then
    log "waiting for the local cluster"
    wait "$up_pid"
    up_rc=$?
    cat "$up_log" >&2
    if [ "$up_rc" -ne 0 ]; then
      echo "test: the local cluster did not come up (logs: bash hack/cluster.sh logs)" >&2
      exit 1
    fi
    KUBECONFIG="$(bash hack/cluster.sh kubeconfig)"
    export KUBECONFIG
  fi
  .venv/bin/python -m pytest tests/e2e "$@"
  rc_e2e=$?
  if [ "$rc_e2e" -ne 0 ] && [ "$rc_e2e" -ne 5 ] && [ "$local_cluster" = 1 ]; then
    echo "test: the local cluster after the failed run (before teardown):" >&2
    bash hack/cluster.sh status 2>&1 | tail -n 40 >&2 || true
  fi
fi
# Without arguments every tier that ran must collect tests; with a selection (-m, -k, paths), one must.
if { [ "$#" -eq 0 ] && { [ "$rc_first" -eq 5 ] || { [ "$e2e" = 1 ] && [ "$rc_e2e" -eq 5 ]; }; }; } \
    || { [ "$rc_first" -eq 5 ] && [ "$rc_e2e" -eq 5 ]; }; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
for rc in "$rc_first" "$rc_e2e"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    exit "$rc"
  fi
done
exit 0
