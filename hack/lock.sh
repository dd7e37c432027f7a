#!/usr/bin/env bash
# Re-resolve the images' pinned Python packages (requirements/*.lock.txt) from pyproject.toml.
#   hack/lock.sh            rewrite every lock (needs uv: pip install uv, a dev extra)
#   hack/lock.sh --check    exit 1 when a lock is out of date with pyproject.toml
# See hack/lock.py. Commit the changed locks: that is the deliberate update of the pins.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
exec "$PYTHON" "$REPO/hack/lock.py" "$@"
