"""Rendering the dmlt chart with the real helm binary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.helm_binary import require_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dmlt"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_helm(), *args], capture_output=True, text=True, timeout=120, check=False)


def render(*sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    args = ["template", "dmlt", str(CHART), "--namespace", "dmlt", "--kube-version", "1.34.0"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}
