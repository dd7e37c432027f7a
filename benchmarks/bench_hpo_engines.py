"""Ray Tune (TPE + ASHA) against the Optuna engine (TPE + median pruning): same search space,
same trial budget, same parallelism, measured in one run on this machine.

Usage: python benchmarks/bench_hpo_engines.py [--dataset breast_cancer] [--trials 12] [--epochs 5]
       [--parallel 2] [--seeds 3]
Writes benchmarks/results/hpo_engines.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "hpo_engines.json"


def epochs_run_optuna(storage: str, study: str) -> int:
    import optuna

    trials = optuna.load_study(study_name=study, storage=storage).trials
    return sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials)


def epochs_run_ray(workdir: Path, study: str) -> int:
    total = 0
    for result in (workdir / "checkpoints" / study / "ray" / study).glob("*/result.json"):
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        if lines:
            total += int(json.loads(lines[-1])["training_iteration"])
    return total


def one_search(engine: str, args, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"hpo-{engine}-") as tmp:
        work = Path(tmp)
        storage = f"sqlite:///{work}/optuna.db"
        cmd = [
            sys.executable,
            "-m",
            "dmlt_trainer",
            "--mode",
            "hp_search",
            "--hp-engine",
            engine,
            "--hp-trials",
            str(args.trials),
            "--parallel-trials",
            str(args.parallel),
            "--epochs",
            str(args.epochs),
            "--dataset",
            args.dataset,
            "--run-name",
            "bench",
            "--seed",
            str(seed),
            "--no-enabled",
            "--storage",
            storage,
            "--cpus-per-trial",
            "1",
            "--threads",
            "1",
            "--cache-dir",
            str(HERE / ".cache"),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
        start = time.perf_counter()
        subprocess.run(
            cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wall = time.perf_counter() - start
        best = json.loads((work / "checkpoints" / "bench" / "best_params.json").read_text())
        epochs = epochs_run_optuna(storage, "bench") if engine == "optuna" else epochs_run_ray(work, "bench")
    return {
        "seed": seed,
        "best_val_auc": best["best_value"],
        "wall_s": wall,
        "epochs_run": epochs,
        "pruned": best["trials"]["pruned"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="breast_cancer")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"optuna": [], "ray": []}
    for seed in range(args.seeds):
        for engine in ("optuna", "ray"):  # interleaved so drift hits both engines alike
            runs[engine].append(one_search(engine, args, seed))
    summary = {}
    for engine, rows in runs.items():
        aucs = [r["best_val_auc"] for r in rows]
        summary[engine] = {
            "best_val_auc_median": statistics.median(aucs),
            "best_val_auc_spread": [min(aucs), max(aucs)],
            "wall_s_median": statistics.median(r["wall_s"] for r in rows),
            "epochs_run_median": statistics.median(r["epochs_run"] for r in rows),
            "budget_epochs": args.trials * args.epochs,
        }
    payload = {
        "config": vars(args),
        "runs": runs,
        "summary": summary,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2))
    print("| engine | best val AUC (median, min–max) | wall s (median) | epochs run / budget |")
    print("|---|---|---:|---:|")
    for engine, s in summary.items():
        lo, hi = s["best_val_auc_spread"]
        print(
            f"| {engine} | {s['best_val_auc_median']:.4f} ({lo:.4f}–{hi:.4f}) | {s['wall_s_median']:.0f} | "
            f"{s['epochs_run_median']:.0f} / {s['budget_epochs']} |"
        )


if __name__ == "__main__":
    main()
