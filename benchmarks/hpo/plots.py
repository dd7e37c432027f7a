"""The benchmark's PNG figures (matplotlib, Agg): one file per figure, one panel per dataset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.hpo import summary as sm

COLORS = {sm.TPE: "tab:blue", sm.RANDOM: "tab:orange", sm.GRID: "tab:green"}
LABELS = {sm.TPE: "TPE", sm.RANDOM: "random", sm.GRID: "grid (GridSampler order)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _side_by_side(plt, payload: dict[str, Any], width: float, height: float) -> tuple[Any, list]:
    """A figure with one panel per dataset, side by side: (figure, [(axes, dataset name)])."""
    names = list(payload["summary"])
    fig, axes = plt.subplots(1, len(names), figsize=(width * len(names), height), squeeze=False)
    return fig, list(zip(axes[0], names, strict=True))


def _save(plt, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(values: list[float]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def search_curves(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    names = list(payload["summary"])
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        s = payload["summary"][name]
        curves, default = s["curves"], payload["datasets"][name]["default"]["value"]
        for arm, data in curves["arms"].items():
            color = COLORS[arm]
            for col, (key, xs) in enumerate(
                (
                    ("by_trials", list(range(1, len(data["by_trials"]["median"]) + 1))),
                    ("by_time", curves["times_s"]),
                )
            ):
                ax = axes[row][col]
                b = {k: _clean(v) for k, v in data[key].items()}
                # Only where every seed has finished a trial: before that the median is of fewer seeds.
                seeds = max(b["n"]) if b["n"] else 0
                b = {
                    k: [x if n == seeds else math.nan for x, n in zip(v, b["n"], strict=True)]
                    for k, v in b.items()
                }
                ax.fill_between(
                    xs, b["min"], b["max"], color=color, alpha=0.12, step="post" if col == 0 else None
                )
                ax.fill_between(
                    xs, b["q1"], b["q3"], color=color, alpha=0.25, step="post" if col == 0 else None
                )
                ax.step(xs, b["median"], where="post", color=color, label=LABELS[arm])
        for col, xlabel in enumerate(("trials", "wall time, s (1 trial at a time)")):
            ax = axes[row][col]
            ax.axhline(default, color="grey", ls=":", lw=1, label="default config")
            ax.axhline(s["best_known_val_auc"], color="black", ls="--", lw=0.8, label="best known")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("best val AUC so far")
            ax.set_title(
                f"{name}: median, IQR (dark), min–max (light) over {payload['settings']['seeds']} seeds"
            )
            # From the worst seed after the 5th trial (TPE's start-up) up: the part where arms differ.
            at = min(4, len(curves["arms"][sm.TPE]["by_trials"]["min"]) - 1)
            lo = min(
                [default] + [_as_float(curves["arms"][a]["by_trials"]["min"][at]) for a in curves["arms"]]
            )
            top = s["best_known_val_auc"]
            ax.set_ylim(lo - 0.1 * (top - lo), top + 0.05 * (top - lo))
            ax.grid(alpha=0.3)
        axes[row][0].legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)


def _as_float(value: Any) -> float:
    return math.inf if value == "inf" else float(value)


def time_to_target(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, panels = _side_by_side(plt, payload, 6.5, 3.6)
    for ax, name in panels:
        ttt = payload["summary"][name]["time_to_target"]
        arms = (
            ("grid, 1 at a time", ttt["grid_s"], "tab:green"),
            ("TPE + pruning, 2 at a time", ttt["tuned_s"], "tab:blue"),
        )
        finite = [_as_float(v) for _, d, _ in arms for v in d.values() if math.isfinite(_as_float(v))]
        cap = max(finite + [ttt["grid_exhaustive_s"]]) * 1.6
        for y, (_, per_seed, color) in enumerate(arms):
            xs = [_as_float(v) for v in per_seed.values()]
            shown = [x if math.isfinite(x) else cap for x in xs]
            ax.scatter(shown, [y] * len(xs), color=color, s=40, zorder=3)
            for x, sx in zip(xs, shown, strict=True):
                if not math.isfinite(x):
                    ax.annotate(
                        "not reached",
                        (sx, y),
                        textcoords="offset points",
                        xytext=(0, 8),
                        ha="center",
                        fontsize=7,
                    )
            med = _as_float(ttt["grid" if y == 0 else "tuned"]["median"])
            if math.isfinite(med):
                ax.plot([med, med], [y - 0.25, y + 0.25], color="black", lw=2)
        expected = _as_float(ttt["grid_expected_s"])
        if math.isfinite(expected):
            ax.scatter([expected], [0], marker="D", facecolor="none", edgecolor="black", s=70, zorder=4)
            ax.annotate(
                "mean over all orders",
                (expected, 0),
                textcoords="offset points",
                xytext=(0, -16),
                ha="center",
                fontsize=7,
            )
        ax.axvline(ttt["grid_exhaustive_s"], color="grey", ls=":", lw=1)
        ax.text(ttt["grid_exhaustive_s"], 1.4, " whole grid", fontsize=7, color="grey")
        ax.set_xscale("log")
        ax.set_yticks([0, 1], [a[0] for a in arms])
        ax.set_ylim(-0.6, 1.7)
        ax.set_xlabel("wall time to a config within %.1f pt of the best known, s (log)" % (100 * ttt["gap"]))
        ax.set_title(f"{name}: one dot per seed, bar = median")
        ax.grid(alpha=0.3, axis="x")
    _save(plt, fig, path)


def pruning(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    fig, panels = _side_by_side(plt, payload, 7, 6.2)
    markers = {sm.TPE_PRUNED: ("o", "tab:blue"), sm.TPE_ALT: ("s", "tab:red")}
    cmap = plt.get_cmap("tab10")
    for ax, name in panels:
        s = payload["summary"][name]
        costs = [r["auc_cost_points"] for p in s["pruning"].values() for r in p["rows"]]
        costs += [p["auc_cost_points"]["median"] for p in s.get("pruning_replay", {}).values()]
        lo, hi = min(costs + [-0.05]) - 0.05, max(costs + [0.25]) + 0.05
        ax.add_patch(Rectangle((40, lo), 60, 0.2 - lo, color="tab:green", alpha=0.08, label="target region"))
        for arm, data in s["pruning"].items():
            marker, color = markers[arm]
            spec = payload["settings"]["pruner" if arm == sm.TPE_PRUNED else "alt_pruner"]
            xs = [100 * r["saved"] for r in data["rows"]]
            ys = [r["auc_cost_points"] for r in data["rows"]]
            ax.scatter(xs, ys, marker=marker, color=color, alpha=0.5, label=f"measured {spec}: per seed")
            med = (100 * data["saved"]["median"], data["auc_cost_points"]["median"])
            ax.scatter(*med, marker="X", color=color, s=130, edgecolor="black", zorder=4, label="  … median")
        for i, (spec, data) in enumerate(s.get("pruning_replay", {}).items()):
            x, y = 100 * data["saved"]["median"], data["auc_cost_points"]["median"]
            ax.scatter(
                x,
                y,
                marker="D",
                facecolor="none",
                edgecolor=cmap(i % 10),
                s=45,
                lw=1.5,
                label=f"replayed {spec}",
            )
        ax.set_xlim(0, 100)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("epochs saved vs TPE without pruning, %")
        ax.set_ylabel("best val AUC lost, points (negative = gained)")
        ax.set_title(f"{name}: measured arms and replayed pruners (medians over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    _save(plt, fig, path)


def parallelism(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, panels = _side_by_side(plt, payload, 6, 3.8)
    for ax, name in panels:
        rows = payload["summary"][name]["parallelism"]["rows"]
        seeds = [r["seed"] for r in rows]
        width = 0.38
        ax.bar([s - width / 2 for s in seeds], [r["wall_1"] for r in rows], width, label="1 trial at a time")
        ax.bar([s + width / 2 for s in seeds], [r["wall_2"] for r in rows], width, label="2 at a time")
        for r in rows:
            ax.text(
                r["seed"],
                max(r["wall_1"], r["wall_2"]),
                f"{r['speedup']:.2f}x",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(seeds)
        ax.set_xlabel("seed")
        ax.set_ylabel("search wall time, s")
        ax.set_title(f"{name}: TPE + pruning, {payload['settings']['trials']} trials, 1 thread each")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    _save(plt, fig, path)


def tuned_vs_default(payload: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, panels = _side_by_side(plt, payload, 5.5, 3.8)
    for ax, name in panels:
        t = payload["summary"][name]["tuned_vs_default"]
        for i, split in enumerate(("val", "test")):
            tuned = t[f"tuned_{split}_auc"]
            ax.scatter(
                [i - 0.12],
                [t[f"default_{split}_auc"]],
                color="grey",
                marker="s",
                s=60,
                label="default (trained once)" if i == 0 else None,
            )
            per_seed = [r[f"{split}_auc"] for r in t["rows"]]
            ax.scatter(
                [i + 0.12] * len(per_seed),
                per_seed,
                color="tab:blue",
                s=18,
                alpha=0.6,
                label="tuned, per seed" if i == 0 else None,
            )
            ax.errorbar(
                [i + 0.12],
                [tuned["median"]],
                yerr=[[tuned["median"] - tuned["min"]], [tuned["max"] - tuned["median"]]],
                fmt="_",
                color="black",
                capsize=5,
                markersize=14,
                label="tuned: median, min–max" if i == 0 else None,
            )
        ax.axhline(t["best_known_val_auc"], color="black", ls="--", lw=0.8, label="best known val AUC")
        ax.set_xlim(-0.6, 1.6)
        ax.set_xticks([0, 1], ["val AUC (selected on)", "test AUC (held out)"])
        ax.set_title(f"{name}: default vs tuned (TPE best of {payload['settings']['trials']})")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3, axis="y")
    _save(plt, fig, path)


FIGURES = {
    "hpo_search_curves.png": search_curves,
    "hpo_time_to_target.png": time_to_target,
    "hpo_pruning.png": pruning,
    "hpo_parallelism.png": parallelism,
    "hpo_tuned_vs_default.png": tuned_vs_default,
}


def draw_all(payload: dict[str, Any], out_dir: Path) -> list[str]:
    """Every figure as out_dir/<name>.png; payload as written to JSON (INF as "inf")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        draw(payload, out_dir / name)
    return list(FIGURES)
