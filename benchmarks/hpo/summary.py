"""From the raw runs of one dataset to the five figures of issue 6 (pure: dicts in, dicts out)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from benchmarks.hpo import analysis as an

# The arms every seed runs (run.ARMS builds them); names are the keys of a dataset's "runs".
RANDOM, TPE, TPE_PRUNED, TPE_PARALLEL, TPE_ALT = (
    "random",
    "tpe",
    "tpe_pruned",
    "tpe_pruned_par2",
    "tpe_alt_pruned",
)
GRID = "grid"
TIME_POINTS = 120


def best_value(run: dict[str, Any]) -> float:
    values = [t["value"] for t in run["trials"] if t["value"] is not None]
    return max(values) if values else math.nan


def best_trial(run: dict[str, Any]) -> dict[str, Any] | None:
    done = [t for t in run["trials"] if t["value"] is not None]
    return max(done, key=lambda t: t["value"]) if done else None


def grid_runs(grid: list[dict[str, Any]], orders: dict[int, list[int]]) -> dict[int, dict[str, Any]]:
    """The grid as GridSampler(seed) would run it one trial at a time: the exhaustive run's value
    and seconds of each configuration (orders: indices into grid), in that seed's order."""
    out = {}
    for seed, order in orders.items():
        rows = [grid[i] for i in order]
        trials = an.sequential_trials([r["value"] for r in rows], [r["seconds"] for r in rows])
        for trial, row in zip(trials, rows, strict=True):
            trial["epochs_run"] = row["epochs_run"]
        out[seed] = {"wall_s": trials[-1]["t_end"] if trials else 0.0, "trials": trials}
    return out


def known_values(dataset: dict[str, Any], exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every completed configuration trained on this dataset: value, where it ran, its params."""
    out = [{"value": g["value"], "arm": GRID, "seed": None, "params": g["params"]} for g in dataset["grid"]]
    out.append({"value": dataset["default"]["value"], "arm": "default", "seed": None, "params": {}})
    for arm, runs in dataset["runs"].items():
        if arm in exclude:
            continue
        for run in runs:
            out += [
                {"value": t["value"], "arm": arm, "seed": run["seed"], "params": t.get("params", {})}
                for t in run["trials"]
            ]
    return [v for v in out if v["value"] is not None]


def best_known(dataset: dict[str, Any], exclude: tuple[str, ...] = ()) -> float:
    """The best val AUC of any configuration trained anywhere in the benchmark on this dataset
    (leaving out the arms in `exclude`)."""
    return max(v["value"] for v in known_values(dataset, exclude))


def best_known_source(dataset: dict[str, Any]) -> dict[str, Any]:
    return max(known_values(dataset), key=lambda v: v["value"])


def _spread_of(values) -> dict[str, float]:
    return an.spread(list(values))


def _paired_by_seed(
    dataset: dict[str, Any], arm: str, ref_arm: str, row: Callable[[dict, dict], dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per run of `arm`: its seed, then `row(run, ref)` against `ref_arm`'s run of that seed."""
    refs = {run["seed"]: run for run in dataset["runs"][ref_arm]}
    return [{"seed": run["seed"], **row(run, refs[run["seed"]])} for run in dataset["runs"][arm]]


def _rows_with_spreads(rows: list[dict[str, Any]], *keys: str) -> dict[str, Any]:
    """Per-seed rows, and the spread over seeds of each of `keys`."""
    return {"rows": rows, **{key: _spread_of(r[key] for r in rows) for key in keys}}


def search_curves(dataset: dict[str, Any], grid_by_seed: dict[int, dict[str, Any]], n_trials: int) -> dict:
    """Figure 1: best val AUC vs trial count and vs wall time, per sampler, bands over seeds."""
    arms = {RANDOM: dataset["runs"][RANDOM], TPE: dataset["runs"][TPE]}
    arms[GRID] = [
        {"seed": s, **grid_by_seed[s], "trials": grid_by_seed[s]["trials"][:n_trials]} for s in grid_by_seed
    ]
    for run in arms[GRID]:
        run["wall_s"] = run["trials"][-1]["t_end"] if run["trials"] else 0.0
    horizon = max(max(t["t_end"] for t in run["trials"]) for runs in arms.values() for run in runs)
    times = [horizon * i / (TIME_POINTS - 1) for i in range(TIME_POINTS)]
    out: dict[str, Any] = {"times_s": times, "arms": {}}
    for arm, runs in arms.items():
        by_count = [an.best_so_far([t["value"] for t in run["trials"]]) for run in runs]
        by_time = [an.best_at_times(run["trials"], times) for run in runs]
        out["arms"][arm] = {
            "by_trials": an.band(by_count),
            "by_time": an.band(by_time),
            "final_best": _spread_of(c[-1] for c in by_count),
            "wall_s": _spread_of(run["wall_s"] for run in runs),
            "per_seed_best": [c[-1] for c in by_count],
        }
    return out


def time_to_target(
    dataset: dict[str, Any],
    grid_by_seed: dict[int, dict[str, Any]],
    gap: float,
    arm: str = TPE_PARALLEL,
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Figure 2: seconds until a trial within `gap` of the best known value finished, the tuned arm
    (per seed) against the grid in the same seed's order; INF = not reached. `exclude`: arms left
    out of the best known value."""
    target = best_known(dataset, exclude) - gap
    tuned = {run["seed"]: an.time_to_target(run["trials"], target) for run in dataset["runs"][arm]}
    grid = {seed: an.time_to_target(run["trials"], target) for seed, run in grid_by_seed.items()}
    speedups = [an.ratio(grid[s], tuned[s]) for s in tuned]
    expected = an.expected_time_to_target(
        [g["value"] for g in dataset["grid"]], [g["seconds"] for g in dataset["grid"]], target
    )
    return {
        "gap": gap,
        "best_known_excludes": list(exclude),
        "target": target,
        "tuned_s": tuned,
        "grid_s": grid,
        "tuned_reached": sum(1 for v in tuned.values() if math.isfinite(v)),
        "grid_reached": sum(1 for v in grid.values() if math.isfinite(v)),
        "grid_configs_reaching": sum(
            1 for g in dataset["grid"] if g["value"] is not None and g["value"] >= target
        ),
        "tuned": _spread_of(tuned.values()),
        "grid": _spread_of(grid.values()),
        "speedup_per_seed": speedups,
        "speedup": _spread_of(speedups),
        "seeds_at_10x": sum(1 for x in speedups if x >= 10.0),
        # the grid's mean over all orders, against each seed's tuned time: free of the grid's order luck
        "grid_expected_s": expected,
        "speedup_vs_expected": _spread_of(an.ratio(expected, t) for t in tuned.values()),
        "grid_exhaustive_s": sum(g["seconds"] for g in dataset["grid"]),
    }


def time_to_grid_answer(dataset: dict[str, Any], gap: float, arm: str = TPE_PARALLEL) -> dict[str, Any]:
    """Figure 2, as search time: an exhaustive grid search gives its answer (its best configuration)
    only once it has run every configuration, so its search time is the whole grid's. The tuned arm's
    time is until a trial within `gap` of that answer finished (INF = not reached)."""
    grid_best = max(g["value"] for g in dataset["grid"] if g["value"] is not None)
    target = grid_best - gap
    exhaustive = sum(g["seconds"] for g in dataset["grid"])
    tuned = {run["seed"]: an.time_to_target(run["trials"], target) for run in dataset["runs"][arm]}
    speedups = [an.ratio(exhaustive, t) for t in tuned.values()]
    return {
        "gap": gap,
        "grid_best": grid_best,
        "target": target,
        "grid_exhaustive_s": exhaustive,
        "tuned_s": tuned,
        "tuned_reached": sum(1 for v in tuned.values() if math.isfinite(v)),
        "tuned": _spread_of(tuned.values()),
        "speedup_per_seed": speedups,
        "speedup": _spread_of(speedups),
        "seeds_at_10x": sum(1 for x in speedups if x >= 10.0),
    }


def time_to_target_by_arm(
    dataset: dict[str, Any], grid_by_seed: dict[int, dict[str, Any]], gap: float
) -> dict:
    """Time to the same target for every arm, so the speed-up can be read apart: sampler, pruning,
    parallelism. Sequential arms' times are their own measured clocks."""
    target = best_known(dataset) - gap
    runs = {arm: {r["seed"]: r for r in rs} for arm, rs in dataset["runs"].items()}
    runs[GRID] = grid_by_seed
    out = {}
    for arm, by_seed in runs.items():
        times = [an.time_to_target(run["trials"], target) for run in by_seed.values()]
        out[arm] = {"spread": _spread_of(times), "reached": sum(1 for t in times if math.isfinite(t))}
    return out


def pruning(dataset: dict[str, Any], pruned_arm: str, epochs: int, full_arm: str = TPE) -> dict[str, Any]:
    """Figure 3: epochs the pruned search did not run and the best val AUC it gave up, per seed
    against the unpruned search of the same seed (positive cost = pruning lost AUC)."""

    def row(run: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
        return {
            "epochs_pruned": run["epochs_run"],
            "epochs_full": ref["epochs_run"],
            "saved": an.epochs_saved(run["epochs_run"], ref["epochs_run"]),
            "auc_cost_points": an.points(best_value(ref) - best_value(run)),
            "n_pruned": sum(1 for t in run["trials"] if t["status"] == "pruned"),
            # pruned after its final epoch: fully trained, yet its value is thrown away
            "n_pruned_at_last_epoch": sum(
                1 for t in run["trials"] if t["status"] == "pruned" and t.get("epochs_run") == epochs
            ),
            "wall_saved": 1.0 - run["wall_s"] / ref["wall_s"],
        }

    rows = _paired_by_seed(dataset, pruned_arm, full_arm, row)
    return {
        **_rows_with_spreads(rows, "saved", "auc_cost_points", "wall_saved", "n_pruned"),
        "n_pruned_at_last_epoch": sum(r["n_pruned_at_last_epoch"] for r in rows),
    }


def pruning_replay(dataset: dict[str, Any], spec: str) -> dict[str, Any]:
    """Figure 3, counterfactual: `spec` replayed on each seed's unpruned TPE trials (same trials,
    same order; search.replay_pruner). Saved and cost are against that unpruned search."""
    rows = []
    for run, replay in zip(dataset["runs"][TPE], dataset["pruning_replay"][spec], strict=True):
        kept = [t["value"] for t in replay if t["value"] is not None]
        epochs = sum(t["epochs_run"] for t in replay)
        rows.append(
            {
                "seed": run["seed"],
                "saved": an.epochs_saved(epochs, run["epochs_run"]),
                "auc_cost_points": an.points(best_value(run) - (max(kept) if kept else math.nan)),
                "n_pruned": sum(1 for t in replay if t["value"] is None),
            }
        )
    return _rows_with_spreads(rows, "saved", "auc_cost_points", "n_pruned")


def parallelism(dataset: dict[str, Any], one: str = TPE_PRUNED, two: str = TPE_PARALLEL) -> dict[str, Any]:
    """Figure 4: wall-time speed-up of 2 trials at once over 1, same trial count and pruner; also
    per epoch run, since the two runs prune differently."""

    def row(run: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
        return {
            "wall_1": ref["wall_s"],
            "wall_2": run["wall_s"],
            "speedup": ref["wall_s"] / run["wall_s"],
            "epochs_1": ref["epochs_run"],
            "epochs_2": run["epochs_run"],
            "speedup_per_epoch": (run["epochs_run"] / run["wall_s"]) / (ref["epochs_run"] / ref["wall_s"]),
        }

    rows = _paired_by_seed(dataset, two, one, row)
    return _rows_with_spreads(rows, "speedup", "speedup_per_epoch")


def tuned_vs_default(dataset: dict[str, Any], arm: str = TPE) -> dict[str, Any]:
    """Figure 5: the default configuration against the best trial of each seed's search (its val
    AUC, the selection metric, and the same model's test AUC, which selection did not see)."""
    default = dataset["default"]
    rows = []
    for run in dataset["runs"][arm]:
        best = best_trial(run)
        rows.append({"seed": run["seed"], "val_auc": best["value"], "test_auc": best["test_auc"]})
    val = [r["val_auc"] for r in rows]
    test = [r["test_auc"] for r in rows]
    return {
        "arm": arm,
        "default_val_auc": default["value"],
        "default_test_auc": default["test_auc"],
        "rows": rows,
        "tuned_val_auc": _spread_of(val),
        "tuned_test_auc": _spread_of(test),
        "val_gain_points": _spread_of(an.points(v - default["value"]) for v in val),
        "val_gain_pct": _spread_of(100.0 * (v / default["value"] - 1.0) for v in val),
        "test_gain_points": _spread_of(an.points(v - default["test_auc"]) for v in test),
        "test_gain_pct": _spread_of(100.0 * (v / default["test_auc"] - 1.0) for v in test),
        "best_known_val_auc": best_known(dataset),
        "best_known_source": best_known_source(dataset),
        "headroom_pct": 100.0 * (1.0 / default["value"] - 1.0),
    }


def trial_time(dataset: dict[str, Any]) -> dict[str, Any]:
    """Where a trial's wall time goes, over the grid's trials (one at a time, never pruned): the
    training loop, the per-epoch val evaluation, and the rest (model and optimizer set-up, the
    per-epoch checkpoint, the test evaluation)."""
    grid = [g for g in dataset["grid"] if "train_s" in g]
    total = sum(g["seconds"] for g in grid)
    train = sum(g["train_s"] for g in grid)
    evaluation = sum(g["eval_s"] for g in grid)
    return {
        "trials": len(grid),
        "mean_s": total / len(grid) if grid else math.nan,
        "train_share": train / total if total else math.nan,
        "eval_share": evaluation / total if total else math.nan,
        "other_share": 1.0 - (train + evaluation) / total if total else math.nan,
        "eval_s_per_epoch": evaluation / sum(len(g["val_auc_history"]) for g in grid) if grid else math.nan,
    }


def summarize_dataset(dataset: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    grid_by_seed = grid_runs(dataset["grid"], {int(k): v for k, v in dataset["grid_orders"].items()})
    out = {
        "best_known_val_auc": best_known(dataset),
        "best_known_source": best_known_source(dataset),
        "curves": search_curves(dataset, grid_by_seed, settings["trials"]),
        "time_to_target": time_to_target(dataset, grid_by_seed, settings["target_gap"]),
        "time_to_grid_answer": time_to_grid_answer(dataset, settings["target_gap"]),
        "time_to_target_by_arm": time_to_target_by_arm(dataset, grid_by_seed, settings["target_gap"]),
        # Parallel trials are not reproducible (they share torch's global RNG), so the target is also
        # given against the best value of trials run one at a time.
        "time_to_target_other_gaps": [
            time_to_target(dataset, grid_by_seed, settings["target_gap"], exclude=(TPE_PARALLEL,))
        ]
        + [time_to_target(dataset, grid_by_seed, gap) for gap in settings["extra_gaps"]],
        "pruning": {TPE_PRUNED: pruning(dataset, TPE_PRUNED, settings["epochs"])},
        "parallelism": parallelism(dataset),
        "tuned_vs_default": tuned_vs_default(dataset),
        "trial_time": trial_time(dataset),
    }
    out["pruning_replay"] = {
        spec: pruning_replay(dataset, spec) for spec in dataset.get("pruning_replay", {})
    }
    if TPE_ALT in dataset["runs"]:
        out["pruning"][TPE_ALT] = pruning(dataset, TPE_ALT, settings["epochs"])
    return out
