"""The Markdown table of scale.json's entries: one column per number of jobs, as in issue 15."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _seconds(key: str) -> Callable[[dict], str]:
    def cell(entry: dict) -> str:
        value = entry.get(key)
        text = f"{_num(value)} s" if value is not None else "–"
        reached, expected = entry.get(f"{key}_reached"), entry.get("jobs")
        if reached is not None and reached < expected:
            text += f" ({reached}/{expected} by the timeout)"
        return text

    return cell


def _lag(entry: dict) -> str:
    lag = entry.get("lag_s") or {}
    if not lag.get("n"):
        return "–"
    return " / ".join(_num(lag.get(k), 2) for k in ("p50", "p90", "p99", "max")) + " s"


def _steady(key: str, digits: int, unit: str) -> Callable[[dict], str]:
    def cell(entry: dict) -> str:
        value = (entry.get("steady") or {}).get(key)
        return "–" if value is None else f"{_num(value, digits)} {unit}".rstrip()

    return cell


def _delete(key: str) -> Callable[[dict], str]:
    def cell(entry: dict) -> str:
        value = (entry.get("delete") or {}).get(key)
        return "–" if value is None else f"{_num(value)} s"

    return cell


def _cpu_by_process(entry: dict) -> str:
    spent = entry.get("cpu_start_s_by_process") or {}
    if not spent:
        return "–"
    return ", ".join(f"{name} {_num(cpu)}" for name, cpu in sorted(spent.items(), key=lambda kv: -kv[1]))


ROWS: list[tuple[str, Callable[[dict], str]]] = [
    ("`kubectl apply` of all jobs returns", _seconds("apply_s")),
    ("… the same with the operator stopped", _seconds("apply_operator_stopped_s")),
    ("all rank Pods created", _seconds("pods_created_s")),
    ("every job's `status.phase` Running", _seconds("all_running_s")),
    ("lag, a job's Pods all Running → its phase Running: p50 / p90 / p99 / max", _lag),
    ("operator CPU while they start", lambda e: f"{_num(e.get('operator_cpu_start_s'))} CPU-s"),
    ("CPU while they start, by process", _cpu_by_process),
    ("operator peak RSS", lambda e: f"{_num(e.get('operator_peak_rss_mb'), 0)} MB"),
    ("operator CPU, all running and nothing changing", _steady("operator_cores", 3, "cores")),
    ("operator's API requests, same window (audit log)", _steady("operator_requests_per_s", 1, "/s")),
    ("apiserver requests from all clients, same window", _steady("apiserver_requests_per_s", 1, "/s")),
    ("delete all → every finalizer and job gone", _delete("jobs_gone_s")),
    ("delete all → every Pod gone", _delete("pods_gone_s")),
]


def render_table(entries: Sequence[dict], nodes_label: str | None = None) -> str:
    """Markdown: a row per figure, a column per entry (ordered by number of jobs)."""
    entries = sorted(entries, key=lambda e: e["jobs"])
    nodes = nodes_label or ", ".join(sorted({str(e.get("nodes")) for e in entries}))
    head = f"| 2-rank TrainingJobs applied at once ({nodes} fake nodes) |"
    head += "".join(f" {e['jobs']:,} |" for e in entries)
    lines = [head, "|---|" + "---:|" * len(entries)]
    for label, cell in ROWS:
        lines.append(f"| {label} |" + "".join(f" {cell(e)} |" for e in entries))
    return "\n".join(lines) + "\n"


def _rate(entry: dict) -> str:
    return f"{_num(entry.get('operator_requests_per_s'))} /s"


def _cpu(entry: dict) -> str:
    return f"{_num(entry.get('operator_cpu_s'))} CPU-s in {_num(entry.get('wall_s'))} s"


def _study_lag(entry: dict) -> str:
    lag = entry.get("replacement_lag_s") or {}
    if not lag.get("n"):
        return "–"
    return " / ".join(_num(lag.get(k), 2) for k in ("p50", "p90", "p99", "max")) + f" s (n = {lag['n']})"


STUDY_ROWS: list[tuple[str, Callable[[dict], str]]] = [
    ("apply → `parallelism` trial jobs created", _seconds("trials_created_s")),
    ("apply → `parallelism` trial jobs Running", _seconds("trials_running_s")),
    ("a trial's Pod finished → its replacement trial job created: p50 / p90 / p99 / max", _study_lag),
    ("trial jobs created in all", lambda e: f"{e.get('trial_jobs_created', '–')}"),
    ("operator CPU over the run", _cpu),
    (
        "operator's API requests over the run (audit log)",
        lambda e: f"{_num(e.get('operator_requests_per_s'))}/s",
    ),
    ("… of them LISTs of trial jobs", lambda e: f"{_list_trials(e)}"),
    ("operator peak RSS", lambda e: f"{_num(e.get('operator_peak_rss_mb'), 0)} MB"),
    ("delete the study → gone (its finalizer)", _seconds("study_deleted_s")),
]


def _list_trials(entry: dict) -> str:
    requests = entry.get("operator_requests") or {}
    return f"{sum(n for kind, n in requests.items() if kind.startswith('list trainingjobs'))}"


def render_study_table(entries: Sequence[dict]) -> str:
    """Markdown: a row per figure, a column per study entry (in the order they were run)."""
    head = "| one TuningStudy on kwok (trial Pods end after "
    lows = sorted({tuple(e["complete_after_s"]) for e in entries if e.get("complete_after_s")})
    head += ", ".join(f"{a:g}–{b:g} s" for a, b in lows) + ") |"
    head += "".join(f" {e.get('label') or '–'}, parallelism {e['parallelism']} |" for e in entries)
    lines = [head, "|---|" + "---:|" * len(entries)]
    for label, cell in STUDY_ROWS:
        lines.append(f"| {label} |" + "".join(f" {cell(e)} |" for e in entries))
    return "\n".join(lines) + "\n"
