"""Benchmark mode: model sizes x world sizes x datasets, each cell a real (local) torchrun job."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from dmlt_trainer.config import RunConfig, parse_hidden_dims, replace
from dmlt_trainer.data import prepare
from dmlt_trainer.dist import default_threads
from dmlt_trainer.report import RESULTS_FILE, write_report


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": default_threads(1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }


def cell_config(cfg: RunConfig, dataset: str, size: str, world_size: int, result_file: str) -> RunConfig:
    return replace(
        cfg,
        mode="ddp",
        run_name=f"{cfg.run_name}-{dataset}-{size}-w{world_size}",
        dataset=dataset,
        hidden_dims=parse_hidden_dims(size),
        world_size=world_size,
        epochs=cfg.benchmark.bench_epochs,
        threads=max(1, default_threads(world_size)),
        resume=False,
        log_model=False,
        register_model=None,
        result_file=result_file,
    )


def run_cell(cell: RunConfig) -> dict[str, Any]:
    """One benchmark cell in fresh processes (`dmlt-train --mode ddp`), timed from outside."""
    with tempfile.TemporaryDirectory(prefix="dmlt-bench-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cell.to_dict(), sort_keys=False))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dmlt_trainer", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark cell {cell.run_name} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(Path(cell.train.result_file).read_text())
    result["wall_seconds"] = wall
    return result


def run_benchmark(cfg: RunConfig) -> Path:
    bench = cfg.benchmark
    out_dir = Path(bench.report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    for dataset in bench.datasets:
        data_cfg = replace(cfg, dataset=dataset).data
        prepare(data_cfg, cfg.train.seed)  # warm the parquet cache so no cell pays for it
        for size in bench.model_sizes:
            for world_size in bench.world_sizes:
                result_file = str(out_dir / "cells" / f"{dataset}-{size}-w{world_size}.json")
                cell = cell_config(cfg, dataset, size, int(world_size), result_file)
                print(f"benchmark: {cell.run_name} ...", file=sys.stderr, flush=True)
                result = run_cell(cell)
                history = result["history"]
                steady = [h["samples_per_sec"] for h in history[1:]] or [history[0]["samples_per_sec"]]
                cells.append(
                    {
                        "dataset": dataset,
                        "model": size,
                        "world_size": int(world_size),
                        "threads_per_rank": cell.train.threads,
                        "batch_size_per_rank": cell.train.batch_size,
                        "epochs": result["epochs_run"],
                        "samples_per_sec": sum(steady) / len(steady),
                        "train_seconds": result["train_seconds"],
                        "wall_seconds": result["wall_seconds"],
                        "best_val_auc": result["best_val_auc"],
                        "test_auc": result["test_metrics"]["auc"],
                        "test_f1": result["test_metrics"]["f1"],
                        "test_accuracy": result["test_metrics"]["accuracy"],
                        "val_auc_per_epoch": [h.get("val_auc") for h in history],
                        "train_seconds_per_epoch": [h["epoch_time_s"] for h in history],
                    }
                )
    payload = {
        "run_name": cfg.run_name,
        "machine": machine_info(),
        "cells": cells,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / RESULTS_FILE).write_text(json.dumps(payload, indent=2))
    report = write_report(payload, out_dir)
    print(f"benchmark report: {report}", file=sys.stderr)
    return report
