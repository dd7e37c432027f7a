"""The kopf glue, driven with a fake API module: what one reconcile of a job does end to end."""

from __future__ import annotations

import asyncio
import json
import logging

import kopf
import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.metrics import REGISTRY
from dmlt_operator.core.objectqueue import Outcome
from dmlt_operator.trainingjob import handlers
from dmlt_operator.trainingjob import pods as pd
from kubernetes.client.exceptions import ApiException

from tests.helpers.operator_fakes import FakeJobKube

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test")


def body(status=None, **spec):
    return {
        "apiVersion": "dmlt.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "ddp", "namespace": "ns", "uid": "job-uid", "generation": 1},
        "spec": {"image": "img", "replicas": 2, **spec},
        "status": status or {},
    }


def memo_of(kube):
    return kopf.Memo(config=OperatorConfig(default_tracking_uri="http://m:5000"), kube=kube)


def tick(b, kube, pods=()):
    """One reconcile_job; its status changes as a patch ({} when none)."""
    status: dict = {}
    handlers.reconcile_job(b, list(pods), status, memo_of(kube), LOG)
    return {"status": status} if status else {}


def running_pod(rank, phase="Running"):
    return pd.PodSummary(
        name=f"ddp-{rank}", rank=rank, attempt=0, owner_uid="job-uid", uid=f"p{rank}",
        phase=phase, ready=phase == "Running", started=True,
    )  # fmt: skip


def test_first_tick_creates_service_and_pods_and_writes_status():
    kube = FakeJobKube()
    patch = tick(body(), kube)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in kube.created]
    assert kinds == [("Service", "ddp"), ("Pod", "ddp-0"), ("Pod", "ddp-1")]
    assert kube.created[1]["metadata"]["labels"]["dmlt.io/attempt"] == "0"
    assert patch["status"]["phase"] == "Pending"
    assert ("Normal", "CreatedPods") in [(t, r) for t, r, _ in kube.events]


def test_second_identical_tick_patches_nothing():
    kube = FakeJobKube()
    first = tick(body(), kube)
    status = first["status"]
    pods = [running_pod(0), running_pod(1)]
    second = tick(body(status), kube, pods)
    status = {**status, **second["status"]}
    third = tick(body(status), kube, pods)
    assert dict(third) == {}


def test_already_existing_pods_are_not_announced():
    kube = FakeJobKube(existing={"ddp-0", "ddp-1"})
    tick(body(), kube)
    assert not any(r == "CreatedPods" for _, r, _ in kube.events)


def test_progress_is_read_from_rank0_log():
    line = json.dumps({"event": "epoch", "epoch": 2, "epochs": 4,
                       "metrics": {"val_auc": 0.88}, "mlflow_run_id": "run9"})  # fmt: skip
    kube = FakeJobKube(logs={"ddp-0": "noise\n" + line + "\n"})
    status = dict(tick(body(), kube)["status"])
    patch = tick(body(status), kube, [running_pod(0), running_pod(1)])
    assert patch["status"]["progress"]["summary"] == "2/4"
    assert patch["status"]["metrics"] == {"val_auc": 0.88}
    assert patch["status"]["mlflowRunId"] == "run9"


def test_failed_rank_deletes_the_gang_with_uid_preconditions():
    kube = FakeJobKube()
    status = dict(tick(body(), kube)["status"])
    status.update(tick(body(status), kube, [running_pod(0), running_pod(1)])["status"])
    patch = tick(body(status), kube, [running_pod(0), running_pod(1, "Failed")])
    assert patch["status"]["phase"] == "Restarting"
    assert sorted(kube.deleted) == [("ddp-0", "p0"), ("ddp-1", "p1")]
    assert ("Warning", "GangRestart") in [(t, r) for t, r, _ in kube.events]


def test_invalid_spec_fails_the_job_once():
    kube = FakeJobKube()
    patch = tick(body(replicas=0), kube)
    assert patch["status"]["phase"] == "Failed"
    assert "spec.replicas" in patch["status"]["message"]
    assert patch["status"]["conditions"][0]["reason"] == "InvalidSpec"
    assert kube.created == []
    again = tick(body(dict(patch["status"]), replicas=0), kube)
    assert dict(again) == {}
    assert len(kube.events) == 1


def test_trainer_pods_index():
    pod_body = {
        "metadata": {
            "name": "ddp-1",
            "uid": "p1",
            "labels": {"dmlt.io/job-name": "ddp", "dmlt.io/rank": "1", "dmlt.io/attempt": "0"},
        },
        "status": {"phase": "Pending"},
    }
    out = asyncio.run(
        handlers.trainer_pods(namespace="ns", labels=pod_body["metadata"]["labels"], body=pod_body)
    )
    ((key, summary),) = out.items()
    assert key == ("ns", "ddp") and summary.rank == 1
    pod_body["metadata"]["labels"]["dmlt.io/rank"] = "oops"
    labels = pod_body["metadata"]["labels"]
    assert asyncio.run(handlers.trainer_pods(namespace="ns", labels=labels, body=pod_body)) == {}


def quota_exceeded(what):
    """The apiserver's refusal of `what` (e.g. 'pods "ddp-0"') by a ResourceQuota."""
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"message": f"{what} is forbidden: exceeded quota"})
    return exc


class RefusingKube(FakeJobKube):
    def create_pod(self, pod):
        raise quota_exceeded('pods "ddp-0"')


def test_refused_pod_creation_is_reported_not_raised():
    kube = RefusingKube()
    patch = tick(body(), kube)
    assert patch["status"]["phase"] == "Pending"
    assert "Waiting (retrying): cannot create Pods" in patch["status"]["message"]
    assert "exceeded quota" in patch["status"]["message"]
    assert [r for _, r, _ in kube.events].count("FailedCreatePod") == 1
    # Same refusal next tick: no new event.
    again = tick(body(dict(patch["status"])), kube)
    assert "message" not in again.get("status", {})
    assert [r for _, r, _ in kube.events].count("FailedCreatePod") == 1


def test_server_errors_propagate_for_kopf_to_retry():
    class BrokenKube(FakeJobKube):
        def create_pod(self, pod):
            raise ApiException(status=500, reason="Internal")

    with pytest.raises(ApiException):
        tick(body(), BrokenKube())


def test_unreadable_logs_do_not_stall_the_job():
    class NoLogs(FakeJobKube):
        def read_pod_log(self, *args, **kwargs):
            raise ApiException(status=500, reason="kubelet unreachable")

    labels = {"kind": "TrainingJob", "step": "read pod logs", "reason": "ServerError"}
    before = REGISTRY.get_sample_value("dmlt_reconcile_failures_total", labels) or 0
    kube = NoLogs()
    status = dict(tick(body(), kube)["status"])
    patch = tick(body(status), kube, [running_pod(0), running_pod(1)])
    assert patch["status"]["phase"] == "Running"
    assert REGISTRY.get_sample_value("dmlt_reconcile_failures_total", labels) > before  # counted


# ---- the worker's run: write status only on change, deadlines, snapshots


def sync(b, kube, pods=(), cfg=None):
    memo = kopf.Memo(config=cfg or OperatorConfig(default_tracking_uri="http://m:5000"), kube=kube)
    return handlers.sync_job(b, list(pods), memo, LOG)


def versioned(status=None, rv="41", **spec):
    b = body(status, **spec)
    b["metadata"]["resourceVersion"] = rv
    return b


def test_status_is_patched_only_when_it_changed_and_on_the_version_planned_from():
    kube = FakeJobKube()
    first = sync(versioned(), kube)
    ((name, status, rv),) = kube.status_patches
    assert (name, rv, status["phase"]) == ("ddp", "41", "Pending")
    assert first.written["metadata"]["resourceVersion"] == "1001"
    pods = [running_pod(0), running_pod(1)]
    sync(versioned(status, "42"), kube, pods)
    assert kube.status_patches[-1][1]["phase"] == "Running"
    status = {**status, **kube.status_patches[-1][1]}
    again = sync(versioned(status, "43"), kube, pods)
    assert len(kube.status_patches) == 2 and again.written is None  # nothing changed: no request


def test_a_write_refused_as_stale_is_planned_again_soon():
    kube = FakeJobKube()
    kube.stale = True
    outcome = sync(versioned(), kube)
    assert outcome.written is None and outcome.requeue_after == handlers.STALE_RETRY_S


def test_a_running_job_is_woken_for_progress_and_its_deadline():
    kube = FakeJobKube()
    cfg = OperatorConfig(log_poll_s=4)
    first = sync(versioned(runPolicy={"activeDeadlineSeconds": 3600}), kube, cfg=cfg)
    assert first.requeue_after == pytest.approx(3600.5, abs=5)  # no Pod runs yet: the deadline
    status = kube.status_patches[-1][1]
    running = sync(
        versioned(status, runPolicy={"activeDeadlineSeconds": 3600}),
        kube,
        [running_pod(0), running_pod(1)],
        cfg,
    )
    assert running.requeue_after == 4  # rank 0's progress


def test_a_finished_job_wakes_at_its_ttl():
    done = {"phase": "Succeeded", "attempt": 0, "completionTime": "2020-01-01T00:00:00Z"}
    kube = FakeJobKube()
    expired = sync(versioned(done, runPolicy={"ttlSecondsAfterFinished": 60}), kube)
    assert kube.jobs_deleted == ["ddp"] and expired.requeue_after is None
    from datetime import UTC, datetime

    from dmlt_operator.trainingjob.plan import requeue_after
    from dmlt_operator.trainingjob.spec import parse_spec

    spec = parse_spec({"image": "x", "runPolicy": {"ttlSecondsAfterFinished": 60}})
    now = datetime(2020, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert requeue_after(spec, done, now) == pytest.approx(50.5)
    assert requeue_after(spec, {**done, "phase": "Suspended"}, now) is None
    assert requeue_after(parse_spec({"image": "x"}), done, now) is None


def test_a_failed_run_writes_its_message_and_reports_the_error():
    class BrokenKube(FakeJobKube):
        def create_pod(self, pod):
            raise ApiException(status=500, reason="Internal")

    kube = BrokenKube()
    outcome = sync(versioned(), kube)
    assert outcome.error.startswith("Waiting (retrying): create pods failed")
    assert kube.status_patches[-1][1]["message"] == outcome.error


def test_the_snapshot_prefers_our_own_newer_write_until_the_index_catches_up():
    index_jobs = {("ns", "ddp"): [versioned(rv="41")]}
    jq = handlers.JobQueue(None, index_jobs, None, pods={("ns", "ddp"): [running_pod(0)]})
    ours = versioned({"phase": "Pending"}, rv="42")
    jq.written[("ns", "ddp")] = (frozenset({"41"}), ours)
    job, pods = jq.snapshot(("ns", "ddp"))
    assert job is ours and [p.name for p in pods] == ["ddp-0"]
    assert jq.own_write(("ns", "ddp"), "42") and not jq.own_write(("ns", "ddp"), "43")
    index_jobs[("ns", "ddp")] = [versioned({"phase": "Pending"}, rv="43")]
    job, _ = jq.snapshot(("ns", "ddp"))
    assert job["metadata"]["resourceVersion"] == "43" and ("ns", "ddp") not in jq.written
    index_jobs.clear()
    assert jq.snapshot(("ns", "ddp")) is None


def test_events_mark_the_job_but_not_for_our_own_write():
    async def scenario():
        from dmlt_operator.core.workqueue import WorkQueue

        jq = handlers.JobQueue(WorkQueue(300), {}, None)
        jq.written[("ns", "ddp")] = (frozenset({"41"}), versioned(rv="42"))
        memo = kopf.Memo(job_queue=jq)
        await handlers.job_event(namespace="ns", name="ddp", body=versioned(rv="42"), memo=memo)
        assert len(jq.queue) == 0
        await handlers.job_event(namespace="ns", name="ddp", body=versioned(rv="44"), memo=memo)
        await handlers.pod_event(namespace="ns", labels={"dmlt.io/job-name": "ddp"}, memo=memo)
        assert len(jq.queue) == 1
        jq.queue.close()

    asyncio.run(scenario())


def test_a_refused_pod_is_retried_with_backoff():
    outcome = sync(versioned(), RefusingKube())
    assert outcome.refused and outcome.error is None


def test_a_burst_of_pod_events_wakes_the_job_once_in_the_urgent_lane_a_moment_later():
    async def scenario():
        from dmlt_operator.core.workqueue import WorkQueue

        jq = handlers.JobQueue(WorkQueue(300), {}, None)
        jq.tasks = [asyncio.current_task()]  # as if the workers ran: none takes a key here
        memo = kopf.Memo(job_queue=jq)
        jq.queue.add(("ns", "new"))
        for _ in range(5):
            await handlers.pod_event(namespace="ns", labels={"dmlt.io/job-name": "ddp"}, memo=memo)
        assert len(jq.queue) == 1  # only the new job yet: the Pod events wait for their siblings
        await asyncio.sleep(handlers.POD_EVENTS_WINDOW_S + 0.1)
        assert len(jq.queue) == 2
        assert await jq.queue.get() == ("ns", "ddp")
        jq.queue.close()

    asyncio.run(scenario())


def test_a_job_waits_to_see_the_pods_it_created_before_planning_again():
    pods = {("ns", "ddp"): [running_pod(0, "Pending")]}
    jq = handlers.JobQueue(None, {}, None, pods=pods)
    key = ("ns", "ddp")
    jq.expect(key, (), now=0.0, wait_s=handlers.EXPECTED_PODS_S)
    assert not jq.awaiting_pods(key, 0.0)
    jq.expect(key, ("ddp-0", "ddp-1"), now=0.0, wait_s=handlers.EXPECTED_PODS_S)
    assert jq.awaiting_pods(key, 1.0)  # ddp-1 not seen yet
    pods[key].append(running_pod(1, "Pending"))
    assert not jq.awaiting_pods(key, 1.0) and key not in jq.expected
    jq.expect(key, ("ddp-2",), now=0.0, wait_s=handlers.EXPECTED_PODS_S)
    assert not jq.awaiting_pods(key, handlers.EXPECTED_PODS_S)  # never seen: plan anyway


# ---- fewer writes per starting job


def test_a_job_creating_its_pods_is_announced_once_not_also_as_pending():
    kube = FakeJobKube()
    tick(body(), kube)
    reasons = [r for _, r, _ in kube.events]
    assert reasons == ["CreatedPods"]  # the Pending phase event would say the same again


def test_a_pending_job_that_creates_nothing_still_announces_its_phase():
    kube = FakeJobKube(existing={"ddp-0", "ddp-1"})
    tick(body(), kube)
    assert [r for _, r, _ in kube.events] == ["Pending"]


def scheduled_pod(rank):
    return pd.PodSummary(
        name=f"ddp-{rank}", rank=rank, attempt=0, owner_uid="job-uid", uid=f"p{rank}",
        phase="Pending", node="node-1",
    )  # fmt: skip


def held_sync(b, kube, pods, hold):
    memo = kopf.Memo(config=OperatorConfig(default_tracking_uri="http://m:5000"), kube=kube)
    return handlers.sync_job(b, list(pods), memo, LOG, None, hold)


def test_rank_details_alone_wait_for_the_batch_but_a_new_phase_is_written_at_once():
    kube = FakeJobKube()
    sync(versioned(), kube)
    status = kube.status_patches[-1][1]
    scheduled = [scheduled_pod(0), scheduled_pod(1)]
    held = held_sync(versioned(status, "42"), kube, scheduled, hold=1.5)
    assert len(kube.status_patches) == 1 and held.written is None
    assert held.requeue_after == 1.5  # looked at again when the batch is over
    due = held_sync(versioned(status, "42"), kube, scheduled, hold=0.0)
    assert due.written is not None and kube.status_patches[-1][1]["ranks"][0]["node"] == "node-1"
    running = held_sync(versioned(status, "42"), kube, [running_pod(0), running_pod(1)], hold=1.5)
    assert running.written is not None and kube.status_patches[-1][1]["phase"] == "Running"


def test_only_details_tells_rank_details_from_news():
    from dmlt_operator.core.handlers import changed_status

    old = {"phase": "Pending", "ranks": [{"rank": 0, "state": "Absent"}], "message": "a"}

    def only_details(patch):
        return handlers.only_details(changed_status(old, patch))

    assert only_details({"ranks": [{"rank": 0, "state": "Pending"}], "message": "b"})
    assert not only_details({"ranks": old["ranks"], "phase": "Running"})
    assert not only_details({"progress": {"epoch": 1}})
    assert not only_details({"message": "a"})  # no change at all


def test_the_jobs_index_keeps_no_managed_fields_or_last_applied_manifest():
    b = versioned()
    b["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    b["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "a",
    }  # fmt: skip
    ((key, kept),) = asyncio.run(handlers.trainingjobs(namespace="ns", name="ddp", body=b)).items()
    assert key == ("ns", "ddp") and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "a"} and kept["spec"] == b["spec"]
    assert "managedFields" in b["metadata"]  # the watch event's own object is left alone


def test_under_a_burst_rank_details_leave_the_write_rate_to_pods_and_phases():
    from dmlt_operator.core.ratelimit import TokenBucket

    kube = FakeJobKube()
    sync(versioned(), kube)
    status = kube.status_patches[-1][1]
    kube.limiter = TokenBucket(rate=1, burst=1)
    kube.limiter.reserve()  # the one token is taken: writers would queue
    held = held_sync(versioned(status, "42"), kube, [scheduled_pod(0), scheduled_pod(1)], hold=0.0)
    assert held.written is None and held.requeue_after == handlers.STATUS_BATCH_S
    running = held_sync(versioned(status, "42"), kube, [running_pod(0), running_pod(1)], hold=0.0)
    assert kube.status_patches[-1][1]["phase"] == "Running" and running.written is not None


def test_two_writes_in_a_row_are_one_chain_until_the_index_catches_up():
    key = ("ns", "ddp")
    index_jobs = {key: [versioned(rv="41")]}
    jq = handlers.JobQueue(None, index_jobs, None)
    jq.wrote(key, versioned(rv="41"), versioned({"phase": "Pending"}, rv="42"))
    planned, _ = jq.snapshot(key)  # planned from our write v42 while the index shows v41
    jq.wrote(key, planned, versioned({"phase": "Running"}, rv="43"))
    job, _ = jq.snapshot(key)
    assert job["metadata"]["resourceVersion"] == "43"  # not v41, which both writes replaced
    index_jobs[key] = [versioned({"phase": "Pending"}, rv="42")]
    assert jq.snapshot(key)[0]["metadata"]["resourceVersion"] == "43"
    index_jobs[key] = [versioned({"phase": "Running"}, rv="44")]  # someone else's change
    assert jq.snapshot(key)[0]["metadata"]["resourceVersion"] == "44" and key not in jq.written


def busy_kube(kube):
    from dmlt_operator.core.ratelimit import TokenBucket

    kube.limiter = TokenBucket(rate=1, burst=1, clock=lambda: 0.0)  # time stands still
    kube.limiter.reserve()  # the one token is taken: writers would queue
    return kube


class RefusingRankOneKube(FakeJobKube):
    def create_pod(self, pod):
        if pod["metadata"]["name"] == "ddp-1":
            raise quota_exceeded('pods "ddp-1"')
        return super().create_pod(pod)


class RefusingServiceKube(FakeJobKube):
    def create_service(self, service):
        raise quota_exceeded('services "ddp"')


def test_under_a_burst_a_starting_job_writes_one_status_running_not_pending_first():
    kube = busy_kube(FakeJobKube())
    first = held_sync(versioned(), kube, [], hold=0.0)
    assert [o["kind"] for o in kube.created] == ["Service", "Pod", "Pod"]
    assert first.written is None and first.requeue_after == handlers.STATUS_BATCH_S
    # Its Pods show, scheduled, within the batch: held again, and nothing made or said twice.
    scheduled = held_sync(versioned(), kube, [scheduled_pod(0), scheduled_pod(1)], hold=4.0)
    assert scheduled.written is None and scheduled.requeue_after == 4.0
    assert len(kube.created) == 3 and [r for _, r, _ in kube.events] == ["CreatedPods"]
    running = held_sync(versioned(), kube, [running_pod(0), running_pod(1)], hold=3.0)
    assert [p[1]["phase"] for p in kube.status_patches] == ["Running"] and running.written is not None
    assert [r for _, r, _ in kube.events] == ["CreatedPods", "Running"] and len(kube.created) == 3


def test_a_held_first_status_is_written_once_the_batch_is_over_or_the_writers_stop_queueing():
    kube = busy_kube(FakeJobKube(existing={"ddp-0", "ddp-1"}))
    due = held_sync(versioned(), kube, [scheduled_pod(0), scheduled_pod(1)], hold=0.0)
    assert due.written is not None and kube.status_patches[-1][1]["phase"] == "Pending"
    idle = FakeJobKube()
    assert held_sync(versioned(), idle, [], hold=0.0).written is not None  # no burst: at once


def test_a_starting_job_whose_pods_are_refused_reports_it_at_once_even_under_a_burst():
    kube = busy_kube(RefusingRankOneKube())
    outcome = held_sync(versioned(), kube, [], hold=0.0)
    assert [o["metadata"]["name"] for o in kube.created] == ["ddp", "ddp-0"]  # rank 0 made: not held
    assert outcome.refused and outcome.written is not None
    assert "exceeded quota" in kube.status_patches[-1][1]["message"]


def test_no_pods_are_made_while_their_service_is_refused():
    kube = RefusingServiceKube()
    outcome = sync(versioned(), kube)
    assert kube.created == [] and outcome.refused
    assert "exceeded quota" in kube.status_patches[-1][1]["message"]


def test_a_pod_made_again_while_the_first_status_is_held_gets_the_status_written():
    kube = busy_kube(FakeJobKube())
    held_sync(versioned(), kube, [], hold=0.0)
    kube.existing.discard("ddp-1")  # rank 1 vanished before its job had a status
    again = held_sync(versioned(), kube, [scheduled_pod(0)], hold=8.0)
    assert [o["metadata"]["name"] for o in kube.created][-1] == "ddp-1"
    assert again.written is not None and kube.status_patches[-1][1]["phase"] == "Pending"


def created_pod(rank, phase, created):
    return pd.PodSummary(
        name=f"ddp-{rank}", rank=rank, attempt=0, owner_uid="job-uid", uid=f"p{rank}",
        phase=phase, ready=phase == "Running", started=phase == "Running", created=created,
    )  # fmt: skip


def test_a_held_jobs_deadline_runs_from_its_first_pod_created():
    from datetime import UTC, datetime, timedelta

    from dmlt_operator.core.conditions import format_time

    kube = busy_kube(FakeJobKube())
    job = versioned(runPolicy={"activeDeadlineSeconds": 5})
    assert held_sync(job, kube, [], hold=0.0).written is None  # held, like any starting job
    made = format_time(datetime.now(UTC) - timedelta(seconds=8))  # its Pods, 8 s ago
    late = held_sync(job, kube, [created_pod(0, "Pending", made), created_pod(1, "Pending", made)], hold=2.0)
    assert late.written is not None  # failed, past its 5 s: written at once
    status = kube.status_patches[-1][1]
    assert status["phase"] == "Failed" and status["startTime"] == made
    running = versioned(runPolicy={"activeDeadlineSeconds": 600})
    pods = [created_pod(0, "Running", made), created_pod(1, "Running", made)]
    assert held_sync(running, kube, pods, hold=2.0).written is not None
    assert kube.status_patches[-1][1]["startTime"] == made  # when it started, not when written


def test_creating_children_restarts_the_status_batch_clock():
    jq = handlers.JobQueue(None, {}, None)
    key = ("ns", "ddp")
    jq.settle(key, versioned(), Outcome(created=("ddp-0", "ddp-1")), now=100.0, wait_s=5.0)
    assert jq.since_write(key, 104.0, handlers.STATUS_BATCH_S) == handlers.STATUS_BATCH_S - 4.0
