"""ruff (with the complexity limits in pyproject.toml) finds nothing in the shipped code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LINTED = ("operator", "contract", "trainer_image", "sdk")


def ruff() -> str:
    beside_python = Path(sys.executable).with_name("ruff")
    found = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff not found: install the dev extra (pip install -e '.[dev]')")
    return found


def test_ruff_finds_nothing():
    out = subprocess.run(
        [ruff(), "check", "--no-cache", *LINTED], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
