"""Where the chart tests find helm: $HELM, else PATH, else the build cache of hack/setup.sh."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def find_helm() -> str | None:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    found = shutil.which("helm")
    if found:
        return found
    cache = Path(os.environ.get("DMLT_CACHE_DIR", "/var/cache/dmlt")) / "helm"
    builds = sorted(cache.glob("*/bin/helm"), key=lambda p: p.parts[-3])
    return str(builds[-1]) if builds else None


def require_helm() -> str:
    """helm's path, or a failure that says how to get it (never a silent skip)."""
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found: set HELM, put helm on PATH, or run `bash hack/setup.sh` (builds it)")
    return helm
