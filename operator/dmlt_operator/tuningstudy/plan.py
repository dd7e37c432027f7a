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

The decision is a sequence of named steps: observe, tell finished trials, best trial, failure
budget, schedule (jobs for asked trials, new asks), and the message with the phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dmlt_operator.core import conditions
from dmlt_operator.core.conditions import FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL
from dmlt_operator.core.plan import Event, StatusBuilder
from dmlt_operator.trainingjob.progress import finite_float
from dmlt_operator.tuningstudy.build import StudyRef, format_params, trial_job_name
from dmlt_operator.tuningstudy.spec import TuningStudySpec
from dmlt_operator.tuningstudy.trials import (
    T_COMPLETE,
    T_FAIL,
    T_PRUNED,
    T_RUNNING,
    TrialJob,
    TrialRecord,
)

PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED)

COND_STORAGE = "StorageReady"
COND_MODEL = "ModelRegistered"
MODEL_RETRY_REASON = "RegistrationFailed"

MANAGED_STATUS = conditions.ManagedStatus(
    frozenset(
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
)
MANAGED_STATUS_KEYS = MANAGED_STATUS.keys
status_delta = MANAGED_STATUS.delta


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
    """Trials by state; a pruned trial counts as finished, a failed one does not."""

    running: int
    completed: int
    pruned: int
    failed: int

    @property
    def finished(self) -> int:
        return self.completed + self.pruned


def count_states(states: Mapping[int, str]) -> Counts:
    values = list(states.values())
    return Counts(*(values.count(state) for state in (T_RUNNING, T_COMPLETE, T_PRUNED, T_FAIL)))


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
        value = finite_float(values.get(trial.number))
        if value is None:
            continue
        better = value > best_value if direction == "maximize" else value < best_value
        if best is None or better:
            best, best_value = trial, value
    return best


class StudyBuilder(StatusBuilder[StudyPlan]):
    """The study's status builder."""

    ref: StudyRef


@dataclass(frozen=True, slots=True)
class Best:
    """The best trial so far and its value."""

    trial: TrialRecord
    value: float


@dataclass(frozen=True, kw_only=True, slots=True)
class MlflowSide:
    """The study's MLflow side as the handler found it this tick."""

    tracking: bool
    """An MLflow server is configured."""
    parent_run_id: str | None
    """The study's parent run there."""
    blocked: str | None
    """Why no trial may start now (e.g. the parent run cannot be created yet)."""
    model_name: str
    """The registered model the best trial's model becomes a version of."""


@dataclass(slots=True)
class Observed:
    """What one tick sees of a study; the tell step updates `states` and `values`."""

    ref: StudyRef
    spec: TuningStudySpec
    trials: Sequence[TrialRecord]
    own: dict[int, TrialJob]
    """The job that runs each trial, by trial number."""
    stale: list[TrialJob]
    """The study's jobs of trials the database no longer holds: they go, and hold their name until gone."""
    foreign: set[str]
    """Names of TrainingJobs with the study's labels that belong to another object."""
    states: dict[int, str]
    values: dict[int, float]
    mlflow: MlflowSide

    @property
    def direction(self) -> str:
        return self.spec.objective.direction

    def counts(self) -> Counts:
        return count_states(self.states)

    def running_numbers(self) -> list[int]:
        return sorted(n for n, state in self.states.items() if state == T_RUNNING)

    def best(self) -> Best | None:
        trial = best_trial(self.trials, self.states, self.values, self.direction)
        return None if trial is None else Best(trial, self.values[trial.number])


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the schedule step decided: how many trials run after it, and whose jobs are awaited."""

    running: int
    waiting_on_foreign: list[str]


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


def _finalize(b: StudyBuilder, o: Observed, phase: str, best: Best | None) -> None:
    """Plan the MLflow wrap-up; conditions that need no I/O are settled here."""
    counts = o.counts()
    metrics = {
        "trials_completed": float(counts.completed),
        "trials_pruned": float(counts.pruned),
        "trials_failed": float(counts.failed),
    }
    tags = {"dmlt.study_phase": phase}
    if best is not None:
        metrics[f"best_{o.spec.objective.metric}"] = best.value
        metrics["best_trial"] = float(best.trial.number)
        tags["dmlt.best_trial"] = str(best.trial.number)
    register = None
    if not o.mlflow.tracking:
        b.cond(COND_MODEL, False, "TrackingDisabled", "No MLflow tracking URI: nothing to register")
    elif phase == FAILED:
        b.cond(COND_MODEL, False, "StudyFailed", "The study failed: no model is registered")
    elif best is None:
        b.cond(COND_MODEL, False, "NoCompletedTrial", "No trial completed: no model to register")
    elif best.trial.model_uri is None:
        b.cond(COND_MODEL, False, "NoModel", f"The best trial ({best.trial.number}) logged no model")
    else:
        t = best.trial
        register = RegisterModel(o.mlflow.model_name, t.model_uri, t.mlflow_run_id, t.number, best.value)
    b.plan.finalize = Finalize("FINISHED" if phase == SUCCEEDED else "FAILED", register, metrics, tags)


def observe(
    b: StudyBuilder,
    spec: TuningStudySpec,
    trials: Sequence[TrialRecord],
    jobs: Sequence[TrialJob],
    mlflow: MlflowSide,
) -> Observed:
    """Which job runs which trial and which jobs are stale; the study's identity in status."""
    ref = b.ref
    b.status["studyName"] = ref.optuna_name
    if mlflow.parent_run_id:
        b.status["parentRunId"] = mlflow.parent_run_id
    if not any(c.get("type") == conditions.COND_CREATED for c in b.conditions):
        b.cond(conditions.COND_CREATED, True, "StudyCreated", f"Study {ref.optuna_name} created")
    by_number = {t.number: t for t in trials}
    mine = [j for j in jobs if j.owner_uid == ref.uid and j.number is not None]
    own = {j.number: j for j in mine if j.runs(by_number.get(j.number))}
    return Observed(
        ref=ref,
        spec=spec,
        trials=trials,
        own=own,
        stale=[j for j in mine if j.number not in own or own[j.number] is not j],
        foreign={j.name for j in jobs if j.owner_uid != ref.uid},
        states={t.number: t.state for t in trials},
        values={t.number: t.value for t in trials if t.value is not None},
        mlflow=mlflow,
    )


def plan_ended(b: StudyBuilder, o: Observed) -> StudyPlan | None:
    """An ended study decides nothing more; only its MLflow wrap-up may be left."""
    old, old_phase = b.old, b.old_phase
    if old_phase not in TERMINAL:
        return None
    if needs_finalize(old):
        _finalize(b, o, old_phase, o.best())
    b.plan.delete_jobs = sorted(
        j.name for n, j in o.own.items() if j.active and not j.deleting and o.states.get(n) != T_RUNNING
    )
    b.plan.delete_jobs += sorted(j.name for j in o.stale if not j.deleting)
    return b.finish(old_phase, old.get("message") or old_phase)


_TOLD_EVENT = {T_COMPLETE: "TrialCompleted", T_PRUNED: "TrialPruned", T_FAIL: "TrialFailed"}


def tell_finished_trials(b: StudyBuilder, o: Observed) -> None:
    """Tell the results of trials whose job ended (still RUNNING in the database)."""
    for trial in sorted(o.trials, key=lambda t: t.number):
        job = o.own.get(trial.number)
        if trial.state != T_RUNNING or job is None or job.deleting or job.active:
            continue
        tell = decide_result(trial, job, o.direction)
        b.plan.tells.append(tell)
        o.states[trial.number] = tell.state
        if tell.value is not None:
            o.values[trial.number] = tell.value
        b.event("Warning" if tell.state == T_FAIL else "Normal", _TOLD_EVENT[tell.state], tell.reason)


def stop_stray_jobs(b: StudyBuilder, o: Observed) -> list[TrialJob]:
    """Jobs still active for a trial that is no longer RUNNING (told by someone else, or from a
    storage that lost the trial) are stopped, and stale jobs deleted; the active ones among
    them (returned) hold a slot until they are gone."""
    stray = [j for n, j in o.own.items() if j.active and o.states.get(n) != T_RUNNING]
    b.plan.delete_jobs = sorted(j.name for j in stray + o.stale if not j.deleting)
    stale_names = sorted(j.name for j in o.stale if not j.deleting)
    if stale_names:
        b.event(
            "Warning", "StaleTrialJobs",
            f"Deleting trial job(s) of trials the database does not hold: {', '.join(stale_names)}",
        )  # fmt: skip
    return stray + [j for j in o.stale if j.active]


def record_best(b: StudyBuilder, o: Observed) -> Best | None:
    """status.bestTrial, announced when it changes."""
    best = o.best()
    if best is None:
        return None
    entry = _best_entry(o.ref, best.trial, best.value, o.own)
    if (b.old.get("bestTrial") or {}).get("number") != entry["number"]:
        b.event(
            "Normal", "NewBestTrial",
            f"Trial {best.trial.number} is the best so far: {o.spec.objective.metric}={best.value:.6g} "
            f"({format_params(best.trial.params)})",
        )  # fmt: skip
    b.status["bestTrial"] = entry
    return best


def plan_failure_budget(b: StudyBuilder, o: Observed, best: Best | None) -> StudyPlan | None:
    """More failed trials than maxFailedTrials: stop the running trials and fail the study."""
    failed = o.counts().failed
    if failed <= o.spec.max_failed_trials:
        return None
    message = f"{failed} trial(s) failed, more than maxFailedTrials ({o.spec.max_failed_trials})"
    for number in o.running_numbers():
        b.plan.tells.append(Tell(number, T_FAIL, None, "the study failed"))
        o.states[number] = T_FAIL
        job = o.own.get(number)
        if job is not None and job.active and not job.deleting:
            b.plan.delete_jobs.append(job.name)
    b.plan.delete_jobs = sorted(set(b.plan.delete_jobs))
    _set_counts(b.status, o.counts(), 0, o.spec.effective_max_trials)
    b.ended(conditions.COND_FAILED, "TooManyFailedTrials", message, (conditions.COND_RUNNING,))
    b.event("Warning", "Failed", message)
    _finalize(b, o, FAILED, best)
    return b.finish(FAILED, message)


def schedule(b: StudyBuilder, o: Observed, stray: Sequence[TrialJob]) -> Schedule:
    """Jobs for asked trials that have none, then new trials while there is room. Stale jobs
    (and jobs of another owner) hold names new trials may need: ask nothing until they are gone."""
    stale_names = {j.name for j in o.stale}
    waiting_on_foreign = sorted(stale_names)
    for number in o.running_numbers():
        if number in o.own:
            continue
        name = trial_job_name(o.ref.name, number)
        if name in o.foreign:
            waiting_on_foreign.append(name)
        elif name not in stale_names and o.mlflow.blocked is None:
            b.plan.create_trials.append(number)
    counts, spec = o.counts(), o.spec
    budget = spec.effective_max_trials - counts.finished - counts.running
    if spec.algorithm.name == "grid":
        budget = min(budget, spec.grid_size() - len(o.trials))
    slots = spec.parallelism - counts.running - len(stray)
    if o.mlflow.blocked is None and not waiting_on_foreign:
        b.plan.ask = max(0, min(slots, budget))
    _set_counts(b.status, counts, b.plan.ask, spec.effective_max_trials)
    return Schedule(counts.running + b.plan.ask, waiting_on_foreign)


def _best_suffix(o: Observed, best: Best | None) -> str:
    if best is None:
        return ""
    return f"; best {o.spec.objective.metric}={best.value:.6g} (trial {best.trial.number})"


def plan_outcome(b: StudyBuilder, o: Observed, best: Best | None, sched: Schedule) -> StudyPlan:
    """The phase and message: succeeded once every trial finished (or the grid is exhausted),
    else running or pending, saying what is awaited."""
    counts, spec, max_trials = o.counts(), o.spec, o.spec.effective_max_trials
    tally = f"{counts.completed} completed, {counts.pruned} pruned, {counts.failed} failed"
    grid_done = spec.algorithm.name == "grid" and len(o.trials) >= spec.grid_size()
    if sched.running == 0 and (counts.finished >= max_trials or grid_done):
        if counts.finished >= max_trials:
            message = f"All {max_trials} trials finished"
        else:
            message = f"The grid is exhausted after {counts.finished} finished trial(s)"
        message += f" ({tally})" + _best_suffix(o, best)
        b.ended(conditions.COND_SUCCEEDED, "AllTrialsFinished", message, (conditions.COND_RUNNING,))
        b.event("Normal", "Succeeded", message)
        _finalize(b, o, SUCCEEDED, best)
        return b.finish(SUCCEEDED, message)

    message = f"{counts.finished}/{max_trials} trials finished ({tally}), {sched.running} running"
    message += _best_suffix(o, best)
    if sched.waiting_on_foreign:
        message = (
            f"Waiting for TrainingJob(s) {', '.join(sched.waiting_on_foreign)} of an earlier study or "
            "trial with the same name to go; " + message
        )
    if o.mlflow.blocked is not None:
        message = f"{o.mlflow.blocked}; " + message
    if sched.running > 0 or counts.finished > 0 or counts.failed > 0:
        if "startTime" not in b.status:
            b.status["startTime"] = conditions.format_time(b.now)
        if b.old_phase != RUNNING:
            b.cond(conditions.COND_RUNNING, True, "TrialsRunning", "Trials are running")
            b.event("Normal", "Running", message)
        return b.finish(RUNNING, message)
    if b.old_phase != PENDING:
        b.event("Normal", "Pending", message)
    return b.finish(PENDING, message)


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
    b = StudyBuilder(ref, dict(status or {}), now, MANAGED_STATUS, StudyPlan)
    side = MlflowSide(
        tracking=tracking, parent_run_id=parent_run_id, blocked=blocked, model_name=model_name or ref.name
    )
    o = observe(b, spec, trials, jobs, side)
    ended = plan_ended(b, o)
    if ended is not None:
        return ended
    tell_finished_trials(b, o)
    stray = stop_stray_jobs(b, o)
    best = record_best(b, o)
    failed = plan_failure_budget(b, o, best)
    if failed is not None:
        return failed
    return plan_outcome(b, o, best, schedule(b, o, stray))


def _set_counts(s: dict[str, Any], counts: Counts, asked: int, max_trials: int) -> None:
    s["trials"] = {
        "running": counts.running + asked,
        "completed": counts.completed,
        "pruned": counts.pruned,
        "failed": counts.failed,
    }
    s["trialsDone"] = f"{counts.finished}/{max_trials}"


def requeue_after(status: Mapping[str, Any], blocked: str | None, retry_s: float) -> float | None:
    """When the study must be looked at again though no watch event may come; None: only when
    one does (a trial job changes, the study changes) or at the resync.

    A study waits on watched objects for almost everything: a trial job ending, a stale or
    foreign job going. Only MLflow is outside the watch: while the parent run cannot be created
    (`blocked`) or the best model's registration is to be retried, every `retry_s`."""
    if blocked is not None or needs_finalize(status):
        return retry_s
    return None
