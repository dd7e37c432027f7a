"""manifests/ is generated from the Helm chart; fail when the two drift apart."""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.helm_binary import require_helm

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "gen-manifests.sh"
MANIFEST = ROOT / "manifests" / "dmlt.yaml"


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
