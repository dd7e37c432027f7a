"""`dmlt`'s one-line errors against a real kube-apiserver (and etcd) with the chart's manifests
applied and no kubelet: the operator Deployment exists but never runs, the operator's
ServiceAccount may not create TuningStudies, and a CRD can be taken away. Nothing is created
when a command refuses."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.helpers.apiserver import NS, play_kubelet, pods_of, wait_pods
from tests.helpers.cli import cli_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]
STUDY = ["--epochs", "1", "--param", "lr=float:1e-3:1e-2"]


def dmlt(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dmlt.cli", *args],
        env=cli_env(KUBECONFIG=str(kubeconfig)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stderr.startswith("dmlt: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert fragment in proc.stderr, proc.stderr


def items(cluster: dict[str, Any], plural: str) -> list[str]:  # noqa: F811
    listed = cluster["custom"].list_namespaced_custom_object("dmlt.io", "v1alpha1", NS, plural)
    return [o["metadata"]["name"] for o in listed["items"]]


def test_forbidden_namespace(cluster):  # noqa: F811
    proc = dmlt(cluster["op_kubeconfig"], "tune", "-n", NS, "--name", "nope", *STUDY)
    one_line(proc, 3, f"forbidden: creating TuningStudy {NS}/nope")
    assert "cannot create resource" in proc.stderr and items(cluster, "tuningstudies") == []


def test_operator_not_running(cluster):  # noqa: F811
    admin = cluster["work"] / "admin.kubeconfig"
    proc = dmlt(admin, "train", "-n", NS, "--name", "nope", "--epochs", "1")
    one_line(proc, 3, "the dmlt operator (")
    assert "is not running: no ready replica" in proc.stderr and items(cluster, "trainingjobs") == []


def test_not_found_is_one_line(cluster):  # noqa: F811
    admin = cluster["work"] / "admin.kubeconfig"
    proc = dmlt(admin, "get", "tj", "no-such-job", "-n", NS)
    one_line(proc, 3, f"no TrainingJob named 'no-such-job' in namespace '{NS}'")


def test_train_follows_a_job_the_operator_runs(cluster, operator):  # noqa: F811
    """The real operator (a process) and the apiserver, this test playing kubelet and
    controller-manager: `dmlt train` follows to Succeeded and exits 0; meanwhile `dmlt wait`
    times out with 124, then sees Running; `get` shows the job."""
    admin = cluster["work"] / "admin.kubeconfig"
    apps = kubernetes.client.AppsV1Api(cluster["api"])
    apps.patch_namespaced_deployment_status(
        "dmlt-operator", "dmlt", {"status": {"replicas": 1, "readyReplicas": 1}}
    )
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dmlt.cli",
            "train",
            "-n",
            NS,
            "--name",
            "cli",
            "--replicas",
            "2",
            "--epochs",
            "2",
        ],
        env=cli_env(KUBECONFIG=str(admin)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_pods(cluster, "cli", 2, attempt=0, timeout=60)
        started = time.monotonic()
        one_line(
            dmlt(admin, "wait", "tj/cli", "-n", NS, "--timeout", "3s"),
            124,
            f"timed out after 3 s waiting for TrainingJob {NS}/cli",
        )
        assert 3 <= time.monotonic() - started < 60
        for pod in pods_of(cluster, "cli"):
            play_kubelet(cluster, pod, "running")
        waited = dmlt(admin, "wait", "cli", "-n", NS, "--for", "Running", "--timeout", "60s")
        assert (waited.returncode, waited.stdout) == (0, "trainingjob.dmlt.io/cli Running\n"), waited.stderr
        got = dmlt(admin, "get", "tj", "-n", NS)
        assert re.search(r"^cli\s+Running\s+2/2\s", got.stdout, re.M), got.stdout
        for pod in pods_of(cluster, "cli"):
            play_kubelet(cluster, pod, "succeeded")
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"trainingjob.dmlt.io/cli created in namespace {NS}"
    assert any(line.startswith("cli: Running ready=2/2") for line in lines), out
    assert f"TrainingJob {NS}/cli Succeeded: world size 2, 0 restart(s)" in out
    deleted = dmlt(admin, "delete", "tj/cli", "-n", NS)
    assert deleted.stdout == "trainingjob.dmlt.io/cli deleted\n", deleted.stderr


def test_no_crd(cluster):  # noqa: F811
    admin = cluster["work"] / "admin.kubeconfig"
    subprocess.run(
        [*cluster["kubectl"], "delete", "crd", "tuningstudies.dmlt.io", "--wait"],
        check=True,
        capture_output=True,
    )
    proc = dmlt(admin, "tune", "-n", NS, "--name", "nope", *STUDY)
    one_line(
        proc,
        3,
        "the cluster has no TuningStudy resource (tuningstudies.dmlt.io): the dmlt chart is not installed",
    )


def test_no_cluster_reachable(tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "current-context: c\n"
    )
    proc = dmlt(config, "get")
    one_line(proc, 3, "cannot reach the cluster at https://127.0.0.1:1")
