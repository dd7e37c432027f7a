"""Real processes: local torchrun ranks over gloo, and torchrun itself."""

import json

import pytest

from tests.helpers.cli import cli_env, json_events, run_cli

pytestmark = pytest.mark.integration

COMMON = [
    "--dataset",
    "synthetic",
    "--n-samples",
    "6000",
    "--epochs",
    "3",
    "--hidden-dims",
    "64,32",
    "--dropout",
    "0",
    "--no-enabled",
    "--threads",
    "1",
    "--seed",
    "7",
]


def _finished(stdout):
    return [e for e in json_events(stdout) if e["event"] == "finished"]


def test_two_gloo_ranks_end_identical_and_match_one_rank_of_the_same_global_batch(workdir):
    ddp = run_cli(
        [
            "--mode",
            "ddp",
            "--world-size",
            "2",
            "--run-name",
            "ddp2",
            "--batch-size",
            "128",
            "--result-file",
            "ddp2.json",
            *COMMON,
        ],
        cwd=workdir,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    done = _finished(ddp.stdout)
    assert sorted(e["rank"] for e in done) == [0, 1]
    assert all(e["world_size"] == 2 for e in done)
    assert done[0]["weights_sha256"] == done[1]["weights_sha256"], "ranks diverged"
    epochs = [e for e in json_events(ddp.stdout) if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3], "only rank 0 reports progress"

    single = run_cli(
        [
            "--mode",
            "single",
            "--run-name",
            "one",
            "--batch-size",
            "256",
            "--result-file",
            "one.json",
            *COMMON,
        ],
        cwd=workdir,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    two = json.loads((workdir / "ddp2.json").read_text())
    one = json.loads((workdir / "one.json").read_text())
    # Same samples per optimizer step; only BatchNorm's per-rank statistics differ.
    assert two["history"][-1]["train_loss"] == pytest.approx(one["history"][-1]["train_loss"], abs=0.02)
    assert two["best_val_auc"] == pytest.approx(one["best_val_auc"], abs=0.01)
    assert two["best_val_auc"] > 0.8


def test_runs_under_torchrun_directly(workdir):
    env = cli_env()
    proc = run_cli(
        [
            "--nproc-per-node=2",
            "--standalone",
            "--max-restarts=0",
            "-m",
            "dmlt_trainer.cli",
            "--run-name",
            "tr",
            "--batch-size",
            "128",
            *COMMON,
        ],
        cwd=workdir,
        env=env,
        module="torch.distributed.run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = _finished(proc.stdout)
    assert len(done) == 2 and len({e["weights_sha256"] for e in done}) == 1
    assert (workdir / "checkpoints" / "tr" / "last.pt").is_file()


def test_a_failing_rank_fails_the_launch_with_one_line(workdir):
    proc = run_cli(
        [
            "--mode",
            "ddp",
            "--world-size",
            "2",
            "--run-name",
            "bad",
            "--dataset",
            "covertype",
            "--data-path",
            "missing.parquet",
            "--no-enabled",
        ],
        cwd=workdir,
    )
    assert proc.returncode != 0
    assert "covertype data not found at missing.parquet" in proc.stderr
