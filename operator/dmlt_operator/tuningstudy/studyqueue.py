"""The TuningStudy work queue: watch events in, one reconcile per study and burst out.

kopf keeps two indexes: the studies, and the trial TrainingJobs of each study (by the study
label every trial job carries), as the few facts the planner needs (`summarize_trial_job`), not
whole objects. A study's own change marks it; any change of one of its trial jobs (created,
Running, ended, deleted) marks it a moment later, so that the events of one burst (100 trial
jobs created, their status written) make one reconcile. Workers (core/workqueue.py, shared
with TrainingJobs) snapshot the study and its trial jobs on the event loop and reconcile in
kopf's thread pool; MLflow waits come back as a wake-up time, and a long jittered resync is the
safety net. The reconcile itself (`sync`, tuningstudy/handlers.py) reads the Optuna database,
which no watch covers: what changes there without a trial job changing is the trainer's own
reports, which the study only reads once the trial's job has ended.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from dmlt_operator.core.objectqueue import ObjectQueue, Outcome, resource_version
from dmlt_operator.core.workqueue import GONE
from dmlt_operator.tuningstudy.build import LABEL_STUDY
from dmlt_operator.tuningstudy.trials import TrialJob, summarize_trial_job

StudyKey = tuple[str, str]
STUDY_WORKERS = 4
"""Studies reconciled at once (each holds a thread of kopf's pool and a database connection)."""
TRIAL_EVENTS_WINDOW_S = 0.2
"""A trial job's change wakes its study this much later, so that the events of one burst (the
trial jobs a reconcile created, each one's status written) make one reconcile, not one each.
A trial job that ended wakes it at once: its slot is free for the next trial."""
EXPECTED_TRIALS_S = 5.0
"""How long a study waits for the trial jobs it created to show in the watch before it plans
without them."""
STALE_RETRY_S = 1.0
"""Plan again this soon when the view is behind our own writes (the events normally come first)."""

Sync = Callable[[dict[str, Any], list[TrialJob], kopf.Memo], Outcome]
"""One reconcile of a study in a worker thread: (the study, its trial jobs, the memo)."""


@dataclass(slots=True, kw_only=True)
class StudyQueue(ObjectQueue[StudyKey]):
    """The TuningStudy work queue (its `objects`: the studies index) and the trial jobs index."""

    trials: Any = field(default_factory=dict)
    """(namespace, study) → TrialJob summaries of the trial jobs with that study's label."""
    sync: Sync | None = None

    def mark(self, key: StudyKey, memo: kopf.Memo, urgent: bool = False, after: float = 0.0) -> None:
        """Queue `key` in `after` seconds; the first mark starts the workers."""
        self.start(functools.partial(run_study, self, memo), "tuningstudy")
        self.queue.add_after(key, after, urgent)

    def snapshot(self, key: StudyKey) -> tuple[dict[str, Any], list[TrialJob]] | None:
        """The study (None when gone) and its trial jobs, as of now (on the event loop)."""
        body = self.current(key)
        if body is None:
            return None
        return body, list(self.trials.get(key, []))


async def tuningstudies(namespace: str, name: str, body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, name) → the study as last seen (a plain dict of the watch event's object)."""
    return {(namespace, name): dict(body)}


async def study_trials(namespace: str, labels: Mapping[str, str], body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, study) → the summary of one of its trial jobs. `async`: it runs on the event
    loop, so a worker's snapshot never meets the index half-updated."""
    summary = summarize_trial_job(body)
    if summary is None:
        return {}
    return {(namespace, labels[LABEL_STUDY]): summary}


async def study_event(namespace: str, name: str, body: Any, memo: kopf.Memo, **_: Any) -> None:
    """Any change of a study wakes it, except the change our own status write made."""
    sq: StudyQueue | None = memo.get("study_queue")
    key = (namespace, name)
    if sq is not None and not sq.own_write(key, resource_version(body)):
        sq.mark(key, memo)


async def trial_job_event(
    namespace: str, labels: Mapping[str, str], body: Any, memo: kopf.Memo, **_: Any
) -> None:
    """Any change of a trial job wakes its study, before studies that only changed themselves:
    a trial that ended frees a slot for the next."""
    sq: StudyQueue | None = memo.get("study_queue")
    if sq is not None:
        trial = summarize_trial_job(body)
        after = 0.0 if trial is not None and not trial.active else TRIAL_EVENTS_WINDOW_S
        sq.mark((namespace, labels[LABEL_STUDY]), memo, urgent=True, after=after)


async def run_study(sq: StudyQueue, memo: kopf.Memo, key: StudyKey) -> float | None:
    """A worker's run for one study: snapshot on the loop, reconcile in the thread pool; when
    to wake it again. Raises (for a backoff) when the reconcile failed."""
    loop = asyncio.get_running_loop()
    seen = sq.snapshot(key)
    if seen is None:
        return GONE
    body, jobs = seen
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return GONE  # its on.delete handler stops the trials; its last event finds it gone
    if sq.awaiting(key, [j.name for j in jobs], loop.time()):
        return STALE_RETRY_S  # their watch events wake it sooner
    assert sq.sync is not None
    context = contextvars.copy_context()  # kopf's event poster and our step marker
    call = functools.partial(sq.sync, body, jobs, memo)
    outcome = await loop.run_in_executor(sq.executor, context.run, call)
    return sq.settle(key, body, outcome, loop.time(), EXPECTED_TRIALS_S)
