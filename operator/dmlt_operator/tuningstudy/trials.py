"""What the study planner observes: the trials in the Optuna storage and the trial TrainingJobs
in the API, each summarized into the few facts a decision needs. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dmlt_contract import ATTR_EPOCHS, ATTR_MODEL_URI, ATTR_OUTCOME, ATTR_RUN_ID, ATTR_VALUE
from dmlt_operator.core.conditions import TERMINAL
from dmlt_operator.core.objects import STUDY_KIND, controller_uid
from dmlt_operator.trainingjob.progress import finite_float
from dmlt_operator.tuningstudy.build import ANNOTATION_STARTED, LABEL_TRIAL

# Optuna trial states, by name (optuna.trial.TrialState's; this module does not import Optuna).
T_RUNNING, T_COMPLETE, T_PRUNED, T_FAIL, T_WAITING = "RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One Optuna trial as read from the storage."""

    number: int
    state: str
    """RUNNING, COMPLETE, PRUNED, FAIL or WAITING."""
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    started: str | None = None
    """When the trial was asked (ISO time, from the database): with the number, its identity."""

    @property
    def outcome(self) -> str | None:
        outcome = self.user_attrs.get(ATTR_OUTCOME)
        return outcome if isinstance(outcome, str) else None

    @property
    def mlflow_run_id(self) -> str | None:
        run_id = self.user_attrs.get(ATTR_RUN_ID)
        return run_id if isinstance(run_id, str) and run_id else None

    @property
    def model_uri(self) -> str | None:
        uri = self.user_attrs.get(ATTR_MODEL_URI)
        return uri if isinstance(uri, str) and uri else None

    @property
    def epochs_run(self) -> int | None:
        epochs = self.user_attrs.get(ATTR_EPOCHS)
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    def reported_value(self, direction: str) -> float | None:
        """The trainer's final value, else the best per-epoch value it reported."""
        value = finite_float(self.user_attrs.get(ATTR_VALUE))
        if value is not None:
            return value
        values = [v for v in (finite_float(x) for x in self.intermediate.values()) if v is not None]
        if not values:
            return None
        return max(values) if direction == "maximize" else min(values)


@dataclass(frozen=True, slots=True)
class TrialJob:
    """What the planner needs to know about one trial TrainingJob."""

    name: str
    number: int | None
    owner_uid: str | None
    uid: str | None = None
    phase: str = ""
    """The TrainingJob's phase; "" before its operator wrote any status."""
    result: str | None = None
    """The trainer's final status (completed, early_stopped, pruned) once the job succeeded."""
    message: str = ""
    mlflow_run_id: str | None = None
    deleting: bool = False
    trial_started: str | None = None
    """The `started` of the trial the job was made for (annotation dmlt.io/trial-started)."""

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL

    def runs(self, trial: TrialRecord | None) -> bool:
        """Whether this job runs `trial`, not an earlier trial of that number (a database that
        lost its data, e.g. PostgreSQL without persistence, hands out the numbers again)."""
        if trial is None:
            return False
        return self.trial_started is None or trial.started is None or self.trial_started == trial.started


def summarize_trial_job(body: Mapping[str, Any]) -> TrialJob | None:
    """Summarize a listed trial TrainingJob; None for an object without a name."""
    meta = body.get("metadata") or {}
    if not meta.get("name"):
        return None
    labels = meta.get("labels") or {}
    try:
        number: int | None = int(labels.get(LABEL_TRIAL, ""))
    except (TypeError, ValueError):
        number = None
    if number is not None and number < 0:
        number = None
    owner = controller_uid(meta, STUDY_KIND)
    status = body.get("status") or {}
    started = (meta.get("annotations") or {}).get(ANNOTATION_STARTED)
    return TrialJob(
        name=meta["name"],
        number=number,
        owner_uid=owner,
        uid=meta.get("uid"),
        phase=str(status.get("phase") or ""),
        result=status.get("result") if isinstance(status.get("result"), str) else None,
        message=str(status.get("message") or "")[:512],
        mlflow_run_id=status.get("mlflowRunId") if isinstance(status.get("mlflowRunId"), str) else None,
        deleting=bool(meta.get("deletionTimestamp")),
        trial_started=started if isinstance(started, str) and started else None,
    )
