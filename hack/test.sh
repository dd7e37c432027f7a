#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
# Brings up the local Kubernetes (hack/cluster.sh, cached builds) unless KUBECONFIG already
# points at a cluster or DMLT_E2E=0, then runs unit, integration and e2e tests in one pytest
# run, and tears the local cluster down again, also on failure.
# pytest's exit 5 (nothing collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "test: .venv is missing: run 'bash hack/setup.sh' first" >&2
  exit 1
fi
export MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
suites=(tests/unit tests/integration)
if [ "${DMLT_E2E:-1}" = 1 ]; then
  if [ -z "${KUBECONFIG:-}" ]; then
    trap 'bash hack/cluster.sh down || echo "test: cluster teardown failed" >&2' EXIT
    # One clean retry: a component left over from an earlier run can make the first start fail.
    if ! bash hack/cluster.sh up; then
      echo "test: the local cluster did not come up; tearing down and trying once more" >&2
      bash hack/cluster.sh down || true
      if ! bash hack/cluster.sh up; then
        echo "test: the local cluster did not come up (logs: bash hack/cluster.sh logs)" >&2
        exit 1
      fi
    fi
    KUBECONFIG="$(bash hack/cluster.sh kubeconfig)"
    export KUBECONFIG
  fi
  suites+=(tests/e2e)
fi
.venv/bin/python -m pytest "${suites[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
