"""TuningStudies on the work queue: watch events of a study and of its trial jobs mark the study,
a burst of them makes one reconcile, our own status write wakes nothing, the workers reconcile
from kopf's indexes (no LIST of trial jobs), write only a changed status, and a finished trial
is replaced on its job's event, with no timer."""

from __future__ import annotations

import asyncio
import logging
import time

import kopf
import pytest
from dmlt_operator.core.handlers import ReconcileFailed
from dmlt_operator.core.objectqueue import Outcome
from dmlt_operator.core.workqueue import GONE, Requeue, WorkQueue
from dmlt_operator.tuningstudy import handlers as h
from dmlt_operator.tuningstudy import plan as sp
from dmlt_operator.tuningstudy import studyqueue as sq
from dmlt_operator.tuningstudy.trials import TrialJob

from tests.helpers.study_harness import Harness

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test")
KEY = ("ns", "study")
STUDY_LABELS = {"dmlt.io/study": "study"}


def study(rv: str = "1", **meta) -> dict:
    return {"metadata": {"name": "study", "namespace": "ns", "resourceVersion": rv, **meta}, "spec": {}}


def trial_job(number: int, phase: str = "") -> dict:
    return {
        "metadata": {
            "name": f"study-t{number}",
            "namespace": "ns",
            "uid": f"uid-{number}",
            "labels": {**STUDY_LABELS, "dmlt.io/trial": str(number)},
            "ownerReferences": [{"kind": "TuningStudy", "uid": "study-uid", "controller": True}],
        },
        "status": {"phase": phase} if phase else {},
    }


def queue(objects=None, trials=None, sync=None) -> sq.StudyQueue:
    return sq.StudyQueue(WorkQueue(300), objects or {}, None, trials=trials or {}, sync=sync)


# ---- indexes


def test_the_trial_index_keeps_a_summary_by_study():
    entry = asyncio.run(sq.study_trials(namespace="ns", labels=STUDY_LABELS, body=trial_job(3, "Running")))
    ((key, summary),) = entry.items()
    assert key == KEY and isinstance(summary, TrialJob)
    assert (summary.name, summary.number, summary.phase, summary.owner_uid) == ("study-t3", 3, "Running", "study-uid")
    assert asyncio.run(sq.study_trials(namespace="ns", labels=STUDY_LABELS, body={"metadata": {}})) == {}


def test_the_study_index_keeps_the_study():
    assert asyncio.run(sq.tuningstudies(namespace="ns", name="study", body=study())) == {KEY: study()}


RUNNING_TRIAL = {"metadata": {"name": "study-t0"}, "status": {"phase": "Running"}}

# ---- wake-ups


def test_a_burst_of_trial_job_events_wakes_the_study_once_a_moment_later():
    async def scenario():
        q = queue()
        q.tasks = [asyncio.current_task()]  # as if the workers ran: none takes a key here
        memo = kopf.Memo(study_queue=q)
        q.queue.add(("ns", "other"))
        for _ in range(100):
            await sq.trial_job_event(namespace="ns", labels=STUDY_LABELS, body=RUNNING_TRIAL, memo=memo)
        assert len(q.queue) == 1  # only the other study yet: the burst waits for its window
        await asyncio.sleep(sq.TRIAL_EVENTS_WINDOW_S + 0.1)
        assert len(q.queue) == 2
        assert await q.queue.get() == KEY  # a trial's change goes first
        q.queue.close()

    asyncio.run(scenario())


def test_a_trial_job_that_ended_wakes_its_study_at_once():
    async def scenario():
        q = queue()
        q.tasks = [asyncio.current_task()]
        memo = kopf.Memo(study_queue=q)
        ended = {**RUNNING_TRIAL, "status": {"phase": "Succeeded"}}
        await sq.trial_job_event(namespace="ns", labels=STUDY_LABELS, body=ended, memo=memo)
        assert len(q.queue) == 1 and await q.queue.get() == KEY
        q.queue.close()

    asyncio.run(scenario())


def test_a_study_event_wakes_it_but_not_for_our_own_status_write():
    async def scenario():
        q = queue()
        q.tasks = [asyncio.current_task()]
        memo = kopf.Memo(study_queue=q)
        q.written[KEY] = (frozenset({"1"}), study(rv="2"))
        await sq.study_event(namespace="ns", name="study", body=study(rv="2"), memo=memo)
        assert len(q.queue) == 0
        await sq.study_event(namespace="ns", name="study", body=study(rv="3"), memo=memo)
        assert len(q.queue) == 1
        q.queue.close()

    asyncio.run(scenario())


# ---- a worker's run


def test_a_run_reconciles_from_the_indexes_and_remembers_what_it_wrote_and_created():
    seen = []
    summaries = [TrialJob("study-t0", 0, "study-uid")]

    def sync(body, jobs, memo):
        seen.append((body, jobs))
        return Outcome(None, study(rv="2"), created=("study-t1",))

    q = queue({KEY: [study()]}, {KEY: summaries}, sync)

    async def scenario():
        assert await sq.run_study(q, kopf.Memo(), KEY) is None
        assert seen == [(study(), summaries)]
        assert q.own_write(KEY, "2")
        # study-t1 is not in the index yet: no plan from that view, a retry soon instead
        assert await sq.run_study(q, kopf.Memo(), KEY) == sq.STALE_RETRY_S
        assert len(seen) == 1
        q.trials[KEY] = [*summaries, TrialJob("study-t1", 1, "study-uid")]
        q.objects[KEY] = [study(rv="2")]
        await sq.run_study(q, kopf.Memo(), KEY)
        assert len(seen) == 2 and seen[1][0]["metadata"]["resourceVersion"] == "2"

    asyncio.run(scenario())


def test_a_study_gone_or_being_deleted_is_not_reconciled():
    calls = []
    q = queue({}, {}, lambda *a: calls.append(a))
    assert asyncio.run(sq.run_study(q, kopf.Memo(), KEY)) == GONE
    q.objects[KEY] = [study(deletionTimestamp="2026-01-01T00:00:00Z")]
    assert asyncio.run(sq.run_study(q, kopf.Memo(), KEY)) == GONE
    assert calls == []


def test_a_failed_or_refused_run_is_retried_with_backoff():
    q = queue({KEY: [study()]}, {}, lambda *a: Outcome(error="Waiting (retrying): boom"))
    with pytest.raises(ReconcileFailed, match="boom"):
        asyncio.run(sq.run_study(q, kopf.Memo(), KEY))
    q.sync = lambda *a: Outcome(refused=True)
    with pytest.raises(Requeue):
        asyncio.run(sq.run_study(q, kopf.Memo(), KEY))


# ---- sync_study: the reconcile in a worker thread


def test_sync_writes_the_status_once_onto_the_version_it_planned_from(tmp_path):
    hs = Harness(tmp_path)
    hs.body["metadata"]["resourceVersion"] = "5"
    hs.kube.studies["study"] = hs.body
    first = h.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG)
    assert first.error is None and first.requeue_after is None  # nothing to wait for but events
    assert sorted(first.created) == ["study-t0", "study-t1"]
    assert [(n, v) for n, _, v in hs.kube.status_patches] == [("study", "5")]
    assert first.written["status"]["phase"] == "Running" and hs.body["metadata"]["resourceVersion"] == "6"
    again = h.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG)
    assert again.written is None and not again.created
    assert len(hs.kube.status_patches) == 1  # nothing changed: nothing written


def test_sync_on_a_stale_view_plans_again_soon(tmp_path):
    hs = Harness(tmp_path)
    hs.kube.stale = True
    outcome = h.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG)
    assert outcome.requeue_after == sq.STALE_RETRY_S and outcome.written is None
    assert len(outcome.created) == 2  # made anyway: the next plan finds them


def test_sync_does_not_list_trial_jobs(tmp_path, monkeypatch):
    hs = Harness(tmp_path)
    monkeypatch.setattr(hs.kube, "list_trainingjobs", lambda *a: pytest.fail("listed trial jobs"))
    assert h.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG).error is None


def test_a_study_waiting_for_mlflow_asks_to_be_woken(tmp_path):
    hs = Harness(tmp_path)
    hs.mlflow.down = True
    outcome = h.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG)
    assert outcome.requeue_after == hs.config.study_reconcile_interval_s and not outcome.created
    hs.mlflow.down = False
    outcome = h.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG)
    assert outcome.requeue_after is None and len(outcome.created) == 2


def test_requeue_after_is_only_for_what_no_event_announces():
    assert sp.requeue_after({"phase": "Running"}, None, 5.0) is None
    assert sp.requeue_after({"phase": "Running"}, "Waiting for MLflow", 5.0) == 5.0
    retry = {"type": sp.COND_MODEL, "status": "False", "reason": sp.MODEL_RETRY_REASON}
    assert sp.requeue_after({"phase": "Succeeded", "conditions": [retry]}, None, 5.0) == 5.0
    done = {**retry, "status": "True", "reason": "Registered"}
    assert sp.requeue_after({"phase": "Succeeded", "conditions": [done]}, None, 5.0) is None


# ---- the whole loop: events in, trials replaced


class TrialIndex:
    """kopf's trial index as the worker reads it: the fake API's trial jobs, summarized."""

    def __init__(self, hs: Harness) -> None:
        self.hs = hs

    def get(self, key, default=None):
        return self.hs.trial_jobs() if key == KEY else default


def test_a_finished_trial_is_replaced_on_its_jobs_event_with_no_timer(tmp_path):
    hs = Harness(tmp_path, maxTrials=4, parallelism=2)
    hs.body["metadata"]["resourceVersion"] = "1"
    hs.kube.studies["study"] = hs.body
    memo = hs.memo()

    def sync(body, jobs, memo):
        return h.sync_study(body, jobs, memo, LOG)

    async def until(check, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def scenario():
        q = sq.StudyQueue(
            WorkQueue(300), {KEY: [hs.body]}, None, workers=2, trials=TrialIndex(hs), sync=sync
        )
        memo.study_queue = q
        await sq.study_event(namespace="ns", name="study", body=hs.body, memo=memo)
        await until(lambda: len(hs.kube.created) == 2)
        await asyncio.sleep(0.5)
        assert len(hs.kube.created) == 2  # nothing more happens without an event
        hs.run_trainers()
        started = time.monotonic()
        for _ in range(2):  # each finished job's MODIFIED event
            await sq.trial_job_event(namespace="ns", labels=STUDY_LABELS, body=RUNNING_TRIAL, memo=memo)
        await until(lambda: len(hs.kube.created) == 4)
        assert time.monotonic() - started < 2.0  # the goal: a finished trial replaced within 2 s
        hs.run_trainers()
        await sq.trial_job_event(namespace="ns", labels=STUDY_LABELS, body=RUNNING_TRIAL, memo=memo)
        await until(lambda: hs.body["status"].get("phase") == "Succeeded")
        assert q.queue.delayed(KEY) > 200  # only the resync is left
        await q.stop()

    asyncio.run(scenario())
    assert hs.db_states() == {"COMPLETE": 4}
    assert hs.kube.created == [f"study-t{n}" for n in range(4)]
