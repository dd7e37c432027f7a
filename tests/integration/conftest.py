"""Real servers for the integration tests: MLflow on loopback, and a throwaway PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.apiserver import run_operator, start_cluster
from tests.helpers.postgres_server import PostgresServer, PostgresUnavailable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    root: Path = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "w")
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"}
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(
                f"MLflow server did not start on {url}; log:\n{(root / 'server.log').read_text()[-3000:]}"
            )
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server (initdb + pg_ctl as a non-root user), one per test module."""
    try:
        server = PostgresServer.create()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    with server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real kube-apiserver + etcd (no kubelet) with the chart's CRDs and RBAC, per test module."""
    yield from start_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def operator(cluster):
    """The operator process against `cluster`, as the chart's ServiceAccount."""
    yield from run_operator(cluster)
