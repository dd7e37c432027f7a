"""The operator as a local process with the chart's settings: the env of manifests/dmlt.yaml's
operator Deployment, with ports of its own and a kubeconfig of the chart's ServiceAccount user,
and the progress receiver on, as `helm install` has it (the rendered manifest has it off: no
generated certificate there), with a CA and serving certificate of its own."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import yaml

from tests.helpers.control_plane import ControlPlane, free_port, wait_until
from tests.helpers.tls import make_tls

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


def progress_receiver_env(work: Path) -> dict[str, str]:
    """What `helm install` adds to the operator's env for the progress receiver."""
    tls = make_tls(work / "progress-tls", hosts=("localhost",))
    port = free_port()
    return {
        "DMLT_PROGRESS_SERVICE_URL": f"https://localhost:{port}",
        "DMLT_PROGRESS_PORT": str(port),
        "DMLT_PROGRESS_TLS_DIR": str(tls.dir),
    }


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
        **progress_receiver_env(plane.work),
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
