"""Where the tests find the upstream binaries hack/cluster/build-tools.sh builds from source."""

from __future__ import annotations

import os
from pathlib import Path


def cached_binary(tool: str, binary: str) -> Path | None:
    """`<cache>/<tool>/<version>/bin/<binary>` for the last version cached, or None."""
    cache = Path(os.environ.get("DMLT_CACHE_DIR", "/var/cache/dmlt")) / tool
    builds = sorted(cache.glob(f"*/bin/{binary}"), key=lambda p: p.parts[-3])
    return builds[-1] if builds else None
