"""The TrainingJob planner's named steps, one at a time: observe → finished → suspended →
failures and gang restart → progress and its waiting message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec

pytestmark = pytest.mark.unit

UID = "job-uid"
JOB = JobRef(name="ddp", namespace="ns", uid=UID, generation=2)
T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def spec(replicas: int = 2, **run_policy):
    return parse_spec({"image": "img", "replicas": replicas, "runPolicy": run_policy})


def pod(rank, phase="Running", attempt=0, owner=UID, deleting=False, reason=None, message=None):
    return pd.PodSummary(
        name=f"ddp-{rank}", rank=rank, attempt=attempt, owner_uid=owner, uid=f"u{rank}", phase=phase,
        deleting=deleting, ready=phase == "Running", started=phase != "Pending", reason=reason,
        message=message,
    )  # fmt: skip


def observed(status=None, pods=(), s=None, now=T0):
    b = rc.JobBuilder(JOB, dict(status or {}), now, rc.MANAGED_STATUS, rc.Plan)
    return b, rc.observe(b, s or spec(), list(pods), {})


# --------------------------------------------------------------------------- observe


def test_observe_takes_the_newest_attempt_and_sorts_pods_by_owner():
    b, o = observed(
        {"phase": "Running", "attempt": 1, "restarts": 1},
        [pod(0, attempt=2), pod(1, attempt=1), pod(1, owner="other")],
    )
    assert b.status["attempt"] == 2 and b.status["restarts"] == 1
    assert b.status["observedGeneration"] == 2
    assert set(o.current) == {0} and len(o.own) == 2 and o.foreign == {"ddp-1"}
    assert [r["state"] for r in b.status["ranks"]] == [pd.RUNNING, pd.ABSENT]
    assert b.status["ready"] == "1/2"


def test_observe_announces_creation_once():
    b, _ = observed()
    assert [c["type"] for c in b.conditions] == [rc.COND_CREATED]
    b, _ = observed({"phase": "Pending"})
    assert b.conditions == []


# --------------------------------------------------------------------------- finished


def test_plan_finished_leaves_a_running_job_to_the_next_steps():
    assert rc.plan_finished(*observed({"phase": "Running"})) is None


def test_plan_finished_keeps_the_record_and_cleans_running_pods():
    ranks = [{"rank": 0, "state": "Succeeded"}]
    b, o = observed(
        {"phase": "Failed", "message": "boom", "ranks": ranks, "ready": "0/2"},
        [pod(0), pod(1, phase="Succeeded")],
    )
    plan = rc.plan_finished(b, o)
    assert plan.status["phase"] == rc.FAILED and plan.status["message"] == "boom"
    assert plan.status["ranks"] == ranks and plan.delete_pods == ["ddp-0"]
    assert not plan.delete_job and plan.events == []


def test_plan_finished_deletes_the_job_after_its_ttl():
    done = {"phase": "Succeeded", "completionTime": "2026-11-27T12:00:00Z"}
    early = rc.plan_finished(
        *observed(done, s=spec(ttlSecondsAfterFinished=60), now=T0 + timedelta(seconds=59))
    )
    late = rc.plan_finished(
        *observed(done, s=spec(ttlSecondsAfterFinished=60), now=T0 + timedelta(seconds=60))
    )
    assert not early.delete_job
    assert late.delete_job and [e.reason for e in late.events] == ["TTLExpired"]


# --------------------------------------------------------------------------- suspended


def test_plan_suspended_deletes_the_gang_and_bumps_the_attempt_once():
    b, o = observed(
        {"phase": "Running", "attempt": 0, "startTime": "t"}, [pod(0), pod(1)], s=spec(suspend=True)
    )
    plan = rc.plan_suspended(b, o)
    assert plan.status["phase"] == rc.SUSPENDED and plan.status["attempt"] == 1
    assert plan.delete_pods == ["ddp-0", "ddp-1"] and "startTime" not in plan.status
    assert [e.reason for e in plan.events] == ["Suspended"]
    again = rc.plan_suspended(*observed(plan.status, s=spec(suspend=True)))
    assert again.status["attempt"] == 1 and again.events == []


def test_plan_suspended_resumes_by_restarting_the_clock():
    b, o = observed({"phase": "Suspended", "attempt": 1, "startTime": "t"})
    assert rc.plan_suspended(b, o) is None
    assert "startTime" not in b.status and [e.reason for e in b.plan.events] == ["Resumed"]


def test_plan_suspended_ignores_a_job_that_is_not_suspended():
    b, o = observed({"phase": "Running", "startTime": "t"})
    assert rc.plan_suspended(b, o) is None and b.status["startTime"] == "t" and b.plan.events == []


# --------------------------------------------------------------------------- failures


def test_rank_failures_name_failed_and_vanished_ranks():
    ranks = [{"rank": 1, "pod": "ddp-1", "state": "Running", "attempt": 0}]
    _, o = observed({"phase": "Running", "ranks": ranks}, [pod(0, phase="Failed", reason="Error")])
    assert rc.rank_failures(o) == [
        "rank 0 (pod ddp-0) failed: Error",
        "rank 1 (pod ddp-1) was deleted before it finished",
    ]


def test_plan_failures_restarts_the_gang_within_the_backoff_limit():
    b, o = observed(
        {"phase": "Running", "restarts": 0}, [pod(0, phase="Failed"), pod(1)], s=spec(backoffLimit=2)
    )
    plan = rc.plan_failures(b, o)
    assert plan.status["phase"] == rc.RESTARTING
    assert plan.status["attempt"] == 1 and plan.status["restarts"] == 1
    assert plan.delete_pods == ["ddp-0", "ddp-1"] and plan.status["ready"] == "0/2"
    assert [e.reason for e in plan.events] == ["GangRestart"]


def test_plan_failures_fails_the_job_at_the_backoff_limit():
    b, o = observed(
        {"phase": "Running", "restarts": 2}, [pod(0, phase="Failed"), pod(1)], s=spec(backoffLimit=2)
    )
    plan = rc.plan_failures(b, o)
    assert plan.status["phase"] == rc.FAILED and "backoffLimit (2) reached" in plan.status["message"]
    assert plan.status["completionTime"] == "2026-11-27T12:00:00Z"


def test_plan_failures_fails_a_job_past_its_deadline():
    status = {"phase": "Running", "startTime": "2026-11-27T11:00:00Z"}
    plan = rc.plan_failures(*observed(status, [pod(0), pod(1)], s=spec(activeDeadlineSeconds=3599)))
    assert plan.status["phase"] == rc.FAILED and [e.reason for e in plan.events] == ["DeadlineExceeded"]


def test_plan_failures_starts_the_clock_and_passes_a_healthy_job_on():
    b, o = observed({"phase": "Pending"}, [pod(0), pod(1)])
    assert rc.plan_failures(b, o) is None and b.status["startTime"] == "2026-11-27T12:00:00Z"


# --------------------------------------------------------------------------- progress


def test_plan_progress_waits_for_the_previous_attempt_to_go():
    b, o = observed(
        {"phase": "Restarting", "attempt": 1}, [pod(0, attempt=0), pod(1, attempt=0, deleting=True)]
    )
    plan = rc.plan_progress(b, o)
    assert plan.status["phase"] == rc.RESTARTING and plan.delete_pods == ["ddp-0"]
    assert plan.create_ranks == [] and "previous attempt" in plan.status["message"]


def test_plan_progress_creates_missing_ranks_but_not_over_foreign_pods():
    b, o = observed({"phase": "Pending"}, [pod(1, owner="someone-else")])
    plan = rc.plan_progress(b, o)
    assert plan.create_ranks == [0] and plan.ensure_service
    assert "Waiting for Pod(s) ddp-1 of a previous job" in plan.status["message"]


def test_plan_progress_runs_and_succeeds():
    running = rc.plan_progress(*observed({"phase": "Pending"}, [pod(0), pod(1)]))
    assert running.status["phase"] == rc.RUNNING and [e.reason for e in running.events] == ["Running"]
    done = rc.plan_progress(
        *observed({"phase": "Running"}, [pod(0, phase="Succeeded"), pod(1, phase="Succeeded")])
    )
    assert done.status["phase"] == rc.SUCCEEDED and [e.reason for e in done.events] == ["Succeeded"]


def test_waiting_message_names_stuck_ranks():
    _, o = observed(
        {"phase": "Pending"}, [pod(0, phase="Pending", reason="ImagePullBackOff", message="no such image")]
    )
    assert rc.waiting_message(o, [pd.PENDING, pd.ABSENT]) == (
        "2 of 2 rank(s) not running yet: rank 0: ImagePullBackOff (no such image)"
    )
