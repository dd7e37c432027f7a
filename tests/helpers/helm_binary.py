"""Where the chart tests find helm: $HELM, else PATH, else the build cache of hack/setup.sh."""

from __future__ import annotations

import os
import shutil
import pytest

from tests.helpers.tool_cache import cached_binary


def find_helm() -> str | None:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    found = shutil.which("helm")
    if found:
        return found
    build = cached_binary("helm", "helm")
    return str(build) if build else None


def require_helm() -> str:
    """helm's path, or a failure that says how to get it (never a silent skip)."""
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found: set HELM, put helm on PATH, or run `bash hack/setup.sh` (builds it)")
    return helm
