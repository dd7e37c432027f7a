"""Benchmark mode end to end on a tiny matrix: report, results and plots."""

import json

import pytest

from tests.helpers.cli import run_cli

pytestmark = pytest.mark.integration


def test_benchmark_writes_report_tables_and_plots(workdir):
    proc = run_cli(
        [
            "--mode",
            "benchmark",
            "--run-name",
            "scale",
            "--dataset",
            "synthetic",
            "--n-samples",
            "3000",
            "--bench-epochs",
            "2",
            "--model-sizes",
            "32-16",
            "--world-sizes",
            "1,2",
            "--no-enabled",
            "--batch-size",
            "256",
        ],
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = workdir / "reports"
    text = (reports / "benchmark_report.md").read_text()
    assert "## Throughput and scaling" in text and "| synthetic | 32-16 | 2 |" in text
    for png in ("throughput_vs_world_size.png", "val_auc_per_epoch.png"):
        assert (reports / png).stat().st_size > 1000
    cells = json.loads((reports / "benchmark_results.json").read_text())["cells"]
    assert [c["world_size"] for c in cells] == [1, 2]
    assert all(c["samples_per_sec"] > 0 and len(c["val_auc_per_epoch"]) == 2 for c in cells)
