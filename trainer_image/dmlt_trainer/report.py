"""The benchmark report: markdown tables and PNG plots from benchmark_results.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS_FILE = "benchmark_results.json"
REPORT_FILE = "benchmark_report.md"
TARGET_MARGIN = 0.005  # time-to-target counts until val AUC is within this of the best cell


def time_to_target(val_auc: list[float | None], epoch_seconds: list[float], target: float) -> float | None:
    elapsed = 0.0
    for auc, seconds in zip(val_auc, epoch_seconds, strict=False):
        elapsed += seconds
        if auc is not None and auc >= target:
            return elapsed
    return None


def scaling_efficiency(cells: list[dict[str, Any]]) -> dict[tuple[str, str, int], float]:
    """throughput(W) / (W x throughput(1)) per dataset and model."""
    base = {(c["dataset"], c["model"]): c["samples_per_sec"] for c in cells if c["world_size"] == 1}
    out = {}
    for c in cells:
        one = base.get((c["dataset"], c["model"]))
        if one:
            out[(c["dataset"], c["model"], c["world_size"])] = c["samples_per_sec"] / (c["world_size"] * one)
    return out


def _plots(cells: list[dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in cells:
        series[f"{c['dataset']} {c['model']}"].append((c["world_size"], c["samples_per_sec"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    throughput = _save_plot(
        fig,
        out_dir / "throughput_vs_world_size.png",
        "world size",
        "samples / s",
        "Throughput vs world size",
        7,
    )

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in cells:
        aucs = [a for a in c["val_auc_per_epoch"] if a is not None]
        ax.plot(
            range(1, len(aucs) + 1), aucs, marker=".", label=f"{c['dataset']} {c['model']} w{c['world_size']}"
        )
    auc = _save_plot(
        fig, out_dir / "val_auc_per_epoch.png", "epoch", "val AUC", "Validation AUC per epoch", 6
    )
    return [throughput, auc]


def _save_plot(fig, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int) -> str:
    """Label the figure's one axes, write it as PNG and close it: the file's name."""
    import matplotlib.pyplot as plt

    (ax,) = fig.axes
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def render_markdown(payload: dict[str, Any], plots: list[str]) -> str:
    cells = payload["cells"]
    eff = scaling_efficiency(cells)
    best_by_dataset: dict[str, float] = {}
    for c in cells:
        best_by_dataset[c["dataset"]] = max(best_by_dataset.get(c["dataset"], 0.0), c["best_val_auc"])
    m = payload["machine"]
    lines = [
        f"# Benchmark report: {payload['run_name']}",
        "",
        f"Created {payload['created']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"torch {m['torch']}, CUDA {'yes' if m['cuda'] else 'no'}.",
        "",
        "## Throughput and scaling",
        "",
        "| dataset | model | world size | threads/rank | samples/s | scaling efficiency | wall s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        e = eff.get((c["dataset"], c["model"], c["world_size"]))
        lines.append(
            f"| {c['dataset']} | {c['model']} | {c['world_size']} | {c['threads_per_rank']} | "
            f"{c['samples_per_sec']:,.0f} | {'' if e is None else f'{e:.2f}'} | {c['wall_seconds']:.1f} |"
        )
    lines += [
        "",
        f"Scaling efficiency is throughput(W) / (W x throughput(1)) for the same model and data. "
        f"Time to target counts training seconds until val AUC is within {TARGET_MARGIN} of the "
        "best cell on that dataset.",
        "",
        "## Quality and time to target",
        "",
        "| dataset | model | world size | epochs | best val AUC | test AUC | test F1 | test acc "
        "| time to target s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        target = best_by_dataset[c["dataset"]] - TARGET_MARGIN
        ttt = time_to_target(c["val_auc_per_epoch"], c["train_seconds_per_epoch"], target)
        lines.append(
            f"| {c['dataset']} | {c['model']} | {c['world_size']} | {c['epochs']} "
            f"| {c['best_val_auc']:.4f} | "
            f"{c['test_auc']:.4f} | {c['test_f1']:.4f} | {c['test_accuracy']:.4f} | "
            f"{'not reached' if ttt is None else f'{ttt:.1f}'} |"
        )
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(payload: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(payload["cells"], out_dir)
    path = out_dir / REPORT_FILE
    path.write_text(render_markdown(payload, plots))
    return path


def report_from_results(report_dir: str | Path = "reports") -> Path:
    """Re-render the report from a saved benchmark_results.json."""
    out_dir = Path(report_dir)
    results = out_dir / RESULTS_FILE
    if not results.is_file():
        from dmlt_trainer.errors import ConfigError

        raise ConfigError(f"no benchmark results at {results}: run `dmlt-train --mode benchmark` first")
    return write_report(json.loads(results.read_text()), out_dir)
