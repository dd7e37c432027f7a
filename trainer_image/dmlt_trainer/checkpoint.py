"""Checkpoints: everything needed to resume, written atomically by rank 0."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
BEST = "best.pt"


def run_dir(root: str | os.PathLike, run_name: str) -> Path:
    return Path(root) / run_name


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at path, or None when there is none yet."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
