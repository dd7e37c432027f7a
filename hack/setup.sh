#!/usr/bin/env bash
# One-command setup: a .venv at the repository root with dmlt and its test tools installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11+ is required (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# EXTRAS lets CI or a user add optional engines, e.g. EXTRAS=operator,dev (no ray)
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-operator,dev,ray}]"
echo "setup: ready. Activate with: source .venv/bin/activate"
