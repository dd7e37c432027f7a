"""The `dmlt` command on a real cluster (KUBECONFIG), as a user types it.

The chart (with its PostgreSQL, for studies) is installed into a fresh namespace under its own
release name, serving only that namespace; then:

- `dmlt train --replicas 2 …` follows the job to Succeeded (plain lines: stdout is a pipe) and
  ends with the final metrics, the MLflow run's URL (the run the job's status names, present on
  the in-cluster server) and the model URI; exit code 0;
- `dmlt logs -f` prints both ranks' lines with their prefix, keeps following when a rank Pod is
  deleted mid-run (the gang restarts: a marker line, then both ranks of attempt 1), and returns
  by itself when the job ends;
- `dmlt tune` runs a small study to Succeeded and names the best trial the study's status names;
- `dmlt wait --timeout` gives up on time with exit code 124, and succeeds once the condition holds;
  `get -o json`, `describe` and `delete` work on the same job.

Trainer settings are small (breast_cancer-sized synthetic data, 1 thread per rank) so each job
takes a few minutes on two shared cores; DMLT_E2E_CLI_TIMEOUT (s) bounds each command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.helpers.chart import Dmlt, installed_chart, release_fullname
from tests.helpers.cli import cli_env
from tests.helpers.jobs import JobPoller, phase_is, pods_by_rank, running_at_epoch
from tests.helpers.mlflow import mlflow_get
from tests.helpers.names import GROUP, VERSION
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

RELEASE = "dmlt-cli"
TIMEOUT = float(os.environ.get("DMLT_E2E_CLI_TIMEOUT", "1200"))
IMAGE = os.environ.get("DMLT_TRAINER_IMAGE", "dmlt-trainer:dev")
CLUSTER = ["--image", IMAGE, "--cpu", "250m", "--memory", "1536Mi"]
SMALL = [
    "--dataset",
    "synthetic",
    "--n-samples",
    "20000",
    "--batch-size",
    "256",
    "--hidden-dims",
    "32,16",
    "--threads",
    "1",
]
# ~8-10 s per epoch here: long enough to act mid-training (see test_trainingjob.py).
SLOW = [
    "--dataset",
    "synthetic",
    "--n-samples",
    "100000",
    "--batch-size",
    "64",
    "--hidden-dims",
    "64,32",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def dmlt(api_client: client.ApiClient, namespace: str) -> Iterator[Dmlt]:
    # A 3 s study reconcile instead of 5 s, so the tune test's trials follow each other quickly.
    values = {"operator": {"studyReconcileIntervalSeconds": 3}}
    with installed_chart(api_client, namespace, release=RELEASE, values=values) as installed:
        yield installed
        subprocess.run(
            [sys.executable, "-m", "dmlt.cli", "delete", "ts", "cli-tune", "-n", namespace],
            env=cli_env(),
            capture_output=True,
            check=False,
            timeout=60,
        )


def cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`dmlt ARGS` as a user runs it (stdout a pipe: plain lines)."""
    return subprocess.run(
        [sys.executable, "-m", "dmlt.cli", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_train_follows_to_succeeded_and_prints_the_run_url(dmlt):
    ns = dmlt.namespace
    out = ok(
        cli("train", "-n", ns, "--name", "cli-train", "--replicas", "2", *CLUSTER, *SMALL, "--epochs", "3")
    )
    lines = out.splitlines()
    assert lines[0] == f"trainingjob.dmlt.io/cli-train created in namespace {ns}"
    assert any(re.match(r"cli-train: Running ready=2/2 epoch=\d/3", line) for line in lines), out
    assert f"TrainingJob {ns}/cli-train Succeeded: completed, 3/3 epochs, world size 2, 0 restart(s)" in out
    metrics = next(line for line in lines if line.startswith("final metrics: "))
    assert re.search(r"val_auc=0\.\d{4}", metrics) and "test_auc=" in metrics, metrics
    run_id = dmlt.get_job("cli-train")["status"]["mlflowRunId"]
    url = re.search(r"^MLflow run: (http://\S+)$", out, re.M)
    assert url, out
    service = f"{release_fullname(RELEASE)}-mlflow"
    assert re.fullmatch(
        rf"http://{service}\.{ns}\.svc[.a-z]*:5000/#/experiments/\d+/runs/{run_id}", url.group(1)
    )
    assert re.search(r"^model: models:/m-[0-9a-f]+$", out, re.M), out
    run = mlflow_get(dmlt, "api/2.0/mlflow/runs/get", {"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED"


def test_logs_follow_both_ranks_across_a_gang_restart(dmlt, tmp_path):
    ns = dmlt.namespace
    ok(
        cli(
            "train",
            "-n",
            ns,
            "--name",
            "cli-logs",
            "--replicas",
            "2",
            "--detach",
            *CLUSTER,
            *SLOW,
            "--epochs",
            "4",
        )
    )
    log_file = tmp_path / "logs.txt"
    with open(log_file, "w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "dmlt.cli", "logs", "-f", "tj/cli-logs", "-n", ns],
            env=cli_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            poller = JobPoller(dmlt, "cli-logs")
            poller.until(running_at_epoch(1), TIMEOUT, "rank 0's first epoch")
            victim = pods_by_rank(dmlt.pods("cli-logs"))[1]
            dmlt.core.delete_namespaced_pod(victim.metadata.name, ns, grace_period_seconds=0)
            job = poller.until(phase_is("Succeeded"), TIMEOUT, "Succeeded after the gang restart")
            assert job["status"]["restarts"] == 1
            follower.wait(timeout=120)  # -f ends by itself once the job has ended
        finally:
            if follower.poll() is None:
                follower.kill()
    text = log_file.read_text()
    assert follower.returncode == 0, text
    before, marker, after = text.partition("[dmlt] --- gang restart: attempt 1 ---")
    assert marker, f"no gang restart marker in:\n{text[-3000:]}"
    # Only rank 0 prints while training (epoch lines); rank 1's first line is its `finished`
    # event, so the first attempt shows rank 0 and the second attempt both ranks' ends.
    assert "[rank 0] " in before
    finished = [
        json.loads(line.split("] ", 1)[1]) for line in after.splitlines() if '"event": "finished"' in line
    ]
    assert sorted(e["rank"] for e in finished) == [0, 1] and {e["world_size"] for e in finished} == {2}
    assert re.search(r'^\[rank 0\] \{"epoch": 4, "epochs": 4, "event": "epoch"', after, re.M), after[-3000:]


def test_tune_finishes_with_the_best_trial(dmlt):
    ns = dmlt.namespace
    out = ok(
        cli(
            "tune",
            "-n",
            ns,
            "--name",
            "cli-tune",
            *CLUSTER,
            *SMALL,
            "--epochs",
            "2",
            "--no-log-model",
            "--hp-trials",
            "3",
            "--pruner",
            "none",
            "--param",
            "lr=float:1e-3:3e-2:log",
            "--param",
            "hiddenDims=choice:16,32-16",
        )
    )
    assert f"TuningStudy {ns}/cli-tune Succeeded: trials 3/3" in out
    table = out[out.index("TRIAL ") :].splitlines()
    assert table[0].split() == ["TRIAL", "STATE", "VAL_AUC", "EPOCHS", "PARAMS"]
    assert sorted(row.split()[0] for row in table[1:4]) == ["0", "1", "2"]
    best = dmlt.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "tuningstudies", "cli-tune")
    number = best["status"]["bestTrial"]["number"]
    assert re.search(rf"^best trial {number}: val_auc=0\.\d{{4}} \(", out, re.M), out
    assert "MLflow run: http://" in out


def test_wait_times_out_then_succeeds_get_describe_delete(dmlt):
    ns = dmlt.namespace
    ok(cli("train", "-n", ns, "--name", "cli-wait", "--detach", *CLUSTER, *SLOW, "--epochs", "30"))
    started = time.monotonic()
    proc = cli("wait", "tj/cli-wait", "-n", ns, "--for", "Succeeded", "--timeout", "5s")
    elapsed = time.monotonic() - started
    assert proc.returncode == 124, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"dmlt: error: timed out after 5 s waiting for TrainingJob {ns}/cli-wait")
    assert proc.stderr.count("\n") == 1 and 5 <= elapsed < 60, (elapsed, proc.stderr)
    assert ok(cli("wait", "cli-wait", "-n", ns, "--for", "Running", "--timeout", "10m")) == (
        "trainingjob.dmlt.io/cli-wait Running\n"
    )
    got = json.loads(ok(cli("get", "tj", "cli-wait", "-n", ns, "-o", "json")))
    assert got["metadata"]["name"] == "cli-wait" and got["status"]["phase"] == "Running"
    assert "Phase:       Running" in ok(cli("describe", "cli-wait", "-n", ns))
    assert ok(cli("delete", "tj", "cli-wait", "-n", ns)) == "trainingjob.dmlt.io/cli-wait deleted\n"
    wait_for(lambda: dmlt.get_job("cli-wait") is None, 120, "cli-wait to be gone")
