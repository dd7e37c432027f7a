"""Pure readings of dmlt objects: what a person (or a notebook) wants to know about a job or
a study, taken from the status the operator writes. Nothing here does I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dmlt import upstream as up

FINISHED = "finished"
"""`wait` for either terminal phase."""
METRICS_SHOWN = ("val_auc", "val_loss", "train_loss", "val_accuracy", "lr")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def age(created: str | None, now: datetime | None = None) -> str:
    """`kubectl get`'s AGE: 45s, 12m, 3h, 2d."""
    if not created:
        return "-"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


@dataclass(frozen=True, slots=True)
class JobState:
    """A TrainingJob as its status shows it."""

    name: str
    namespace: str
    phase: str | None = None
    """None until the operator has written a status."""
    ready: str | None = None
    attempt: int = 0
    restarts: int = 0
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    mlflow_run_id: str | None = None
    result: str | None = None
    ranks: tuple[dict[str, Any], ...] = ()
    conditions: tuple[dict[str, Any], ...] = ()
    created: str | None = None
    world_size: int | None = None
    kind: str = up.KIND

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> JobState:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        progress = status.get("progress") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            phase=status.get("phase"),
            ready=status.get("ready"),
            attempt=_int(status.get("attempt")) or 0,
            restarts=_int(status.get("restarts")) or 0,
            epoch=_int(progress.get("epoch")),
            epochs=_int(progress.get("epochs")),
            metrics={k: v for k, v in (status.get("metrics") or {}).items() if isinstance(v, int | float)},
            message=str(status.get("message") or ""),
            mlflow_run_id=status.get("mlflowRunId"),
            result=status.get("result"),
            ranks=tuple(status.get("ranks") or ()),
            conditions=tuple(status.get("conditions") or ()),
            created=meta.get("creationTimestamp"),
            world_size=(spec.get("replicas") or 1) * (spec.get("procsPerNode") or 1),
        )

    @property
    def terminal(self) -> bool:
        return self.phase in up.TERMINAL

    @property
    def progress(self) -> str:
        if self.epoch is None:
            return "-"
        return f"{self.epoch}/{self.epochs}" if self.epochs else str(self.epoch)

    def key(self) -> tuple[Any, ...]:
        """What a plain-text follower prints a new line for."""
        return (self.phase, self.ready, self.epoch, self.restarts, self.attempt, self.message)

    def line(self) -> str:
        """One plain line: what changed is visible by diffing consecutive lines."""
        parts = [f"{self.name}: {self.phase or 'Created'}"]
        if self.ready:
            parts.append(f"ready={self.ready}")
        if self.epoch is not None:
            parts.append(f"epoch={self.progress}")
        parts += [f"{k}={self.metrics[k]:.4f}" for k in METRICS_SHOWN[:3] if k in self.metrics]
        parts.append(f"restarts={self.restarts}")
        if self.message and not self.terminal:
            parts.append(f"({self.message})")
        return " ".join(parts)


TRIAL_STATES = {
    "": "Pending",
    "Pending": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Suspended": "Pending",
    "Failed": "Failed",
}


@dataclass(frozen=True, slots=True)
class TrialRow:
    """One trial of a study, from its TrainingJob."""

    number: int
    state: str
    """Pending, Running, Completed, Pruned or Failed."""
    value: float | None
    """The objective's latest value the trial reported."""
    progress: str
    params: dict[str, Any]
    job: str
    mlflow_run_id: str | None = None

    @classmethod
    def from_job(cls, obj: Mapping[str, Any], objective: str) -> TrialRow | None:
        meta = obj.get("metadata") or {}
        try:
            number = int((meta.get("labels") or {}).get(up.LABEL_TRIAL, ""))
        except ValueError:
            return None
        job = JobState.from_object(obj)
        if job.phase == up.SUCCEEDED:
            state = "Pruned" if job.result == "pruned" else "Completed"
        else:
            state = TRIAL_STATES.get(job.phase or "", job.phase or "Pending")
        try:
            params = json.loads((meta.get("annotations") or {}).get(up.ANNOTATION_PARAMS) or "{}")
        except ValueError:
            params = {}
        return cls(
            number, state, job.metrics.get(objective), job.progress, params, job.name, job.mlflow_run_id
        )


@dataclass(frozen=True, slots=True)
class StudyState:
    """A TuningStudy as its status (and its trial jobs) show it."""

    name: str
    namespace: str
    phase: str | None = None
    message: str = ""
    algorithm: str = ""
    objective: str = "val_auc"
    direction: str = "maximize"
    max_trials: int = 0
    trials_done: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    trials: tuple[TrialRow, ...] = ()
    parent_run_id: str | None = None
    registered_model: dict[str, Any] | None = None
    conditions: tuple[dict[str, Any], ...] = ()
    created: str | None = None
    kind: str = up.STUDY_KIND

    @classmethod
    def from_objects(cls, obj: Mapping[str, Any], trial_jobs: Sequence[Mapping[str, Any]] = ()) -> StudyState:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        objective = spec.get("objective") or {}
        metric = objective.get("metric", "val_auc")
        rows = [r for r in (TrialRow.from_job(j, metric) for j in trial_jobs) if r is not None]
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            phase=status.get("phase"),
            message=str(status.get("message") or ""),
            algorithm=(spec.get("algorithm") or {}).get("name", "tpe"),
            objective=metric,
            direction=objective.get("direction", "maximize"),
            max_trials=_int(spec.get("maxTrials")) or 0,
            trials_done=status.get("trialsDone"),
            counts={k: v for k, v in (status.get("trials") or {}).items() if _int(v) is not None},
            best=status.get("bestTrial"),
            trials=tuple(sorted(rows, key=lambda r: r.number)),
            parent_run_id=status.get("parentRunId"),
            registered_model=status.get("registeredModel"),
            conditions=tuple(status.get("conditions") or ()),
            created=meta.get("creationTimestamp"),
        )

    @property
    def terminal(self) -> bool:
        return self.phase in up.TERMINAL

    def key(self) -> tuple[Any, ...]:
        return (
            self.phase,
            self.trials_done,
            tuple((t.number, t.state, t.progress) for t in self.trials),
            (self.best or {}).get("number"),
            self.message,
        )

    def line(self) -> str:
        parts = [
            f"{self.name}: {self.phase or 'Created'}",
            f"trials={self.trials_done or '0/' + str(self.max_trials)}",
        ]
        parts += [f"{k}={self.counts[k]}" for k in ("running", "pruned", "failed") if self.counts.get(k)]
        if self.best:
            parts.append(f"best=#{self.best.get('number')} {self.objective}={self.best.get('value'):.4f}")
        parts += [f"t{t.number}@{t.progress}" for t in self.trials if t.state == "Running"]
        return " ".join(parts)


def wait_verdict(phase: str | None, conditions: Sequence[Mapping[str, Any]], until: str) -> bool | None:
    """Has `until` been reached (True), can it no longer be (False), or not yet (None)?

    `until` is a phase (Succeeded, Running, ...), `finished` (either end), or
    `condition=TYPE` (that condition is True)."""
    wanted = until.strip()
    if wanted.lower() == FINISHED:
        return True if phase in up.TERMINAL else None
    if wanted.lower().startswith("condition="):
        kind = wanted.split("=", 1)[1].lower()
        if any(str(c.get("type", "")).lower() == kind and c.get("status") == "True" for c in conditions):
            return True
        return False if phase in up.TERMINAL else None
    if phase is not None and phase.lower() == wanted.lower():
        return True
    return False if phase in up.TERMINAL else None


def format_params(params: Mapping[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " ".join(f"{k}={show(v)}" for k, v in sorted(params.items()))
