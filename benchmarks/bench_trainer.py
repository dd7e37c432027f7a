"""Trainer benchmarks, each figure a ratio against a baseline measured in the same run.

1. loop:   dmlt's single-process training throughput vs a minimal hand-written PyTorch loop
           (same model, AdamW, OneCycleLR, clipping, pre-made tensors), synthetic, batch 1024.
2. ddp:    world_size=2 (1 thread per rank) vs two independent, non-communicating processes
           running the same loop at the same time (what the hardware allows), per DDP option.
3. memory: peak RSS of a default single-process synthetic_large run.

Usage: python benchmarks/bench_trainer.py [loop|ddp|memory|all] [--repeats N]
Writes benchmarks/results/trainer.json (and prints a markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "trainer.json"
N_SAMPLES = 100_000
EPOCHS = 3  # the first epoch is warm-up; samples/s is the median of the rest


# ---- workers (run in child processes) -------------------------------------------------------
def _data(seed: int = 0):
    from dmlt_trainer.config import DataConfig
    from dmlt_trainer.data import prepare

    return prepare(DataConfig(dataset="synthetic", cache_dir=str(HERE / ".cache")), seed)


def worker_baseline(threads: int, rows: int | None, epochs: int, sync: str = "none") -> dict:
    """The ceiling: the same maths with nothing around it. With `sync`, one of two ranks
    (RANK, WORLD_SIZE, MASTER_ADDR/PORT from the environment, gloo) that after every backward
    either only wait for each other ("lockstep": a 1-element all-reduce) or also average their
    gradients by hand ("grads": one all-reduce of all of them, flattened) - no DDP."""
    import torch
    from dmlt_trainer.model import TabularNet
    from torch import nn

    torch.set_num_threads(threads)
    if sync != "none":
        import torch.distributed as dist

        dist.init_process_group("gloo")
    data = _data()
    x = torch.from_numpy(data.x_train[:rows] if rows else data.x_train)
    y = torch.from_numpy(data.y_train[:rows] if rows else data.y_train)
    torch.manual_seed(0)
    model = TabularNet(x.shape[1], [512, 256, 128], 0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 1024
    steps = (len(y) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    loss_fn = nn.BCEWithLogitsLoss()
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        xs, ys = x[perm], y[perm]
        model.train()
        start = time.perf_counter()
        for i in range(0, len(y), batch):
            xb, yb = xs[i : i + batch], ys[i : i + batch]
            if len(yb) < 2:
                continue
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sync == "lockstep":
                dist.all_reduce(torch.zeros(1))
            elif sync == "grads":
                grads = [p.grad for p in model.parameters()]
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                pieces = flat.div_(2).split([g.numel() for g in grads])
                torch._foreach_copy_(grads, [f.view_as(g) for f, g in zip(pieces, grads, strict=True)])
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        rates.append(len(y) / (time.perf_counter() - start))
        if sync != "none":
            dist.barrier()
    return {"samples_per_sec": statistics.median(rates[1:])}


def worker_dmlt(threads: int, epochs: int) -> dict:
    """dmlt's Trainer in single mode, tracking off (the throughput of its training loop)."""
    import torch
    from dmlt_trainer.config import build_config
    from dmlt_trainer.dist import DistContext
    from dmlt_trainer.train import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(
            overrides={
                "epochs": epochs,
                "batch_size": 1024,
                "enabled": False,
                "checkpoint_dir": tmp,
                "cache_dir": str(HERE / ".cache"),
                "run_name": "bench",
                "threads": threads,
            }
        )
        result = Trainer(cfg, DistContext(), _data(), show_progress=False).fit()
    rates = [h["samples_per_sec"] for h in result.history]
    return {"samples_per_sec": statistics.median(rates[1:])}


def _child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": args[1] if args[0] in ("baseline", "dmlt") else "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- benchmarks --------------------------------------------------------------------------
def bench_loop(repeats: int) -> dict:
    pairs = []
    for _ in range(repeats):  # A B A B: drift on a shared machine hits both sides alike
        base = _child("baseline", "2", "0", str(EPOCHS))["samples_per_sec"]
        ours = _child("dmlt", "2", str(EPOCHS))["samples_per_sec"]
        pairs.append({"baseline": base, "dmlt": ours, "ratio": ours / base})
    return {"pairs": pairs, "ratio_median": statistics.median(p["ratio"] for p in pairs), "target": ">= 0.95"}


DDP_VARIANTS = {
    "plain DDP (defaults)": [
        "--bucket-cap-mb",
        "25",
        "--no-gradient-as-bucket-view",
        "--no-static-graph",
        "--broadcast-buffers",
    ],
    "+ gradient_as_bucket_view": [
        "--bucket-cap-mb",
        "25",
        "--gradient-as-bucket-view",
        "--no-static-graph",
        "--broadcast-buffers",
    ],
    "+ static_graph": [
        "--bucket-cap-mb",
        "25",
        "--gradient-as-bucket-view",
        "--static-graph",
        "--broadcast-buffers",
    ],
    "+ buffers synced per epoch, not per step (dmlt default)": [],
    "+ fp16 compression hook": ["--comm-hook", "fp16"],
}
DMLT_DEFAULT = "+ buffers synced per epoch, not per step (dmlt default)"
HAND_WRITTEN = {
    "bound: hand-written loop, ranks in lock-step (1-float all-reduce per step)": "lockstep",
    "bound: hand-written loop + one flat gradient all-reduce per step (no DDP)": "grads",
}


def _independent_pair(rows: int, sync: str = "none") -> float:
    """Two 1-thread processes of the hand-written loop at once; their summed samples/s. With
    `sync` they are two ranks of one gloo group (see worker_baseline), and in lock-step the pair
    runs at the slower one's pace."""
    cmd = [sys.executable, __file__, "--worker", "baseline", "1", str(rows), str(EPOCHS), sync]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = "29517"
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**env, "RANK": str(rank)})
        for rank in range(2)
    ]
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["samples_per_sec"] for p in procs]
    return sum(rates) if sync == "none" else 2 * min(rates)


def _ddp_run(extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        cmd = [
            sys.executable,
            "-m",
            "dmlt_trainer",
            "--mode",
            "ddp",
            "--world-size",
            "2",
            "--threads",
            "1",
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            "1024",
            "--no-enabled",
            "--run-name",
            "ddpbench",
            "--checkpoint-dir",
            tmp,
            "--cache-dir",
            str(HERE / ".cache"),
            "--result-file",
            str(result),
            *extra,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        history = json.loads(result.read_text())["history"]
    return statistics.median(h["samples_per_sec"] for h in history[1:])


def bench_ddp(repeats: int) -> dict:
    rows = _data().x_train.shape[0] // 2  # each independent process takes one rank's share
    pairs: dict[str, list[dict]] = {name: [] for name in [*DDP_VARIANTS, *HAND_WRITTEN]}
    for _ in range(repeats):  # variants interleaved: the machine's drift hits every one alike
        for name, extra in DDP_VARIANTS.items():
            independent = _independent_pair(rows)
            ddp = _ddp_run(extra)
            pairs[name].append({"independent": independent, "ddp": ddp, "ratio": ddp / independent})
        # Where the rest goes, without DDP or dmlt: the same hand-written loop as two ranks that
        # only wait for each other once a step, then that also average their gradients by hand.
        independent = _independent_pair(rows)
        for name, sync in HAND_WRITTEN.items():
            synced = _independent_pair(rows, sync)
            pairs[name].append({"independent": independent, "ddp": synced, "ratio": synced / independent})
    variants = {
        name: {
            "flags": DDP_VARIANTS.get(name, [f"hand-written loop, sync={HAND_WRITTEN.get(name)}"]),
            "pairs": runs,
            "ratio_median": statistics.median(p["ratio"] for p in runs),
        }
        for name, runs in pairs.items()
    }
    return {"variants": variants, "ratio_median": variants[DMLT_DEFAULT]["ratio_median"], "target": ">= 0.85"}


def bench_memory() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "dmlt_trainer",
            "--dataset",
            "synthetic_large",
            "--epochs",
            "1",
            "--run-name",
            "mem",
            "--checkpoint-dir",
            tmp,
            "--cache-dir",
            tmp,
            "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--no-log-model",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb >= before
    peak_gb = peak_kb / 1024 / 1024
    return {
        "peak_rss_gb": peak_gb,
        "limit_gb": 1.5,
        "ratio_to_limit": peak_gb / 1.5,
        "note": "cold cache: generate 500Kx100, split, scale, write parquet, 1 epoch, MLflow on",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all", choices=["loop", "ddp", "memory", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "baseline":
            rows = int(rest[1]) or None
            sync = rest[3] if len(rest) > 3 else "none"
            print(json.dumps(worker_baseline(int(rest[0]), rows, int(rest[2]), sync)))
        else:
            print(json.dumps(worker_dmlt(int(rest[0]), int(rest[1]))))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    _data()  # build the parquet cache once, outside any timing
    if args.what in ("loop", "all"):
        results["loop"] = bench_loop(args.repeats)
    if args.what in ("ddp", "all"):
        results["ddp"] = bench_ddp(args.repeats)
    if args.what in ("memory", "all"):
        results["memory"] = bench_memory()
    results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["cores"] = len(os.sched_getaffinity(0))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
