"""`dmlt train --local` and `dmlt tune --local`: the same specs as on a cluster, run here through
dmlt-train (real processes, real local ranks, MLflow's and Optuna's embedded SQLite stores),
in a pipe (plain lines) and on a real terminal (tmux; the screen is read back)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.cli import cli_env

pytestmark = pytest.mark.integration

SMALL = [
    "--dataset",
    "breast_cancer",
    "--epochs",
    "3",
    "--batch-size",
    "64",
    "--hidden-dims",
    "32,16",
    "--threads",
    "1",
]
ANSI = re.compile(r"\x1b\[")


def dmlt(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dmlt.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_local_in_a_pipe(tmp_path):
    proc = dmlt(["train", "--local", "--name", "bc", *SMALL], tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    assert not ANSI.search(out), "a pipe gets plain lines, no terminal escapes"
    lines = out.splitlines()
    assert lines[0].startswith("bc: Running") and any("epoch=3/3" in line for line in lines)
    assert "TrainingJob local/bc Succeeded: completed, 3/3 epochs, world size 1, 0 restart(s)" in out
    metrics = next(line for line in lines if line.startswith("final metrics: "))
    assert re.search(r"val_auc=0\.9\d+", metrics) and "test_auc=" in metrics
    run_line = next(line for line in lines if line.startswith("MLflow run: "))
    assert f"on sqlite:///{tmp_path}/mlflow.db" in run_line
    assert re.search(r"^model: models:/m-[0-9a-f]+$", out, re.M)
    # The run went through dmlt-train with the spec's flags: its checkpoint and summary are here.
    assert (tmp_path / "checkpoints" / "bc" / "last.pt").is_file()
    assert (tmp_path / ".dmlt/runs/bc/result.json").is_file()


def test_train_local_ranks_and_a_failing_run(tmp_path):
    proc = dmlt(["train", "--local", "--name", "two", "--replicas", "2", *SMALL, "--no-log-model"], tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "world size 2" in proc.stdout
    log = (tmp_path / ".dmlt/runs/two/output.log").read_text()
    assert log.count('"event": "finished"') == 2 and '"world_size": 2' in log  # two real ranks
    bad = dmlt(
        [
            "train",
            "--local",
            "--name",
            "bad",
            "--dataset",
            "file",
            "--data-path",
            "missing.parquet",
            "--target",
            "y",
            "--no-enabled",
        ],
        tmp_path,
    )
    assert bad.returncode == 1, bad.stdout
    assert (
        "TrainingJob local/bad Failed" in bad.stdout
        and "reason: exit code 2: dmlt-train: error:" in bad.stdout
    )


def test_python_client_local(tmp_path, monkeypatch):
    from dmlt import Client, LocalJob

    monkeypatch.chdir(tmp_path)
    for key, value in cli_env().items():
        monkeypatch.setenv(key, value)
    job = Client().train(
        {"dataset": "breast_cancer", "epochs": 2, "batch_size": 64},
        hidden_dims=[16],
        threads=1,
        log_model=False,
        name="nb",
        local=True,
    )
    assert isinstance(job, LocalJob)
    state = job.wait(timeout=600)
    assert state.phase == "Succeeded" and state.epoch == 2
    assert 0.5 < job.metrics()["test_auc"] <= 1.0
    run = job.mlflow_run()
    assert run is not None and run.metrics["val_auc"] == pytest.approx(state.metrics["val_auc"])
    assert run.params["train.epochs"] == "2"


def test_tune_local(tmp_path):
    proc = dmlt(
        [
            "tune",
            "--local",
            "--name",
            "st",
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
            "dropout=choice:0.0,0.2",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    assert "local study st on sqlite:///optuna.db" in proc.stderr
    assert "TuningStudy local/st Succeeded: trials 3/3 (0 pruned, 0 failed)" in out
    table = out[out.index("TRIAL") :].splitlines()
    assert table[0].split() == ["TRIAL", "STATE", "VAL_AUC", "EPOCHS", "PARAMS"]
    assert [row.split()[:2] for row in table[1:4]] == [
        ["0", "Completed"],
        ["1", "Completed"],
        ["2", "Completed"],
    ]
    best = re.search(r"^best trial (\d): val_auc=(0\.\d+)", out, re.M)
    assert best, out
    values = {row.split()[0]: row.split()[2] for row in table[1:4]}
    assert max(values.values()) == best.group(2)[: len(max(values.values()))]
    import optuna

    study = optuna.load_study(study_name="local.st", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.best_trial.number == int(best.group(1))


def test_live_view_on_a_terminal(tmp_path):
    tmux = shutil.which("tmux")
    assert tmux, "needs tmux (apt-get install tmux) to test the live view on a real terminal"
    session = f"dmlt-tty-{uuid.uuid4().hex[:8]}"  # unique: another run may share the tmux server
    env = " ".join(
        f"{k}={v!s}" for k, v in cli_env().items() if k.startswith(("PYTHON", "MLFLOW", "OMP", "DO_"))
    )
    command = (
        f"cd {tmp_path} && env {env} {sys.executable} -m dmlt.cli train --local --name tty {' '.join(SMALL)}"
    )
    command += " --no-log-model; echo EXIT=$?; sleep 600"
    started = subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode == 0, f"tmux new-session failed: {started.stderr}"
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True
            ).stdout
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.5)
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
    final = screens[-1]
    assert "EXIT=0" in final, final
    live = [s for s in screens if "TrainingJob local/tty" in s and "Running" in s]
    assert live, "the live view never showed the running job:\n" + "\n---\n".join(screens[-5:])
    with_bar = [s for s in live if re.search(r"epoch [1-3]/3 .*━.* \d+%", s)]
    assert with_bar, "no progress bar seen:\n" + live[-1]
    assert any(re.search(r"val_auc 0\.\d{4}", s) for s in with_bar)
    # The view redraws in place: the last screen holds one view, Succeeded, then the summary.
    assert final.count("TrainingJob local/tty") == 2 and "Succeeded" in final
    assert "TrainingJob local/tty Succeeded: completed, 3/3 epochs" in final
    assert "[rank" not in final and "bc: Running" not in final
