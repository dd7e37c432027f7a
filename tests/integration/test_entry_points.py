"""The original framework's entry points, with the original flags."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import REPO, cli_env, json_events

pytestmark = pytest.mark.integration


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_run_experiment_single_with_original_flags(workdir):
    proc = _run(
        "experiments/run_experiment.py",
        ["--mode", "single", "--run-name", "my_experiment", "--dataset", "breast_cancer", "--epochs", "2"],
        workdir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [e["epoch"] for e in json_events(proc.stdout) if e["event"] == "epoch"] == [1, 2]
    assert (workdir / "mlflow.db").is_file() and (
        workdir / "checkpoints" / "my_experiment" / "last.pt"
    ).is_file()


def test_run_experiment_ddp_and_hp_search_with_original_flags(workdir):
    ddp = _run(
        "experiments/run_experiment.py",
        [
            "--mode",
            "ddp",
            "--world-size",
            "2",
            "--run-name",
            "ddp_experiment",
            "--dataset",
            "breast_cancer",
            "--epochs",
            "2",
        ],
        workdir,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert sorted(e["rank"] for e in json_events(ddp.stdout) if e["event"] == "finished") == [0, 1]
    hp = _run(
        "experiments/run_experiment.py",
        ["--mode", "hp_search", "--hp-trials", "3", "--dataset", "breast_cancer", "--epochs", "2"],
        workdir,
    )
    assert hp.returncode == 0, hp.stderr[-2000:]
    assert any(e["event"] == "hp_search_finished" for e in json_events(hp.stdout))


def test_benchmark_mode_then_evaluation_report(workdir):
    bench = _run(
        "experiments/run_experiment.py",
        [
            "--mode",
            "benchmark",
            "--run-name",
            "scale_study",
            "--dataset",
            "breast_cancer",
            "--datasets",
            "breast_cancer",
            "--bench-epochs",
            "2",
            "--model-sizes",
            "32-16",
            "--world-sizes",
            "1",
        ],
        workdir,
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    report = workdir / "reports" / "benchmark_report.md"
    report.unlink()
    proc = _run("evaluation/benchmark.py", [], workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Benchmark report: scale_study" in report.read_text()
