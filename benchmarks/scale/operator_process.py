"""The operator as a local process with the chart's settings: the env of manifests/dmlt.yaml's
operator Deployment, with ports of its own and a kubeconfig of the chart's ServiceAccount user."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import yaml

from tests.helpers.control_plane import ControlPlane, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART_MANIFEST = ROOT / "manifests" / "dmlt.yaml"
OPERATOR_PATHS = ("operator", "contract", "trainer_image", "sdk", ".")


def chart_operator_env(manifest_text: str, deployment: str = "dmlt-operator") -> dict[str, str]:
    """The literal `env` values of the Deployment's container (HOME left out: a pod's detail)."""
    for doc in yaml.safe_load_all(manifest_text):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == deployment:
            container = doc["spec"]["template"]["spec"]["containers"][0]
            return {e["name"]: str(e["value"]) for e in container.get("env", [])
                    if "value" in e and e["name"] != "HOME"}  # fmt: skip
    raise ValueError(f"no Deployment {deployment} in the manifest")


def start_operator(plane: ControlPlane, kubeconfig: Path, base_env: dict[str, str],
                   overrides: dict[str, str] | None = None) -> int:  # fmt: skip
    """Start `dmlt-operator` (as the chart's container runs it, with `overrides` of its env) and
    wait for its /healthz; its pid."""
    health = free_port()
    env = {
        **base_env,
        # What the chart's Deployment takes from the downward API: its namespace (the Lease's
        # home, where the chart's Lease Role is) and the Pod's name.
        "DMLT_LEASE_NAMESPACE": "dmlt",
        "DMLT_POD_NAME": "dmlt-operator-bench",
        **chart_operator_env(CHART_MANIFEST.read_text()),
        "KUBECONFIG": str(kubeconfig),
        "DMLT_HEALTH_PORT": str(health),
        "DMLT_METRICS_PORT": str(free_port()),
        "PYTHONPATH": ":".join(str(ROOT / p) for p in OPERATOR_PATHS),
        "PYTHONWARNINGS": "ignore",
        **(overrides or {}),
    }
    proc = plane.spawn("operator", [sys.executable, "-m", "dmlt_operator.main", "--log-format", "full"],
                       env=env, cwd=ROOT)  # fmt: skip
    url = f"http://127.0.0.1:{health}/healthz"
    wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 120, "operator health")
    return proc.pid
