"""Percentiles and the per-job lag from all of a job's Pods Running to its phase Running."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default); NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100; got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max and the count of a sample."""
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def all_running_at(pod_running: Mapping[str, float], pods: Iterable[str], ranks: int) -> float | None:
    """When the last of a job's `ranks` Pods went Running; None until all of them have."""
    times = [pod_running[p] for p in pods if p in pod_running]
    return max(times) if len(times) >= ranks else None


def running_lags(
    job_running: Mapping[str, float],
    pods_of_job: Mapping[str, Iterable[str]],
    pod_running: Mapping[str, float],
    ranks: int,
) -> dict[str, float]:
    """Per job: its phase Running minus the moment its last Pod went Running (seconds).

    A job whose phase or Pods never got there has no lag (it shows in the counts instead). A
    negative lag would mean the phase was seen before the Pods; it is clamped to 0, since both
    come from the same watch clock and only watch delivery order can cause it.
    """
    lags: dict[str, float] = {}
    for job, phase_at in job_running.items():
        pods_at = all_running_at(pod_running, pods_of_job.get(job, ()), ranks)
        if pods_at is not None:
            lags[job] = max(0.0, phase_at - pods_at)
    return lags
