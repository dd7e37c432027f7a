"""A real kube-apiserver (and etcd) with no kubelet, for the integration tests; they play kubelet.

The processes are tests/helpers/control_plane.py's; a clear failure when their binaries are
missing. The fixtures around these are in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.control_plane import OPERATOR_TOKEN, ROOT, ControlPlane, free_port, wait_until

NS = "itest"

APISERVER_MARKS = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]
"""`pytestmark` of a test module against the `cluster` apiserver (it serves a self-signed certificate)."""


def start_cluster(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A kube-apiserver + etcd with the chart's CRDs and RBAC (the `cluster` fixture's body)."""
    import kubernetes

    try:
        plane = ControlPlane(tmp_path_factory.mktemp("apiserver"), tokens=[OPERATOR_TOKEN])
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with plane:
        admin_cfg = plane.admin_kubeconfig
        op_cfg = plane.kubeconfig(OPERATOR_TOKEN.token, "op")
        api = kubernetes.config.new_client_from_config(config_file=str(admin_cfg))
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        # No controller-manager here: create the ServiceAccount it would have.
        core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
        yield {
            "api": api, "core": core, "custom": kubernetes.client.CustomObjectsApi(api),
            "kubectl": plane.kubectl, "op_kubeconfig": op_cfg, "work": plane.work,
        }  # fmt: skip


class Operator:
    def __init__(self, cluster: dict[str, Any], name: str = "operator", **env: str) -> None:
        self.cluster = cluster
        self.name = name
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.health = free_port()
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster["op_kubeconfig"]),
            "PYTHONWARNINGS": "ignore",
            # The resync (the safety net) never fires in a test: watch events drive every step.
            "DMLT_RECONCILE_INTERVAL_SECONDS": "600",
            "DMLT_LOG_POLL_SECONDS": "1",
            "DMLT_HEALTH_PORT": str(self.health),
            "DMLT_METRICS_PORT": "0",
            "DMLT_NAMESPACES": NS,
            "DMLT_DEFAULT_TRACKING_URI": "http://mlflow.example:5000",
            **self.env,
        }
        self.log = open(self.cluster["work"] / f"{self.name}-{self.runs}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dmlt_operator.main"], env=env, cwd=ROOT,
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{self.health}/healthz"
        wait_until(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, "operator health")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
            self.log.close()

    def kill(self) -> None:
        """SIGKILL: no clean-up, no Lease released."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
            self.log.close()

    def log_text(self) -> str:
        return (self.cluster["work"] / f"{self.name}-{self.runs}.log").read_text()


def run_operator(cluster) -> Iterator[Operator]:
    """The operator as a process with the chart's ServiceAccount identity (the `operator` fixture)."""
    op = Operator(cluster)
    op.start()
    yield op
    op.stop()


# --------------------------------------------------------------------------- helpers


def apply_job(cluster, name: str, finalizers: list[str] | None = None, **spec: Any) -> None:
    body = {"apiVersion": "dmlt.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NS, "finalizers": finalizers or []},
            "spec": {"image": "dmlt-trainer:dev", "replicas": 2, **spec}}  # fmt: skip
    cluster["custom"].create_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", body)


def get_job(cluster, name: str) -> dict[str, Any]:
    return cluster["custom"].get_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", name)


def job_gone(cluster, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        get_job(cluster, name)
    except ApiException as exc:
        return exc.status == 404
    return False


def pods_of(cluster, name: str) -> dict[str, Any]:
    pods = cluster["core"].list_namespaced_pod(NS, label_selector=f"dmlt.io/job-name={name}")
    return {p.metadata.name: p for p in pods.items}


def wait_phase(cluster, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    wait_until(lambda: get_job(cluster, name).get("status", {}).get("phase") == phase, timeout,
          f"{name} to be {phase}")  # fmt: skip
    return get_job(cluster, name)


def wait_pods(cluster, name: str, count: int, attempt: int, timeout: float = 30) -> None:
    def ready() -> bool:
        pods = pods_of(cluster, name).values()
        return len(pods) == count and all(p.metadata.labels["dmlt.io/attempt"] == str(attempt) for p in pods)

    wait_until(ready, timeout, f"{count} pods of {name} at attempt {attempt}")


def play_kubelet(cluster, pod: str, state: str) -> None:
    """Set a Pod's status as a kubelet would: running, succeeded or failed."""
    now = "2026-01-01T00:00:00Z"
    container: dict[str, Any] = {"name": "trainer", "image": "x", "imageID": "", "restartCount": 0}
    if state == "running":
        phase, ready = "Running", "True"
        container.update(ready=True, state={"running": {"startedAt": now}})
    else:
        phase, ready = ("Succeeded", "False") if state == "succeeded" else ("Failed", "False")
        code = 0 if state == "succeeded" else 1
        container.update(ready=False, state={"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": now, "finishedAt": now}})  # fmt: skip
    cluster["core"].patch_namespaced_pod_status(pod, NS, {"status": {
        "phase": phase, "conditions": [{"type": "Ready", "status": ready}],
        "containerStatuses": [container]}})  # fmt: skip


def events_of(cluster, name: str) -> list[str]:
    events = cluster["core"].list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
    return [e.reason for e in events.items]
