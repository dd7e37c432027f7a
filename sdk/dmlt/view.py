"""What the CLI shows: a live view on a terminal, one plain line per change in a pipe, tables.

The live view redraws only when the state changes and has no refresh thread (rich's Live with
auto_refresh off), so nothing keeps running once the loop ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TextIO, TypeVar

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dmlt.observe import METRICS_SHOWN, JobState, StudyState, TrialRow, age, format_params

S = TypeVar("S", JobState, StudyState)
PHASE_STYLES = {
    "Succeeded": "bold green",
    "Failed": "bold red",
    "Running": "bold cyan",
    "Restarting": "bold yellow",
}


def _phase(phase: str | None) -> Text:
    return Text(phase or "Created", style=PHASE_STYLES.get(phase or "", "bold"))


def job_view(state: JobState) -> Group:
    """Phase, ranks ready, epoch e/E with a bar, latest metrics, restarts, message."""
    head = Text.assemble(
        f"TrainingJob {state.namespace}/{state.name}  ",
        _phase(state.phase),
        f"  ranks ready {state.ready or '-'}  restarts {state.restarts}  attempt {state.attempt}",
    )
    parts: list[Any] = [head]
    if state.epoch is not None and state.epochs:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            f"epoch {state.epoch}/{state.epochs}",
            ProgressBar(total=state.epochs, completed=state.epoch, width=40),
            f"{100 * state.epoch // state.epochs}%",
        )
        parts.append(bar)
    else:
        parts.append(Text("epoch -", style="dim"))
    shown = [f"{k} {state.metrics[k]:.4f}" for k in METRICS_SHOWN if k in state.metrics]
    if shown:
        parts.append(Text("  ".join(shown)))
    if state.message:
        parts.append(Text(state.message, style="dim"))
    return Group(*parts)


def trials_table(rows: Sequence[TrialRow], objective: str) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("TRIAL", "STATE", objective.upper(), "EPOCHS", "PARAMS"):
        table.add_column(column)
    for row in rows:
        value = "-" if row.value is None else f"{row.value:.4f}"
        table.add_row(str(row.number), row.state, value, row.progress, format_params(row.params))
    return table


def study_view(state: StudyState) -> Group:
    head = Text.assemble(
        f"TuningStudy {state.namespace}/{state.name}  ",
        _phase(state.phase),
        f"  trials {state.trials_done or '0/' + str(state.max_trials)}  algorithm {state.algorithm}",
    )
    parts: list[Any] = [head, trials_table(state.trials, state.objective)]
    if state.best:
        parts.append(Text(best_line(state)))
    if state.message:
        parts.append(Text(state.message, style="dim"))
    return Group(*parts)


def best_line(state: StudyState) -> str:
    best = state.best or {}
    return (
        f"best trial {best.get('number')}: {state.objective}={best.get('value'):.4f} "
        f"({format_params(best.get('params') or {})})"
    )


def follow(states: Iterator[S], out: TextIO, live: bool) -> S | None:
    """Show every state `states` yields; returns the last one (None if it yielded none)."""
    last = None
    if not live:
        for last in states:
            print(last.line(), file=out, flush=True)
        return last
    console = Console(file=out)
    with Live(console=console, auto_refresh=False, transient=False) as screen:
        for last in states:
            view = job_view(last) if isinstance(last, JobState) else study_view(last)
            screen.update(view, refresh=True)
    return last


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """kubectl-style columns: left-aligned, three spaces apart."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def job_row(state: JobState, wide: bool) -> list[Any]:
    auc = state.metrics.get("val_auc")
    row = [
        state.name,
        state.phase or "-",
        state.ready or "-",
        state.progress,
        "-" if auc is None else f"{auc:.4f}",
        state.restarts,
        age(state.created),
    ]
    if wide:
        row = [state.namespace, *row, state.attempt, state.mlflow_run_id or "-", state.message or "-"]
    return row


def study_row(state: StudyState, wide: bool) -> list[Any]:
    best = (state.best or {}).get("value")
    row = [
        state.name,
        state.algorithm,
        state.trials_done or "-",
        state.counts.get("running", 0),
        state.counts.get("pruned", 0),
        "-" if best is None else f"{best:.4f}",
        state.phase or "-",
        age(state.created),
    ]
    if wide:
        best_params = format_params((state.best or {}).get("params") or {}) or "-"
        row = [
            state.namespace,
            *row,
            (state.best or {}).get("number", "-"),
            best_params,
            state.message or "-",
        ]
    return row


JOB_HEADERS = ["NAME", "PHASE", "READY", "PROGRESS", "VAL-AUC", "RESTARTS", "AGE"]
STUDY_HEADERS = ["NAME", "ALGORITHM", "TRIALS", "RUNNING", "PRUNED", "BEST", "PHASE", "AGE"]


def headers(kind_is_job: bool, wide: bool) -> list[str]:
    base = JOB_HEADERS if kind_is_job else STUDY_HEADERS
    if not wide:
        return base
    extra = ["ATTEMPT", "MLFLOW-RUN", "MESSAGE"] if kind_is_job else ["BEST-TRIAL", "BEST-PARAMS", "MESSAGE"]
    return ["NAMESPACE", *base, *extra]
