#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
# Runs unit and integration tests; pytest's exit 5 (nothing collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "test: .venv is missing: run 'bash hack/setup.sh' first" >&2
  exit 1
fi
export MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
.venv/bin/python -m pytest tests/unit tests/integration "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
