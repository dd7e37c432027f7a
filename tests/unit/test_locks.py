"""The images' pinned Python packages (requirements/*.lock.txt, written by hack/lock.sh): each
lock matches pyproject.toml's lists, pins every package it names, and the image builds use it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==[^\s;]+(\s*;.*)?$")


def _lock_module():
    spec = importlib.util.spec_from_file_location("lock", ROOT / "hack" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("target", sorted(lock.TARGETS))
def test_lock_is_up_to_date_with_pyproject(target):
    assert lock.recorded_hash(target) == lock.input_hash(lock.requirements(target)), (
        f"{lock.lock_path(target)} is out of date with pyproject.toml: run hack/lock.sh and commit"
    )


@pytest.mark.parametrize("target", sorted(lock.TARGETS))
def test_lock_pins_every_requirement(target):
    lines = [line for line in lock.lock_path(target).read_text().splitlines() if line and line[0] != "#"]
    assert lines and all(PIN.match(line) for line in lines), [ln for ln in lines if not PIN.match(ln)]
    pinned = {_name(line) for line in lines}
    assert {_name(r) for r in lock.requirements(target)} <= pinned


def test_a_changed_requirement_makes_the_lock_stale(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(pyproject.replace('"kopf>=1.37"', '"kopf>=1.38"'))
    assert lock.input_hash(lock.requirements("operator", changed)) != lock.recorded_hash("operator")
    assert lock.main(["--check"]) == 0


@pytest.mark.parametrize("target", sorted(lock.TARGETS))
def test_image_builds_install_with_the_lock(target):
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    assert f"COPY requirements/{target}.lock.txt /tmp/constraints.txt" in stage
    installs = [
        line for line in stage.splitlines() if "pip install" in line and "-r /tmp/requirements.txt" in line
    ]
    assert installs and all("-c /tmp/constraints.txt" in line for line in installs)
    assert "!requirements" in (ROOT / ".dockerignore").read_text().splitlines()
    images = (ROOT / "hack" / "cluster" / "images.sh").read_text()
    assert '-c "$REPO/requirements/$t.lock.txt"' in images


def test_dashboard_reads_studies_with_the_optuna_that_writes_them():
    """optuna-dashboard's image pins optuna by hand (hack/dashboard/requirements.txt); it must be
    the version the trainer and operator images create and migrate the study schema with."""

    def optuna_pin(path: Path) -> str:
        pins = [line.strip() for line in path.read_text().splitlines() if line.lower().startswith("optuna==")]
        assert len(pins) == 1, f"{path} pins optuna {len(pins)} times"
        return pins[0]

    dashboard = optuna_pin(ROOT / "hack" / "dashboard" / "requirements.txt")
    assert dashboard == optuna_pin(lock.lock_path("trainer")) == optuna_pin(lock.lock_path("operator"))
