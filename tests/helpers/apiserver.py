"""A real kube-apiserver (and etcd) with no kubelet, for the integration tests; they play kubelet.

Needs kube-apiserver from hack/cluster.sh's build cache (or $DMLT_K8S_BIN) and etcd on PATH;
a clear failure otherwise. The fixtures around these are in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NS = "itest"
SA_USER = "system:serviceaccount:dmlt:dmlt-operator"

APISERVER_MARKS = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]
"""`pytestmark` of a test module against the `cluster` apiserver (it serves a self-signed certificate)."""


def _k8s_bin() -> Path | None:
    if os.environ.get("DMLT_K8S_BIN"):
        return Path(os.environ["DMLT_K8S_BIN"])
    cache = Path(os.environ.get("DMLT_CACHE_DIR", "/var/cache/dmlt")) / "k8s"
    found = sorted(cache.glob("*/bin/kube-apiserver"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "t", "cluster": {"server": server,
                                                       "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "t", "user": "u",
                                                       "namespace": namespace}}],
                "current-context": "c",
            }
        )
    )  # fmt: skip
    return path


def start_cluster(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A kube-apiserver + etcd with the chart's CRDs and RBAC (the `cluster` fixture's body)."""
    bin_dir, etcd = _k8s_bin(), shutil.which("etcd")
    if bin_dir is None or etcd is None:
        pytest.fail("needs kube-apiserver and etcd: run `bash hack/cluster.sh tools` (builds them)")
    import kubernetes

    work = tmp_path_factory.mktemp("apiserver")
    subprocess.run(["openssl", "genrsa", "-out", work / "sa.key", "2048"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "rsa", "-in", work / "sa.key", "-pubout", "-out", work / "sa.pub"],
                   check=True, capture_output=True)  # fmt: skip
    (work / "tokens.csv").write_text(
        'admintoken,admin,admin,"system:masters"\n'
        f'optoken,{SA_USER},op,"system:serviceaccounts,system:authenticated"\n'
    )
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    procs = []
    logs = []
    try:
        log = open(work / "etcd.log", "w")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(
            [etcd, "--name", "t", "--data-dir", str(work / "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"t=http://127.0.0.1:{peer_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        log = open(work / "apiserver.log", "w")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(
            [str(bin_dir / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
             f"--secure-port={api_port}", "--bind-address=127.0.0.1",
             "--advertise-address=127.0.0.1", f"--cert-dir={work / 'certs'}",
             f"--token-auth-file={work / 'tokens.csv'}", "--authorization-mode=RBAC",
             "--service-account-issuer=https://kubernetes.default.svc",
             f"--service-account-key-file={work / 'sa.pub'}",
             f"--service-account-signing-key-file={work / 'sa.key'}",
             "--service-cluster-ip-range=10.97.0.0/16"],
            stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        server = f"https://127.0.0.1:{api_port}"
        admin_cfg = _kubeconfig(work / "admin.kubeconfig", server, "admintoken")
        op_cfg = _kubeconfig(work / "op.kubeconfig", server, "optoken")
        api = kubernetes.config.new_client_from_config(config_file=str(admin_cfg))
        core = kubernetes.client.CoreV1Api(api)
        wait_until(lambda: core.list_namespace() is not None, 120, "the apiserver")
        kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(admin_cfg)]
        applied = subprocess.run([*kubectl, "apply", "-f", str(ROOT / "manifests")],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        subprocess.run([*kubectl, "wait", "--for", "condition=established", "--timeout=60s",
                        "crd/trainingjobs.dmlt.io"], check=True, capture_output=True)  # fmt: skip
        core.create_namespace({"metadata": {"name": NS}})
        # No controller-manager here: create the ServiceAccount it would have.
        core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
        yield {
            "api": api, "core": core, "custom": kubernetes.client.CustomObjectsApi(api),
            "kubectl": kubectl, "op_kubeconfig": op_cfg, "work": work,
        }  # fmt: skip
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


class Operator:
    def __init__(self, cluster: dict[str, Any]) -> None:
        self.cluster = cluster
        self.proc: subprocess.Popen | None = None
        self.health = _free_port()
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster["op_kubeconfig"]),
            "PYTHONWARNINGS": "ignore",
            "DMLT_RECONCILE_INTERVAL_SECONDS": "1",
            "DMLT_HEALTH_PORT": str(self.health),
            "DMLT_METRICS_PORT": "0",
            "DMLT_NAMESPACES": NS,
            "DMLT_DEFAULT_TRACKING_URI": "http://mlflow.example:5000",
        }
        self.log = open(self.cluster["work"] / f"operator-{self.runs}.log", "w")  # noqa: SIM115
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


def run_operator(cluster) -> Iterator[Operator]:
    """The operator as a process with the chart's ServiceAccount identity (the `operator` fixture)."""
    op = Operator(cluster)
    op.start()
    yield op
    op.stop()


# --------------------------------------------------------------------------- helpers


def apply_job(cluster, name: str, **spec: Any) -> None:
    body = {"apiVersion": "dmlt.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NS},
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
