"""The progress a trainer reports: its epoch and finished events.

A rank's `finished` event arrives in its Pod's termination message (`parse_termination_message`);
the epoch events are pushed to the receiver (`progress_server`), or, as a fallback, read from
rank 0's log tail (`parse_trainer_log`).

The events are the contract's (`dmlt_contract.parse_event`); this module keeps the latest of
each, cleans what it keeps for status, and turns it into `status.progress`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from dmlt_contract import EVENT_EPOCH, EVENT_FINISHED, parse_event

FINISH_STATUSES = ("completed", "early_stopped", "pruned")
MAX_METRICS = 32
PRIORITY_METRICS = ("val_auc", "val_loss", "train_loss", "lr")
METRIC_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]{0,62}$")


@dataclass(frozen=True, slots=True)
class TrainerReport:
    """The latest facts a rank printed as JSON lines."""

    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    finished: dict[str, Any] | None = None
    """The `finished` event: status, weights hash, MLflow run id (camelCase keys)."""

    @property
    def empty(self) -> bool:
        return self.epoch is None and self.finished is None and not self.mlflow_run_id


def finite_float(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def clean_metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    # The printer column and dashboards read these; keep them whatever else is reported.
    keys = [k for k in PRIORITY_METRICS if k in raw] + sorted(
        k for k in raw if k not in PRIORITY_METRICS and isinstance(k, str)
    )
    for key in keys:
        if len(out) >= MAX_METRICS:
            break
        value = finite_float(raw[key])
        if isinstance(key, str) and METRIC_NAME_RE.match(key) and value is not None:
            out[key] = round(value, 6)
    return out


def clean_run_id(value: Any) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", value):
        return value
    return None


def epoch_fields(obj: dict[str, Any]) -> tuple[int, int | None] | None:
    """(epoch, epochs) of an epoch event; None when its epoch is not a count."""
    e, n = obj.get("epoch"), obj.get("epochs")
    if not (isinstance(e, int) and not isinstance(e, bool) and e >= 0):
        return None
    return e, n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def finished_result(obj: dict[str, Any]) -> dict[str, Any] | None:
    """status.ranks[].result of a finished event; None for a status that is not a result."""
    status = obj.get("status")
    if status not in FINISH_STATUSES:
        return None
    finished: dict[str, Any] = {"status": status}
    digest = obj.get("weights_sha256")
    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        finished["weightsSha256"] = digest
    rid = clean_run_id(obj.get("mlflow_run_id"))
    if rid:
        finished["mlflowRunId"] = rid
    world = obj.get("world_size")
    if isinstance(world, int) and not isinstance(world, bool) and world >= 1:
        finished["worldSize"] = world
    return finished


def parse_termination_message(text: Any) -> dict[str, Any] | None:
    """status.ranks[].result from a container's termination message (the `finished` event the
    trainer wrote there); None for anything else, such as a failed container's log tail."""
    if not isinstance(text, str):
        return None
    obj = parse_event(text)
    if obj is None or obj["event"] != EVENT_FINISHED:
        return None
    return finished_result(obj)


def parse_trainer_log(text: str | None) -> TrainerReport:
    """The latest epoch and finished events in a log tail; anything malformed is skipped."""
    epoch = epochs = None
    metrics: dict[str, float] = {}
    run_id = None
    finished = None
    for line in (text or "").splitlines():
        obj = parse_event(line)
        if obj is None:
            continue
        if obj["event"] == EVENT_EPOCH and (fields := epoch_fields(obj)) is not None:
            epoch, epochs = fields[0], fields[1] or epochs
            metrics = clean_metrics(obj.get("metrics"))
            run_id = clean_run_id(obj.get("mlflow_run_id")) or run_id
        elif obj["event"] == EVENT_FINISHED and (result := finished_result(obj)) is not None:
            finished = result
            run_id = run_id or result.get("mlflowRunId")
    if epoch is not None and epochs is not None and epoch > epochs:
        epoch = epochs
    return TrainerReport(epoch=epoch, epochs=epochs, metrics=metrics, mlflow_run_id=run_id, finished=finished)


def progress_of(report: TrainerReport) -> dict[str, Any] | None:
    """status.progress for an epoch report, None when there is none."""
    if report.epoch is None:
        return None
    progress: dict[str, Any] = {"epoch": report.epoch}
    if report.epochs is not None:
        progress["epochs"] = report.epochs
        progress["summary"] = f"{report.epoch}/{report.epochs}"
        progress["percent"] = int(100 * report.epoch / report.epochs)
    else:
        progress["summary"] = str(report.epoch)
    return progress
