"""A Kubernetes control plane as local processes: etcd and kube-apiserver on free loopback ports
with the chart's CRDs and RBAC applied, and on request the controller-manager and scheduler.

The integration tier's `cluster` fixture (tests/helpers/apiserver.py) starts the apiserver alone
and plays kubelet itself; benchmarks/bench_scale.py adds the controllers and kwok's simulated
nodes. Needs kube-apiserver and etcd from hack/cluster.sh's build cache (or $DMLT_K8S_BIN, $DMLT_ETCD).
No pytest here: the benchmark imports it too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

from tests.helpers.tool_cache import cached_binary

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
ADMIN_TOKEN = "admintoken"


def k8s_bin() -> Path | None:
    """The directory of kube-apiserver & co.: $DMLT_K8S_BIN, else the newest in the build cache."""
    if os.environ.get("DMLT_K8S_BIN"):
        return Path(os.environ["DMLT_K8S_BIN"])
    found = cached_binary("k8s", "kube-apiserver")
    return found.parent if found else None


def etcd_binary() -> str | None:
    """$DMLT_ETCD, else etcd built into the cache (3.6: watch progress notifications), else PATH's."""
    found = os.environ.get("DMLT_ETCD") or cached_binary("etcd", "etcd")
    return str(found) if found else shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> Path:
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


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A line of the apiserver's --token-auth-file: a bearer token and whom it authenticates."""

    token: str
    user: str
    groups: tuple[str, ...] = ("system:authenticated",)

    def csv_line(self) -> str:
        return f'{self.token},{self.user},{self.user},"{",".join(self.groups)}"'


SA_USER = "system:serviceaccount:dmlt:dmlt-operator"
OPERATOR_TOKEN = StaticToken("optoken", SA_USER, ("system:serviceaccounts", "system:authenticated"))
"""The chart's operator ServiceAccount, as a static token (the chart's RBAC binds that user)."""


class ControlPlane:
    """etcd + kube-apiserver (+ controllers on request) under `work`; `stop()` ends them all.

    `tokens` are accepted besides the admin's (system:masters); `apiserver_args` are added to
    kube-apiserver's command line (an audit policy, say). `manifest_kinds`, if given, limits what
    of manifests/ is applied (with controllers running, the chart's Deployments would start).
    """

    def __init__(self, work: Path, tokens: Sequence[StaticToken] = (),
                 apiserver_args: Sequence[str] = (),
                 manifest_kinds: Collection[str] | None = None) -> None:  # fmt: skip
        bin_dir, etcd = k8s_bin(), etcd_binary()
        if bin_dir is None or etcd is None:
            raise RuntimeError("needs kube-apiserver and etcd: `bash hack/cluster.sh tools` builds them")
        self.bin_dir, self.etcd, self.work = bin_dir, etcd, work
        self.tokens = (StaticToken(ADMIN_TOKEN, "admin", ("system:masters",)), *tokens)
        self.apiserver_args = tuple(apiserver_args)
        self.manifest_kinds = manifest_kinds
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[IO[str]] = []

    # ------------------------------------------------------------------ processes

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:  # fmt: skip
        """Start a process logging to <work>/<name>.log; `stop()` ends it."""
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115
        self._logs.append(log)
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env), cwd=cwd)  # fmt: skip
        self.procs[name] = proc
        return proc

    def end(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.end(name)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ start-up

    def kubeconfig(self, token: str, name: str, namespace: str = "default") -> Path:
        return write_kubeconfig(self.work / f"{name}.kubeconfig", self.server, token, namespace)

    @property
    def admin_kubeconfig(self) -> Path:
        return self.work / "admin.kubeconfig"

    @property
    def kubectl(self) -> list[str]:
        return [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.admin_kubeconfig)]

    def start(self) -> None:
        """etcd and kube-apiserver, then the chart's CRDs and RBAC (manifests/) applied."""
        w = self.work
        for argv in (["openssl", "genrsa", "-out", w / "sa.key", "2048"],
                     ["openssl", "rsa", "-in", w / "sa.key", "-pubout", "-out", w / "sa.pub"]):  # fmt: skip
            subprocess.run(argv, check=True, capture_output=True)
        (w / "tokens.csv").write_text("".join(t.csv_line() + "\n" for t in self.tokens))
        etcd_port, peer_port = free_port(), free_port()
        self.spawn("etcd", [
            self.etcd, "--name", "t", "--data-dir", str(w / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"t=http://127.0.0.1:{peer_port}",
        ])  # fmt: skip
        self.spawn("apiserver", [
            str(self.bin_dir / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={self.api_port}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--cert-dir={w / 'certs'}",
            f"--token-auth-file={w / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-cluster-ip-range=10.97.0.0/16",
            *self.apiserver_args,
        ])  # fmt: skip
        self.kubeconfig(ADMIN_TOKEN, "admin")
        wait_until(lambda: self._kubectl_ok("get", "--raw", "/readyz"), 120, "the apiserver")
        applied = subprocess.run([*self.kubectl, "apply", "-f", str(self._manifests())],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        if applied.returncode != 0:
            raise RuntimeError(f"kubectl apply -f manifests/ failed: {applied.stderr}")
        subprocess.run([*self.kubectl, "wait", "--for", "condition=established", "--timeout=60s",
                        "crd/trainingjobs.dmlt.io"], check=True, capture_output=True)  # fmt: skip

    def _manifests(self) -> Path:
        if self.manifest_kinds is None:
            return MANIFESTS
        docs = [d for f in sorted(MANIFESTS.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
                if d and d.get("kind") in self.manifest_kinds]  # fmt: skip
        chosen = self.work / "manifests.yaml"
        chosen.write_text(yaml.safe_dump_all(docs))
        return chosen

    def _kubectl_ok(self, *args: str) -> bool:
        return subprocess.run([*self.kubectl, *args], capture_output=True, check=False).returncode == 0

    def start_controllers(self, controller_manager_args: Sequence[str] = ()) -> None:
        """kube-controller-manager (garbage collector, ServiceAccounts, node lifecycle, ...) and
        kube-scheduler, both as system:masters, without leader election or serving ports."""
        kubeconfig = str(self.admin_kubeconfig)
        self.spawn("controller-manager", [
            str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--secure-port=0",
            f"--service-account-private-key-file={self.work / 'sa.key'}",
            f"--root-ca-file={self.work / 'certs' / 'apiserver.crt'}",
            "--use-service-account-credentials=false",
            "--service-cluster-ip-range=10.97.0.0/16",
            *controller_manager_args,
        ])  # fmt: skip
        self.spawn("scheduler", [
            str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--secure-port=0",
        ])  # fmt: skip
