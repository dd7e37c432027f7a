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
# EXTRAS lets CI or a user add optional engines, e.g. EXTRAS=operator,cli,dev (no ray)
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-operator,cli,dev,ray}]"
# Test prerequisites beyond Python, built from upstream source (Go module proxy) into a cache
# outside the clone, keyed by version: helm for the chart tests; kube-apiserver and etcd for the
# operator-against-a-real-apiserver test. Cold: ~30 min on 2 cores; warm: seconds.
# DMLT_SKIP_TOOLS=1 skips this (the trainer alone needs none of it).
if [ "${DMLT_SKIP_TOOLS:-0}" != 1 ]; then
  bash hack/cluster/build-tools.sh helm k8s etcd
fi
# PostgreSQL server binaries for the Optuna-storage integration tests (tests/helpers/postgres_server.py
# starts a throwaway server from them, as a non-root user). Debian's package; nothing is started.
# DMLT_SKIP_POSTGRES=1 skips this.
if [ "${DMLT_SKIP_POSTGRES:-0}" != 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: PostgreSQL is missing; tests/integration/test_trial_postgres.py needs it:" \
      "install Debian's postgresql (as root: apt-get install postgresql)" >&2
  else
    apt-get update -qq
    # No init system here: keep the package from starting (or trying to start) its cluster.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
fi
# Chromium for the e2e UI tests (tests/e2e/test_readme.py opens MLflow's UI and optuna-dashboard
# in it through playwright, which drives this browser instead of downloading its own).
# DMLT_SKIP_BROWSER=1 skips this.
if [ "${DMLT_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: chromium is missing; the e2e UI tests need it:" \
      "install Debian's chromium (as root: apt-get install chromium)" >&2
  else
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
echo "setup: ready. Activate with: source .venv/bin/activate"
