"""Pure functions of the HPO benchmark: best-so-far curves, time to target, spreads, pruning
savings and pruner specs. No torch, no Optuna, no I/O: unit-tested in tests/unit/test_bench_hpo.py.

A search's trials are plain dicts with at least `value` (the trial's objective: best val AUC over
its epochs; None when it was pruned or failed), `t_end` (seconds from the study's start to the
trial's end) and `epochs_run`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

INF = math.inf


def config_key(params: dict[str, Any]) -> str:
    """A canonical text for one configuration, equal for equal grid points (floats to 6 digits)."""
    parts = []
    for name in sorted(params):
        value = params[name]
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        parts.append(f"{name}={text}")
    return ",".join(parts)


def best_so_far(values: Sequence[float | None]) -> list[float]:
    """Running maximum over trials in order; NaN until the first completed trial (None = pruned)."""
    best, out = -INF, []
    for value in values:
        if value is not None and value > best:
            best = value
        out.append(best if best > -INF else math.nan)
    return out


def completion_order(trials: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials in the order they finished (parallel trials finish out of number order)."""
    return sorted(trials, key=lambda t: t["t_end"])


def best_at_times(trials: Sequence[dict[str, Any]], times: Sequence[float]) -> list[float]:
    """The best value among trials finished by each time in `times` (NaN before the first)."""
    done = [(t["t_end"], t["value"]) for t in completion_order(trials) if t["value"] is not None]
    out, best, i = [], -INF, 0
    for at in times:
        while i < len(done) and done[i][0] <= at:
            best = max(best, done[i][1])
            i += 1
        out.append(best if best > -INF else math.nan)
    return out


def time_to_target(trials: Sequence[dict[str, Any]], target: float) -> float:
    """Seconds from the study's start until the first trial with value >= target finished;
    INF when none did within the run (never the run's length: not reaching is not reaching)."""
    for trial in completion_order(trials):
        if trial["value"] is not None and trial["value"] >= target:
            return float(trial["t_end"])
    return INF


def expected_time_to_target(values: Sequence[float | None], seconds: Sequence[float], target: float) -> float:
    """Mean time to target of configurations run one at a time in a uniformly random order: a
    configuration below target is run before the first of the k at target with probability
    1/(k+1), each one at target is that first with probability 1/k. INF when none is at target."""
    hits = [t for v, t in zip(values, seconds, strict=True) if v is not None and v >= target]
    misses = [t for v, t in zip(values, seconds, strict=True) if v is None or v < target]
    if not hits:
        return INF
    return sum(misses) / (len(hits) + 1) + sum(hits) / len(hits)


def sequential_trials(values: Sequence[float | None], durations: Sequence[float]) -> list[dict[str, Any]]:
    """Trials run one after another: each ends when the durations up to it have elapsed."""
    out, clock = [], 0.0
    for value, duration in zip(values, durations, strict=True):
        clock += duration
        out.append({"value": value, "t_end": clock})
    return out


def spread(values: Iterable[float]) -> dict[str, float | int]:
    """Median, quartiles, min and max (INF allowed: a censored value sorts last); NaNs dropped."""
    xs = sorted(v for v in values if not (isinstance(v, float) and math.isnan(v)))
    if not xs:
        return {"n": 0, "median": math.nan, "q1": math.nan, "q3": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(xs),
        "median": quantile(xs, 0.5),
        "q1": quantile(xs, 0.25),
        "q3": quantile(xs, 0.75),
        "min": xs[0],
        "max": xs[-1],
    }


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default); INF-safe at the ends."""
    if not sorted_xs:
        return math.nan
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = sorted_xs[lo], sorted_xs[hi]
    if lo == hi or a == b:
        return float(a)
    if math.isinf(b):  # lo < pos < hi here: anything between a value and INF is INF
        return INF
    return float(a + (b - a) * (pos - lo))


def band(curves: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Per position across seeds: median, quartiles, min and max of equally long curves, and n, the
    seeds with a value there (NaNs, before a seed's first completed trial, are left out)."""
    keys = ("median", "q1", "q3", "min", "max", "n")
    if not curves:
        return {k: [] for k in keys}
    length = len(curves[0])
    if any(len(c) != length for c in curves):
        raise ValueError("curves must be equally long")
    columns = [spread(c[i] for c in curves) for i in range(length)]
    return {k: [float(col[k]) for col in columns] for k in keys}


def epochs_saved(pruned_epochs: int, full_epochs: int) -> float:
    """Share of epochs a pruned search did not run, against the same search without pruning."""
    if full_epochs <= 0:
        raise ValueError("full_epochs must be > 0")
    return 1.0 - pruned_epochs / full_epochs


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator with censored (INF) values: INF/x = INF, x/INF = 0, INF/INF = NaN."""
    if math.isinf(numerator) and math.isinf(denominator):
        return math.nan
    if math.isinf(denominator):
        return 0.0
    if denominator <= 0:
        return INF
    return numerator / denominator


def parse_pruner_spec(spec: str) -> dict[str, Any]:
    """'median' (the trainer's default: 3 startup trials, 1 warm-up epoch), 'none',
    'median:startup=1:warmup=0', or 'percentile:25:startup=3:warmup=1' (keep the top 25%)."""
    kind, *rest = spec.split(":")
    out: dict[str, Any] = {"kind": kind, "startup": 3, "warmup": 1}
    if kind == "none":
        if rest:
            raise ValueError(f"pruner 'none' takes no settings: {spec!r}")
        return {"kind": "none"}
    if kind == "percentile":
        if not rest or "=" in rest[0]:
            raise ValueError(f"percentile pruner needs its percentile first: {spec!r}")
        out["percentile"] = float(rest.pop(0))
        if not 0 < out["percentile"] < 100:
            raise ValueError(f"percentile must be in (0, 100): {spec!r}")
    elif kind != "median":
        raise ValueError(f"unknown pruner {kind!r} in {spec!r}; use median, percentile or none")
    for item in rest:
        name, sep, value = item.partition("=")
        if not sep or name not in ("startup", "warmup"):
            raise ValueError(f"unknown pruner setting {item!r} in {spec!r}; use startup=N or warmup=N")
        out[name] = int(value)
        if out[name] < 0:
            raise ValueError(f"{name} must be >= 0 in {spec!r}")
    return out


def points(auc_difference: float) -> float:
    """An AUC difference in points (1 point = 0.01 AUC)."""
    return auc_difference * 100.0
