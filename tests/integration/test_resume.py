"""Kill a run mid-training, restart it, and land on the same final state as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.cli import cli_env, json_events, run_cli

pytestmark = pytest.mark.integration

ARGS = [
    "--dataset",
    "synthetic",
    "--n-samples",
    "8000",
    "--epochs",
    "6",
    "--hidden-dims",
    "64,32",
    "--batch-size",
    "128",
    "--threads",
    "1",
    "--seed",
    "11",
    "--no-enabled",
]


def test_killed_and_resumed_run_matches_an_uninterrupted_one(workdir):
    ref = run_cli(["--run-name", "ref", "--result-file", "ref.json", *ARGS], cwd=workdir)
    assert ref.returncode == 0, ref.stderr[-2000:]

    cmd = [
        sys.executable,
        "-m",
        "dmlt_trainer",
        "--run-name",
        "victim",
        "--result-file",
        "victim.json",
        *ARGS,
    ]
    proc = subprocess.Popen(cmd, cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, text=True)
    seen = 0
    deadline = time.time() + 300
    for line in proc.stdout:
        if '"event": "epoch"' in line:
            seen = json.loads(line)["epoch"]
            if seen == 3:
                proc.send_signal(signal.SIGKILL)
                break
        assert time.time() < deadline
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and seen == 3
    assert not (workdir / "victim.json").exists()

    resumed = run_cli(["--run-name", "victim", "--result-file", "victim.json", *ARGS], cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [e["epoch"] for e in json_events(resumed.stdout) if e["event"] == "epoch"]
    assert epochs == [4, 5, 6], "resumed after the last checkpoint, not from scratch"
    a = json.loads((workdir / "ref.json").read_text())
    b = json.loads((workdir / "victim.json").read_text())
    assert b["weights_sha256"] == a["weights_sha256"]
    assert b["final_metrics"]["val_auc"] == a["final_metrics"]["val_auc"]
    assert b["test_metrics"] == a["test_metrics"]
