"""The study reconciler's decisions, as a pure function of what is observed.

`plan()` takes a TuningStudy's spec, its last status, the trials the Optuna storage holds and
the trial TrainingJobs the API lists, and returns the status the study should have and the
actions that get there: tell these trials' results, create these trials' jobs, ask for N new
trials, delete these jobs, finish the MLflow parent run and register the best model.

The database is the memory, the jobs are the facts, the status is only a report. A trial is
asked (it is RUNNING in the database) before its job exists, so an operator that stops between
the two finds a RUNNING trial without a job and creates it; a job that finished is told to the
database only while its trial is still RUNNING there, so a result is never told twice. Counting
from the database after those tells gives `finished + running < maxTrials` and
`running < parallelism` as the only conditions to ask, which is why a study ends with exactly
maxTrials finished trials whatever was restarted in between.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dmlt_operator import status as st
from dmlt_operator.study_resources import (
    ANNOTATION_STARTED,
    ATTR_EPOCHS,
    ATTR_MODEL_URI,
    ATTR_OUTCOME,
    ATTR_RUN_ID,
    ATTR_VALUE,
    LABEL_TRIAL,
    StudyRef,
    format_params,
    trial_job_name,
)
from dmlt_operator.study_spec import STUDY_KIND, TuningStudySpec

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED)
TERMINAL = (SUCCEEDED, FAILED)

COND_CREATED = "Created"
COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_STORAGE = "StorageReady"
COND_MODEL = "ModelRegistered"
MODEL_RETRY_REASON = "RegistrationFailed"

# Optuna trial states, by name.
T_RUNNING = "RUNNING"
T_COMPLETE = "COMPLETE"
T_PRUNED = "PRUNED"
T_FAIL = "FAIL"
T_WAITING = "WAITING"

JOB_DONE_PHASES = ("Succeeded", "Failed")

MANAGED_STATUS_KEYS = frozenset(
    {
        "phase",
        "message",
        "studyName",
        "observedGeneration",
        "startTime",
        "completionTime",
        "trials",
        "trialsDone",
        "bestTrial",
        "parentRunId",
        "registeredModel",
        "conditions",
    }
)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- observations


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
        value = _finite(self.user_attrs.get(ATTR_VALUE))
        if value is not None:
            return value
        values = [v for v in (_finite(x) for x in self.intermediate.values()) if v is not None]
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
        return self.phase not in JOB_DONE_PHASES

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
    owner = next(
        (
            r.get("uid")
            for r in meta.get("ownerReferences") or []
            if r.get("controller") and r.get("kind") == STUDY_KIND
        ),
        None,
    )
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


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Tell:
    """Finish trial `number` in the storage (only if it is still RUNNING there)."""

    number: int
    state: str
    """COMPLETE, PRUNED or FAIL."""
    value: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RegisterModel:
    """Register the best trial's model under `name` in the MLflow Model Registry."""

    name: str
    source: str
    run_id: str | None
    trial: int
    value: float


@dataclass(frozen=True, slots=True)
class Finalize:
    """What is left to do in MLflow once the study ended."""

    run_status: str
    """FINISHED or FAILED: the parent run's end state."""
    register: RegisterModel | None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StudyPlan:
    status: dict[str, Any]
    tells: list[Tell] = field(default_factory=list)
    create_trials: list[int] = field(default_factory=list)
    """RUNNING trials (already asked) whose job is missing."""
    ask: int = 0
    """New trials to ask for (each gets its job in the same reconcile)."""
    delete_jobs: list[str] = field(default_factory=list)
    finalize: Finalize | None = None
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Counts:
    running: int = 0
    completed: int = 0
    pruned: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.pruned


def count_states(states: Mapping[int, str]) -> Counts:
    values = list(states.values())
    return Counts(
        running=values.count(T_RUNNING),
        completed=values.count(T_COMPLETE),
        pruned=values.count(T_PRUNED),
        failed=values.count(T_FAIL),
    )


def decide_result(trial: TrialRecord, job: TrialJob, direction: str) -> Tell:
    """How a trial whose job ended is told: pruned, completed with its value, or failed."""
    if job.phase == "Failed":
        detail = f": {job.message}" if job.message else ""
        return Tell(trial.number, T_FAIL, None, f"trial job {job.name} failed{detail}")
    epochs = trial.epochs_run
    after = f" after {epochs} epoch(s)" if epochs is not None else ""
    outcome = trial.outcome
    if outcome == "pruned" or (outcome is None and job.result == "pruned"):
        return Tell(trial.number, T_PRUNED, None, f"trial {trial.number} pruned{after}")
    value = trial.reported_value(direction)
    if value is None:
        return Tell(
            trial.number, T_FAIL, None,
            f"trial job {job.name} succeeded without reporting the objective to the study",
        )  # fmt: skip
    return Tell(trial.number, T_COMPLETE, value, f"trial {trial.number} completed{after}: {value:.6g}")


def best_trial(
    trials: Sequence[TrialRecord], states: Mapping[int, str], values: Mapping[int, float], direction: str
) -> TrialRecord | None:
    """The COMPLETE trial with the best value (the lowest number among equals)."""
    best: TrialRecord | None = None
    best_value = 0.0
    for trial in sorted(trials, key=lambda t: t.number):
        if states.get(trial.number) != T_COMPLETE:
            continue
        value = _finite(values.get(trial.number))
        if value is None:
            continue
        better = value > best_value if direction == "maximize" else value < best_value
        if best is None or better:
            best, best_value = trial, value
    return best


class _Builder:
    def __init__(self, ref: StudyRef, old: Mapping[str, Any], now: datetime) -> None:
        self.ref = ref
        self.old = old
        self.now = now
        self.status: dict[str, Any] = {
            k: v for k, v in old.items() if k in MANAGED_STATUS_KEYS and v is not None
        }
        self.status["studyName"] = ref.optuna_name
        self.status["observedGeneration"] = ref.generation
        self.conditions: list[dict[str, Any]] = [dict(c) for c in old.get("conditions") or []]
        self.plan = StudyPlan(status=self.status)

    def cond(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.conditions = st.set_condition(
            self.conditions, type_, value, reason, message, self.now, self.ref.generation
        )

    def clear(self, type_: str, reason: str, message: str) -> None:
        self.conditions = st.clear_condition(
            self.conditions, type_, reason, message, self.now, self.ref.generation
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def finish(self, phase: str, message: str) -> StudyPlan:
        self.status["phase"] = phase
        self.status["message"] = message[:1024]
        self.status["conditions"] = self.conditions
        return self.plan


def needs_finalize(status: Mapping[str, Any] | None) -> bool:
    """An ended study whose MLflow wrap-up (parent run, model registration) is still to do."""
    status = status or {}
    if status.get("phase") not in TERMINAL:
        return False
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == COND_MODEL), None)
    return cond is None or cond.get("reason") == MODEL_RETRY_REASON


def _best_entry(
    ref: StudyRef, trial: TrialRecord, value: float, jobs: Mapping[int, TrialJob]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "number": trial.number,
        "value": value,
        "params": dict(trial.params),
        "trainingJob": trial_job_name(ref.name, trial.number),
    }
    run_id = trial.mlflow_run_id or (jobs[trial.number].mlflow_run_id if trial.number in jobs else None)
    if run_id:
        entry["mlflowRunId"] = run_id
    return entry


def _finalize(
    b: _Builder,
    spec: TuningStudySpec,
    phase: str,
    best: TrialRecord | None,
    best_value: float | None,
    counts: Counts,
    tracking: bool,
    model_name: str,
) -> None:
    """Plan the MLflow wrap-up; conditions that need no I/O are settled here."""
    metric = spec.objective.metric
    metrics = {
        "trials_completed": float(counts.completed),
        "trials_pruned": float(counts.pruned),
        "trials_failed": float(counts.failed),
    }
    tags = {"dmlt.study_phase": phase}
    if best is not None and best_value is not None:
        metrics[f"best_{metric}"] = best_value
        metrics["best_trial"] = float(best.number)
        tags["dmlt.best_trial"] = str(best.number)
    register = None
    if not tracking:
        b.cond(COND_MODEL, False, "TrackingDisabled", "No MLflow tracking URI: nothing to register")
    elif phase == FAILED:
        b.cond(COND_MODEL, False, "StudyFailed", "The study failed: no model is registered")
    elif best is None or best_value is None:
        b.cond(COND_MODEL, False, "NoCompletedTrial", "No trial completed: no model to register")
    elif best.model_uri is None:
        b.cond(COND_MODEL, False, "NoModel", f"The best trial ({best.number}) logged no model")
    else:
        register = RegisterModel(model_name, best.model_uri, best.mlflow_run_id, best.number, best_value)
    b.plan.finalize = Finalize("FINISHED" if phase == SUCCEEDED else "FAILED", register, metrics, tags)


def plan(
    ref: StudyRef,
    spec: TuningStudySpec,
    status: Mapping[str, Any] | None,
    trials: Sequence[TrialRecord],
    jobs: Sequence[TrialJob],
    now: datetime,
    *,
    tracking: bool = False,
    parent_run_id: str | None = None,
    blocked: str | None = None,
    model_name: str = "",
) -> StudyPlan:
    """Decide the study's next status and actions from what is observed now.

    `tracking`: an MLflow server is configured; `parent_run_id`: the study's parent run there;
    `blocked`: why no trial may start now (e.g. the parent run cannot be created yet).
    """
    old = dict(status or {})
    b = _Builder(ref, old, now)
    s = b.status
    old_phase = old.get("phase")
    direction = spec.objective.direction
    metric = spec.objective.metric
    max_trials = spec.effective_max_trials
    model_name = model_name or ref.name
    if parent_run_id:
        s["parentRunId"] = parent_run_id
    if not any(c.get("type") == COND_CREATED for c in b.conditions):
        b.cond(COND_CREATED, True, "StudyCreated", f"Study {ref.optuna_name} created")

    by_number = {t.number: t for t in trials}
    mine = [j for j in jobs if j.owner_uid == ref.uid and j.number is not None]
    own = {j.number: j for j in mine if j.runs(by_number.get(j.number))}
    # Jobs of trials the database no longer has: they go, and hold their name until gone.
    stale = [j for j in mine if j.number not in own or own[j.number] is not j]
    foreign = {j.name for j in jobs if j.owner_uid != ref.uid}
    states = {t.number: t.state for t in trials}
    values = {t.number: t.value for t in trials if t.value is not None}

    # ---- an ended study decides nothing more; only its MLflow wrap-up may be left.
    if old_phase in TERMINAL:
        if needs_finalize(old):
            counts = count_states(states)
            best = best_trial(trials, states, values, direction)
            best_value = values.get(best.number) if best else None
            _finalize(b, spec, old_phase, best, best_value, counts, tracking, model_name)
        b.plan.delete_jobs = sorted(
            j.name for n, j in own.items() if j.active and not j.deleting and states.get(n) != T_RUNNING
        )
        b.plan.delete_jobs += sorted(j.name for j in stale if not j.deleting)
        return b.finish(old_phase, old.get("message") or old_phase)

    # ---- tell the results of trials whose job ended (still RUNNING in the database).
    for trial in sorted(trials, key=lambda t: t.number):
        job = own.get(trial.number)
        if trial.state != T_RUNNING or job is None or job.deleting or job.active:
            continue
        tell = decide_result(trial, job, direction)
        b.plan.tells.append(tell)
        states[trial.number] = tell.state
        if tell.value is not None:
            values[trial.number] = tell.value
        kind = {T_COMPLETE: "TrialCompleted", T_PRUNED: "TrialPruned", T_FAIL: "TrialFailed"}[tell.state]
        b.event("Warning" if tell.state == T_FAIL else "Normal", kind, tell.reason)

    counts = count_states(states)
    running_numbers = sorted(n for n, state in states.items() if state == T_RUNNING)
    # Jobs still active for a trial that is no longer RUNNING (told by someone else, or from a
    # storage that lost the trial): stop them; they hold a slot until they are gone.
    stray = [j for n, j in own.items() if j.active and states.get(n) != T_RUNNING]
    b.plan.delete_jobs = sorted(j.name for j in stray + stale if not j.deleting)
    if any(not j.deleting for j in stale):
        b.event(
            "Warning", "StaleTrialJobs",
            f"Deleting trial job(s) of trials the database does not hold: "
            f"{', '.join(sorted(j.name for j in stale if not j.deleting))}",
        )  # fmt: skip
    stray += [j for j in stale if j.active]

    best = best_trial(trials, states, values, direction)
    best_value = values.get(best.number) if best else None
    if best is not None and best_value is not None:
        entry = _best_entry(ref, best, best_value, own)
        old_best = old.get("bestTrial") or {}
        if old_best.get("number") != entry["number"]:
            b.event(
                "Normal", "NewBestTrial",
                f"Trial {best.number} is the best so far: {metric}={best_value:.6g} "
                f"({format_params(best.params)})",
            )  # fmt: skip
        s["bestTrial"] = entry

    # ---- too many failures: stop the running trials and fail the study.
    if counts.failed > spec.max_failed_trials:
        message = f"{counts.failed} trial(s) failed, more than maxFailedTrials ({spec.max_failed_trials})"
        for number in running_numbers:
            b.plan.tells.append(Tell(number, T_FAIL, None, "the study failed"))
            states[number] = T_FAIL
            job = own.get(number)
            if job is not None and job.active and not job.deleting:
                b.plan.delete_jobs.append(job.name)
        b.plan.delete_jobs = sorted(set(b.plan.delete_jobs))
        counts = count_states(states)
        _set_counts(s, counts, 0, max_trials)
        s["completionTime"] = st.format_time(now)
        b.cond(COND_FAILED, True, "TooManyFailedTrials", message)
        b.clear(COND_RUNNING, "TooManyFailedTrials", message)
        b.event("Warning", "Failed", message)
        _finalize(b, spec, FAILED, best, best_value, counts, tracking, model_name)
        return b.finish(FAILED, message)

    # ---- jobs for asked trials that have none, then new trials while there is room.
    # Stale jobs hold names new trials may need: ask nothing until they are gone.
    stale_names = {j.name for j in stale}
    waiting_on_foreign = sorted(stale_names)
    for number in running_numbers:
        job = own.get(number)
        if job is not None:
            continue
        name = trial_job_name(ref.name, number)
        if name in foreign:
            waiting_on_foreign.append(name)
        elif name in stale_names:
            continue
        elif blocked is None:
            b.plan.create_trials.append(number)

    total = len(trials)
    budget = max_trials - counts.finished - counts.running
    if spec.algorithm.name == "grid":
        budget = min(budget, spec.grid_size() - total)
    slots = spec.parallelism - counts.running - len(stray)
    if blocked is None and not waiting_on_foreign:
        b.plan.ask = max(0, min(slots, budget))
    running = counts.running + b.plan.ask
    _set_counts(s, counts, b.plan.ask, max_trials)

    grid_done = spec.algorithm.name == "grid" and total >= spec.grid_size()
    if running == 0 and (counts.finished >= max_trials or grid_done):
        if counts.finished >= max_trials:
            message = f"All {max_trials} trials finished"
        else:
            message = f"The grid is exhausted after {counts.finished} finished trial(s)"
        message += f" ({counts.completed} completed, {counts.pruned} pruned, {counts.failed} failed)"
        if best is not None and best_value is not None:
            message += f"; best {metric}={best_value:.6g} (trial {best.number})"
        s["completionTime"] = st.format_time(now)
        b.cond(COND_SUCCEEDED, True, "AllTrialsFinished", message)
        b.clear(COND_RUNNING, "AllTrialsFinished", message)
        b.event("Normal", "Succeeded", message)
        _finalize(b, spec, SUCCEEDED, best, best_value, counts, tracking, model_name)
        return b.finish(SUCCEEDED, message)

    message = (
        f"{counts.finished}/{max_trials} trials finished ({counts.completed} completed, "
        f"{counts.pruned} pruned, {counts.failed} failed), {running} running"
    )
    if best is not None and best_value is not None:
        message += f"; best {metric}={best_value:.6g} (trial {best.number})"
    if waiting_on_foreign:
        message = (
            f"Waiting for TrainingJob(s) {', '.join(waiting_on_foreign)} of an earlier study or "
            "trial with the same name to go; " + message
        )
    if blocked is not None:
        message = f"{blocked}; " + message
    if running > 0 or counts.finished > 0 or counts.failed > 0:
        if "startTime" not in s:
            s["startTime"] = st.format_time(now)
        if old_phase != RUNNING:
            b.cond(COND_RUNNING, True, "TrialsRunning", "Trials are running")
            b.event("Normal", "Running", message)
        return b.finish(RUNNING, message)
    if old_phase != PENDING:
        b.event("Normal", "Pending", message)
    return b.finish(PENDING, message)


def _set_counts(s: dict[str, Any], counts: Counts, asked: int, max_trials: int) -> None:
    s["trials"] = {
        "running": counts.running + asked,
        "completed": counts.completed,
        "pruned": counts.pruned,
        "failed": counts.failed,
    }
    s["trialsDone"] = f"{counts.finished}/{max_trials}"


def status_delta(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge-patch that turns `old` into `new` (None removes a key); {} when equal."""
    old = old or {}
    delta = {k: v for k, v in new.items() if old.get(k) != v}
    for key in old:
        if key not in new and key in MANAGED_STATUS_KEYS:
            delta[key] = None
    return delta
