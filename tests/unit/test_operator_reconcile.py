"""The planner: phases, gang restarts, suspend/resume, deadlines, TTL, clean-up, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob import progress as pg
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec

pytestmark = pytest.mark.unit

UID = "job-uid"
JOB = JobRef(name="ddp", namespace="ns", uid=UID, generation=1)
T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def spec(replicas=2, **run_policy):
    return parse_spec({"image": "img", "replicas": replicas, "runPolicy": run_policy})


def pod(rank, state="Running", attempt=0, owner=UID, deleting=False, exit_code=None, reason=None):
    phase = {"Running": "Running", "Pending": "Pending", "Succeeded": "Succeeded",
             "Failed": "Failed"}[state]  # fmt: skip
    return pd.PodSummary(
        name=f"ddp-{rank}",
        rank=rank,
        attempt=attempt,
        owner_uid=owner,
        uid=f"u-{rank}-{attempt}",
        phase=phase,
        deleting=deleting,
        ready=state == "Running",
        started=state in ("Running", "Succeeded", "Failed"),
        exit_code=exit_code,
        reason=reason,
    )


def run(status, pods, s=None, now=T0, reports=None):
    return rc.plan(JOB, s or spec(), status, pods, reports or {}, now)


def reasons(plan):
    return [e.reason for e in plan.events]


def cond(status, type_):
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def running_status(now=T0):
    """Status of a 2-rank job whose attempt 0 is running."""
    p = run(None, [])
    p = run(p.status, [pod(0, "Pending"), pod(1, "Pending")], now=now)
    p = run(p.status, [pod(0), pod(1)], now=now)
    assert p.status["phase"] == rc.RUNNING
    return p.status


# --------------------------------------------------------------------------- start-up


def test_new_job_creates_every_rank_and_the_service():
    p = run(None, [])
    assert p.create_ranks == [0, 1]
    assert p.ensure_service
    assert p.delete_pods == [] and not p.delete_job
    s = p.status
    assert s["phase"] == rc.PENDING
    assert s["attempt"] == 0 and s["restarts"] == 0
    assert s["startTime"] == "2026-11-27T12:00:00Z"
    assert s["ready"] == "0/2"
    assert [r["state"] for r in s["ranks"]] == [pd.ABSENT, pd.ABSENT]
    assert cond(s, rc.COND_CREATED)["status"] == "True"
    assert s["observedGeneration"] == 1


def test_pending_pods_are_not_recreated():
    p = run(None, [])
    p = run(p.status, [pod(0, "Pending"), pod(1, "Pending", reason="ImagePullBackOff")])
    assert p.create_ranks == []
    assert p.status["phase"] == rc.PENDING
    assert "ImagePullBackOff" in p.status["message"]
    assert [r["state"] for r in p.status["ranks"]] == [pd.PENDING, pd.PENDING]


def test_partially_created_gang_creates_only_the_missing_rank():
    p = run(None, [])
    p = run(p.status, [pod(0, "Pending")])
    assert p.create_ranks == [1]


def test_all_running_is_running():
    status = running_status()
    assert status["ready"] == "2/2"
    assert cond(status, rc.COND_RUNNING)["status"] == "True"


def test_running_transition_emits_one_event():
    p = run(None, [])
    p = run(p.status, [pod(0), pod(1)])
    assert "Running" in reasons(p)
    again = run(p.status, [pod(0), pod(1)])
    assert reasons(again) == []


# --------------------------------------------------------------------------- idempotence


def test_same_observation_twice_changes_nothing():
    status = running_status()
    pods = [pod(0), pod(1)]
    first = run(status, pods, now=T0 + timedelta(seconds=5))
    second = run(first.status, pods, now=T0 + timedelta(seconds=10))
    assert rc.status_delta(first.status, second.status) == {}
    assert second.create_ranks == [] and second.delete_pods == [] and second.events == []


def test_restarted_operator_with_lost_status_adopts_pods_of_a_newer_attempt():
    status = running_status()
    # Status says attempt 0 but the Pods are of attempt 2 (status patch lost before a crash).
    p = run(status, [pod(0, attempt=2), pod(1, attempt=2)])
    assert p.status["attempt"] == 2
    assert p.create_ranks == [] and p.delete_pods == []
    assert p.status["phase"] == rc.RUNNING


# --------------------------------------------------------------------------- gang restart


def test_rank_failure_restarts_the_whole_gang():
    status = running_status()
    p = run(status, [pod(0), pod(1, "Failed", exit_code=1, reason="Error")])
    assert p.status["phase"] == rc.RESTARTING
    assert p.status["restarts"] == 1 and p.status["attempt"] == 1
    assert p.delete_pods == ["ddp-0", "ddp-1"]
    assert p.create_ranks == []
    assert reasons(p) == ["GangRestart"]
    assert "exit code 1" in p.status["message"]
    assert cond(p.status, rc.COND_RESTARTING)["status"] == "True"
    assert cond(p.status, rc.COND_RUNNING)["status"] == "False"

    # Next tick: the old gang is still terminating: wait, create nothing.
    p2 = run(p.status, [pod(0, deleting=True), pod(1, "Failed", exit_code=1)])
    assert p2.status["phase"] == rc.RESTARTING
    assert p2.create_ranks == []
    assert p2.delete_pods == ["ddp-1"]  # the failed Pod was not deleted yet (no deletionTimestamp)
    assert p2.status["restarts"] == 1

    # The old gang is gone: recreate every rank under the same names, new attempt.
    p3 = run(p2.status, [])
    assert p3.create_ranks == [0, 1]
    assert p3.ensure_service
    assert p3.status["attempt"] == 1 and p3.status["phase"] == rc.RESTARTING

    p4 = run(p3.status, [pod(0, attempt=1), pod(1, attempt=1)])
    assert p4.status["phase"] == rc.RUNNING
    assert cond(p4.status, rc.COND_RESTARTING)["status"] == "False"
    assert p4.status["restarts"] == 1


def test_pod_deleted_while_running_is_a_failure():
    status = running_status()
    p = run(status, [pod(0)])
    assert p.status["phase"] == rc.RESTARTING
    assert "was deleted before it finished" in p.status["message"]
    assert p.delete_pods == ["ddp-0"]


def test_pod_being_deleted_while_running_is_a_failure():
    status = running_status()
    p = run(status, [pod(0), pod(1, deleting=True)])
    assert p.status["phase"] == rc.RESTARTING
    assert p.delete_pods == ["ddp-0"]  # ddp-1 is already terminating


def test_backoff_limit_exhausted_fails_the_job_and_stops_running_pods():
    status = running_status()
    status["restarts"] = 2
    s = spec(backoffLimit=2)
    p = run(status, [pod(0), pod(1, "Failed", exit_code=137, reason="OOMKilled")], s=s)
    assert p.status["phase"] == rc.FAILED
    assert cond(p.status, rc.COND_FAILED)["reason"] == "BackoffLimitExceeded"
    assert "OOMKilled" in p.status["message"]
    assert p.status["completionTime"] == "2026-11-27T12:00:00Z"
    assert p.delete_pods == ["ddp-0"]  # cleanPodPolicy Running: keep the failed Pod's logs
    assert p.create_ranks == []
    assert reasons(p) == ["BackoffLimitExceeded"]


def test_backoff_limit_zero_fails_at_once():
    status = running_status()
    p = run(status, [pod(0), pod(1, "Failed")], s=spec(backoffLimit=0))
    assert p.status["phase"] == rc.FAILED


def test_clean_pod_policies_on_failure():
    status = running_status()
    pods = [pod(0), pod(1, "Failed")]
    assert run(status, pods, s=spec(backoffLimit=0, cleanPodPolicy="All")).delete_pods == [
        "ddp-0",
        "ddp-1",
    ]
    assert run(status, pods, s=spec(backoffLimit=0, cleanPodPolicy="None")).delete_pods == []


# --------------------------------------------------------------------------- success


def finished_report(status="completed", sha="a" * 64):
    return pg.TrainerReport(
        epoch=3, epochs=3, metrics={"val_auc": 0.93}, mlflow_run_id="run1",
        finished={"status": status, "weightsSha256": sha, "mlflowRunId": "run1"},
    )  # fmt: skip


def test_all_ranks_succeeded():
    status = running_status()
    pods = [pod(0, "Succeeded"), pod(1, "Succeeded")]
    reports = {"ddp-0": finished_report(), "ddp-1": finished_report()}
    p = run(status, pods, reports=reports)
    assert p.status["phase"] == rc.SUCCEEDED
    assert p.status["result"] == "completed"
    assert cond(p.status, rc.COND_SUCCEEDED)["reason"] == "Completed"
    assert p.status["ranks"][1]["result"]["weightsSha256"] == "a" * 64
    assert p.status["progress"]["summary"] == "3/3"
    assert p.status["metrics"] == {"val_auc": 0.93}
    assert p.status["mlflowRunId"] == "run1"
    assert p.delete_pods == []  # nothing is running
    assert reasons(p) == ["Succeeded"]
    assert "WARNING" not in p.status["message"]


def test_pruned_and_mismatched_hashes():
    status = running_status()
    pods = [pod(0, "Succeeded"), pod(1, "Succeeded")]
    reports = {"ddp-0": finished_report("pruned"), "ddp-1": finished_report("pruned", "b" * 64)}
    p = run(status, pods, reports=reports)
    assert cond(p.status, rc.COND_SUCCEEDED)["reason"] == "Pruned"
    assert "different weight hashes" in p.status["message"]


def test_success_with_clean_all_deletes_pods():
    status = running_status()
    p = run(status, [pod(0, "Succeeded"), pod(1, "Succeeded")], s=spec(cleanPodPolicy="All"))
    assert p.delete_pods == ["ddp-0", "ddp-1"]


def test_a_finished_rank_whose_pod_is_gone_is_not_a_failure():
    status = running_status()
    p = run(status, [pod(0), pod(1, "Succeeded")])
    assert p.status["phase"] == rc.RUNNING
    p = run(p.status, [pod(0)])  # rank 1's finished Pod was removed by someone
    assert p.status["phase"] == rc.RUNNING and p.create_ranks == []
    p = run(p.status, [pod(0, "Succeeded")])
    assert p.status["phase"] == rc.SUCCEEDED


def test_terminal_job_is_left_alone():
    status = running_status()
    done = run(status, [pod(0, "Succeeded"), pod(1, "Succeeded")]).status
    p = run(done, [], now=T0 + timedelta(hours=1))
    assert p.status["phase"] == rc.SUCCEEDED
    assert p.create_ranks == [] and p.events == [] and not p.delete_job
    assert rc.status_delta(done, p.status) == {}


# --------------------------------------------------------------------------- TTL & deadline


def test_ttl_deletes_the_finished_job():
    s = spec(ttlSecondsAfterFinished=60)
    status = running_status()
    done = run(status, [pod(0, "Succeeded"), pod(1, "Succeeded")], s=s).status
    assert not run(done, [], s=s, now=T0 + timedelta(seconds=59)).delete_job
    p = run(done, [], s=s, now=T0 + timedelta(seconds=60))
    assert p.delete_job and reasons(p) == ["TTLExpired"]


def test_no_ttl_keeps_the_job():
    status = running_status()
    done = run(status, [pod(0, "Succeeded"), pod(1, "Succeeded")]).status
    assert not run(done, [], now=T0 + timedelta(days=30)).delete_job


def test_deadline_exceeded_fails_and_stops_pods():
    s = spec(activeDeadlineSeconds=600)
    status = running_status()
    assert run(status, [pod(0), pod(1)], s=s, now=T0 + timedelta(seconds=600)).status["phase"] == (rc.RUNNING)
    p = run(status, [pod(0), pod(1)], s=s, now=T0 + timedelta(seconds=601))
    assert p.status["phase"] == rc.FAILED
    assert cond(p.status, rc.COND_FAILED)["reason"] == "DeadlineExceeded"
    assert p.delete_pods == ["ddp-0", "ddp-1"]
    assert reasons(p) == ["DeadlineExceeded"]


# --------------------------------------------------------------------------- suspend / resume


def test_suspend_deletes_the_gang_and_resume_recreates_it():
    status = running_status()
    s_susp = spec(suspend=True)
    p = run(status, [pod(0), pod(1)], s=s_susp, now=T0 + timedelta(minutes=1))
    assert p.status["phase"] == rc.SUSPENDED
    assert p.delete_pods == ["ddp-0", "ddp-1"]
    assert p.status["attempt"] == 1 and p.status["restarts"] == 0
    assert "startTime" not in p.status
    assert reasons(p) == ["Suspended"]
    assert cond(p.status, rc.COND_SUSPENDED)["status"] == "True"

    # Still suspended, Pods terminating: nothing new, no second event, no second bump.
    p2 = run(p.status, [pod(0, deleting=True), pod(1, deleting=True)], s=s_susp)
    assert p2.status["attempt"] == 1 and p2.events == [] and p2.delete_pods == []
    assert rc.status_delta(p.status, p2.status) == {}

    # Resume while the old Pods still terminate: wait; then recreate from the checkpoint.
    later = T0 + timedelta(minutes=10)
    p3 = run(p2.status, [pod(0, deleting=True)], s=spec(), now=later)
    assert p3.create_ranks == []
    assert "Resumed" in reasons(p3)
    assert p3.status["startTime"] == "2026-11-27T12:10:00Z"
    assert cond(p3.status, rc.COND_SUSPENDED)["status"] == "False"
    p4 = run(p3.status, [], s=spec(), now=later)
    assert p4.create_ranks == [0, 1]
    assert p4.status["attempt"] == 1


def test_suspended_at_creation_creates_nothing():
    p = run(None, [], s=spec(suspend=True))
    assert p.status["phase"] == rc.SUSPENDED
    assert p.create_ranks == [] and not p.ensure_service


def test_deadline_clock_restarts_after_resume():
    s = spec(activeDeadlineSeconds=600)
    status = running_status()
    susp = run(status, [pod(0), pod(1)], s=spec(activeDeadlineSeconds=600, suspend=True)).status
    resumed = run(susp, [], s=s, now=T0 + timedelta(hours=2)).status
    assert resumed["phase"] == rc.PENDING
    p = run(resumed, [pod(0, attempt=1), pod(1, attempt=1)], s=s, now=T0 + timedelta(hours=2, minutes=5))
    assert p.status["phase"] == rc.RUNNING


def test_suspend_is_ignored_once_finished():
    status = running_status()
    done = run(status, [pod(0, "Succeeded"), pod(1, "Succeeded")]).status
    p = run(done, [pod(0, "Succeeded"), pod(1, "Succeeded")], s=spec(suspend=True))
    assert p.status["phase"] == rc.SUCCEEDED


# --------------------------------------------------------------------------- other owners


def test_pods_of_a_previous_job_with_the_same_name_block_creation():
    foreign = [pod(0, owner="old-uid", deleting=True), pod(1, owner="old-uid", deleting=True)]
    p = run(None, foreign)
    assert p.create_ranks == []
    assert p.delete_pods == []  # not ours to delete
    assert "previous job with the same name" in p.status["message"]
    p2 = run(p.status, [pod(1, owner="old-uid", deleting=True)])
    assert p2.create_ranks == [0]


# --------------------------------------------------------------------------- progress & logs


def test_progress_from_rank0_report_and_kept_when_absent():
    status = running_status()
    report = pg.TrainerReport(epoch=2, epochs=5, metrics={"val_auc": 0.8}, mlflow_run_id="r1")
    p = run(status, [pod(0), pod(1)], reports={"ddp-0": report})
    assert p.status["progress"] == {"epoch": 2, "epochs": 5, "summary": "2/5", "percent": 40}
    assert p.status["metrics"] == {"val_auc": 0.8}
    assert p.status["mlflowRunId"] == "r1"
    again = run(p.status, [pod(0), pod(1)])
    assert again.status["progress"]["epoch"] == 2


def test_logs_to_read():
    status = running_status()
    pods = [pod(0), pod(1)]
    assert rc.logs_to_read(status, pods, UID) == ["ddp-0"]
    pods = [pod(0), pod(1, "Succeeded")]
    assert rc.logs_to_read(status, pods, UID) == ["ddp-0", "ddp-1"]
    # Once a rank's result is recorded its log is not read again.
    status["ranks"][1]["result"] = {"status": "completed"}
    assert rc.logs_to_read(status, pods, UID) == ["ddp-0"]
    # Pods of other attempts or owners are never read.
    assert rc.logs_to_read(status, [pod(0, attempt=5), pod(0, owner="x")], UID) == []
    assert rc.logs_to_read({"phase": "Succeeded"}, pods, UID) == []
    assert rc.logs_to_read(None, [pod(0, "Pending")], UID) == []
