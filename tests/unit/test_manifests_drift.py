"""manifests/ is generated from the Helm chart; fail when the two drift apart."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "gen-manifests.sh"
MANIFEST = ROOT / "manifests" / "dmlt.yaml"


def find_helm() -> str | None:
    """$HELM, else PATH, else the newest build in the cluster tooling's cache."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    found = shutil.which("helm")
    if found:
        return found
    cache = Path(os.environ.get("DMLT_CACHE_DIR", "/var/cache/dmlt")) / "helm"
    builds = sorted(cache.glob("*/bin/helm"), key=lambda p: p.parts[-3])
    return str(builds[-1]) if builds else None


def require_helm() -> str:
    helm = find_helm()
    if helm is None:
        if os.environ.get("DMLT_SKIP_HELM") == "1":
            pytest.skip("helm not found and DMLT_SKIP_HELM=1")
        pytest.fail(
            "helm not found: set HELM, put helm on PATH, or build it with "
            "`hack/cluster.sh tools` (DMLT_SKIP_HELM=1 skips the chart checks)"
        )
    return helm


def test_manifests_match_the_chart():
    helm = require_helm()
    assert MANIFEST.exists(), "manifests/dmlt.yaml is missing: run hack/gen-manifests.sh"
    fresh = subprocess.run(
        ["bash", str(SCRIPT), "--stdout"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM": helm},
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr
    committed = MANIFEST.read_text()
    if fresh.stdout != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                fresh.stdout.splitlines(keepends=True),
                "manifests/dmlt.yaml (committed)",
                "helm template (fresh)",
                n=1,
            )
        )
        pytest.fail("manifests/dmlt.yaml drifted from helm/dmlt; run hack/gen-manifests.sh.\n" + diff[:4000])
