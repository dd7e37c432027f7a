"""The planner's queue step (plan.plan_queue, plan.workload_upkeep) and its wiring in the
handlers (kueue_io, the Workload index): a queued job runs only once Kueue admits its gang,
stops when evicted, gives the quota back, resumes from its checkpoint, and finishes its
Workload. Jobs without a queue are untouched (the other planner tests)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import kopf
import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.trainingjob import handlers
from dmlt_operator.trainingjob import kueue_io as kq
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob import queueing as qu
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec
from kubernetes.client.exceptions import ApiException

from tests.helpers.operator_fakes import FakeJobKube

pytestmark = pytest.mark.unit

UID = "job-uid"
JOB = JobRef(name="ddp", namespace="ns", uid=UID, generation=1)
T0 = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
WL = qu.workload_name(JOB)
LOG = logging.getLogger("test")
PREEMPTION = "Preempted to accommodate a workload (UID: hi-uid, JobUID: hi-job) due to prioritization in the ClusterQueue"


def spec(replicas=2, **fields):
    return parse_spec({"image": "img", "replicas": replicas, **fields})


def cond(type_, status, reason, message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "x"}


def workload(*conditions, flavors=None, active=True):
    wl = qu.build_workload(JOB, spec(), "team-a")
    wl["metadata"].update(resourceVersion="7", generation=1, uid="wl-uid")
    wl["spec"]["active"] = active
    status = {"conditions": list(conditions)}
    if any(c["type"] == "QuotaReserved" and c["status"] == "True" for c in conditions):
        status["admission"] = {
            "clusterQueue": "cq",
            "podSetAssignments": [{"name": "trainer", "count": 2, "flavors": flavors or {"cpu": "default"}}],
        }
    wl["status"] = status
    return wl


PENDING = workload(cond("QuotaReserved", "False", "Pending", "insufficient unused quota for cpu"))
ADMITTED = workload(cond("QuotaReserved", "True", "QuotaReserved"), cond("Admitted", "True", "Admitted"))
EVICTED = workload(
    cond("QuotaReserved", "True", "QuotaReserved"),
    cond("Admitted", "True", "Admitted"),
    cond("Evicted", "True", "Preempted", PREEMPTION),
    cond("Preempted", "True", "InClusterQueue", PREEMPTION),
)
REQUEUED = workload(
    cond("QuotaReserved", "False", "Pending", PREEMPTION),
    cond("Admitted", "False", "NoReservation"),
    cond("Evicted", "True", "Preempted", PREEMPTION),
)


def pod(rank, phase="Running", attempt=0, deleting=False):
    return pd.PodSummary(
        name=f"ddp-{rank}", rank=rank, attempt=attempt, owner_uid=UID, uid=f"u{rank}", phase=phase,
        deleting=deleting, ready=phase == "Running", started=phase != "Pending",
    )  # fmt: skip


def queue(wl=None, **kw):
    kw.setdefault("flavors", {"default": {"metadata": {"name": "default"}, "spec": {}}})
    return rc.QueueInput("team-a", wl, **kw)


def plan(status=None, pods=(), wl=None, s=None, **kw):
    return rc.plan(JOB, s or spec(), status, list(pods), {}, T0, queue(wl, **kw))


def reasons(p):
    return [e.reason for e in p.events]


SUSPENDED_BY_KUEUE = {
    "phase": "Suspended",
    "attempt": 1,
    "restarts": 0,
    "progress": {"epoch": 2, "epochs": 4},
    "conditions": [cond("Suspended", "True", rc.REASON_EVICTED, "Preempted")],
}


# --------------------------------------------------------------------------- the planner


def test_a_queued_job_without_a_workload_creates_one_and_no_pods():
    p = plan()
    assert p.create_workload["metadata"]["name"] == WL and p.create_workload["spec"]["queueName"] == "team-a"
    assert p.create_ranks == [] and not p.ensure_service
    assert p.status["phase"] == "Pending" and p.status["queue"]["state"] == "Pending"
    assert "Queued" in reasons(p) and "startTime" not in p.status


def test_a_pending_workload_waits_with_the_reason_in_status():
    p = plan({"phase": "Pending", "attempt": 0}, wl=PENDING)
    assert p.create_workload is None and p.create_ranks == [] and p.workload_status is None
    assert p.status["phase"] == "Pending"
    assert p.status["queue"]["state"] == "Queued" and "insufficient unused quota" in p.status["message"]


def test_an_admitted_workload_runs_the_gang_with_the_placement():
    flavor = {"metadata": {"name": "default"}, "spec": {"nodeLabels": {"pool": "a"}}}
    p = plan({"phase": "Pending", "attempt": 0}, wl=ADMITTED, flavors={"default": flavor})
    assert p.create_ranks == [0, 1] and p.ensure_service
    assert p.placement.node_selector == {"pool": "a"}
    assert p.status["queue"]["state"] == "Admitted" and "Admitted" in reasons(p)
    assert "startTime" in p.status


def test_admitted_is_announced_once():
    p = plan({"phase": "Running", "attempt": 0, "queue": {"state": "Admitted"}}, [pod(0), pod(1)], ADMITTED)
    assert "Admitted" not in reasons(p) and p.status["phase"] == "Running"


def test_an_eviction_suspends_without_counting_a_restart():
    running = {"phase": "Running", "attempt": 0, "restarts": 0, "startTime": "2026-12-07T03:00:00Z"}
    p = plan(running, [pod(0), pod(1)], EVICTED, preemptor="ns/trainingjob-hi-12345")
    assert p.status["phase"] == "Suspended" and p.status["attempt"] == 1 and p.status["restarts"] == 0
    assert p.delete_pods == ["ddp-0", "ddp-1"] and p.create_ranks == []
    assert "startTime" not in p.status and p.workload_status is None  # the Pods must go first
    (event,) = [e for e in p.events if e.reason == "Preempted"]
    assert event.message.startswith("Preempted by ns/trainingjob-hi-12345 (InClusterQueue)")
    suspended = next(c for c in p.status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "True" and suspended["reason"] == rc.REASON_EVICTED
    assert p.status["queue"]["state"] == "Evicted"


def test_the_suspension_is_not_repeated_while_the_pods_go():
    p = plan(SUSPENDED_BY_KUEUE, [pod(0, attempt=0, deleting=True), pod(1, attempt=0)], EVICTED)
    assert p.status["attempt"] == 1 and p.delete_pods == ["ddp-1"] and p.events == []


def test_the_quota_goes_back_once_the_pods_are_gone():
    p = plan(SUSPENDED_BY_KUEUE, [], EVICTED)
    assert p.status["phase"] == "Suspended" and p.create_ranks == []
    status = p.workload_status["status"]
    assert status["admission"] is None and p.workload_status["metadata"] == {"resourceVersion": "7"}
    assert {c["type"]: c["status"] for c in status["conditions"]}["QuotaReserved"] == "False"
    assert not [e for e in p.events if e.reason == "Resumed"]


def test_requeued_after_an_eviction_waits_suspended():
    p = plan(SUSPENDED_BY_KUEUE, [], REQUEUED)
    assert p.status["phase"] == "Suspended" and p.workload_status is None and p.create_ranks == []
    assert p.status["queue"]["state"] == "Queued" and p.status["queue"]["lastEviction"] == "Preempted"


def test_readmitted_it_resumes_at_its_epoch():
    p = plan(SUSPENDED_BY_KUEUE, [], ADMITTED)
    assert p.create_ranks == [0, 1] and p.status["attempt"] == 1 and p.status["restarts"] == 0
    (resumed,) = [e for e in p.events if e.reason == "Resumed"]
    assert resumed.message.startswith("Resumed at epoch 2")
    suspended = next(c for c in p.status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "False"


def test_quota_lost_without_an_eviction_stops_the_gang():
    p = plan({"phase": "Running", "attempt": 0}, [pod(0), pod(1)], PENDING)
    assert p.status["phase"] == "Suspended" and p.delete_pods == ["ddp-0", "ddp-1"]
    assert "Evicted" in reasons(p)


def test_pods_ready_is_reported_once_every_rank_is_ready():
    running = {"phase": "Running", "attempt": 0, "queue": {"state": "Admitted"}}
    p = plan(running, [pod(0), pod(1)], ADMITTED)
    ready = {c["type"]: c for c in p.workload_status["status"]["conditions"]}["PodsReady"]
    assert ready["status"] == "True"
    assert plan(running, [pod(0), pod(1, "Pending")], ADMITTED).workload_status is None
    already = workload(*ADMITTED["status"]["conditions"], cond("PodsReady", "True", "PodsReady"))
    assert plan(running, [pod(0), pod(1)], already).workload_status is None


def test_the_end_of_the_job_finishes_its_workload():
    done = {"phase": "Running", "attempt": 0, "queue": {"state": "Admitted"}}
    p = plan(done, [pod(0, "Succeeded"), pod(1, "Succeeded")], ADMITTED)
    assert p.status["phase"] == "Succeeded"
    finished = {c["type"]: c for c in p.workload_status["status"]["conditions"]}["Finished"]
    assert finished["status"] == "True" and finished["reason"] == "Succeeded"


def test_a_finished_workload_is_left_alone():
    wl = workload(cond("Finished", "True", "Succeeded"))
    p = plan({"phase": "Succeeded", "attempt": 0}, [], wl)
    assert p.workload_status is None and p.workload_patch is None


def test_run_policy_suspend_deactivates_the_workload_and_resume_activates_it():
    p = plan({"phase": "Running", "attempt": 0}, [pod(0), pod(1)], ADMITTED, s=spec(runPolicy={"suspend": True}))
    assert p.status["phase"] == "Suspended" and p.workload_patch == {"spec": {"active": False}}
    inactive = workload(cond("QuotaReserved", "False", "Inadmissible"), active=False)
    p = plan({"phase": "Suspended", "attempt": 1}, [], inactive)
    assert p.workload_patch == {"spec": {"active": True}} and p.create_ranks == []
    assert "Resumed" in reasons(p)  # runPolicy's resume; Kueue admits it again later


def test_a_placement_that_contradicts_the_job_fails_it():
    flavor = {"metadata": {"name": "default"}, "spec": {"nodeLabels": {"pool": "b"}}}
    s = spec(nodeSelector={"pool": "a"})
    p = plan({"phase": "Pending", "attempt": 0}, [], ADMITTED, s=s, flavors={"default": flavor})
    assert p.status["phase"] == "Failed" and "PlacementConflict" in reasons(p)
    assert p.create_ranks == [] and p.workload_status is not None  # the quota goes back


def test_no_queue_means_no_queue_status():
    p = rc.plan(JOB, spec(), {}, [], {}, T0)
    assert "queue" not in p.status and p.create_workload is None and p.create_ranks == [0, 1]


# --------------------------------------------------------------------------- the handlers


def body(labels=None, status=None, **spec_fields):
    return {
        "apiVersion": "dmlt.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "ddp", "namespace": "ns", "uid": UID, "generation": 1, "labels": labels or {}},
        "spec": {"image": "img", "replicas": 2, **spec_fields},
        "status": status or {},
    }


def memo_of(kube, **cfg):
    return kopf.Memo(config=OperatorConfig(default_tracking_uri="http://m:5000", **cfg), kube=kube)


def tick(b, kube, pods=(), seen=None, **cfg):
    status: dict = {}
    handlers.reconcile_job(b, list(pods), status, memo_of(kube, **cfg), LOG, seen)
    return status


def test_a_labelled_job_gets_a_workload_and_no_pods():
    kube = FakeJobKube()
    status = tick(body({qu.QUEUE_LABEL: "team-a"}), kube)
    (wl,) = kube.workloads
    assert wl["metadata"]["name"] == WL and wl["spec"]["podSets"][0]["count"] == 2
    assert [o["kind"] for o in kube.created] == []
    assert status["phase"] == "Pending" and status["queue"]["name"] == "team-a"


def test_admitted_pods_carry_the_flavors_node_labels():
    kube = FakeJobKube()
    kube.cluster_objects[("resourceflavors", "default")] = {"spec": {"nodeLabels": {"pool": "a"}}}
    tick(body(queueName="team-a", status={"phase": "Pending"}), kube, seen=kq.WorkloadSeen(ADMITTED))
    pods = [o for o in kube.created if o["kind"] == "Pod"]
    assert len(pods) == 2 and all(p["spec"]["nodeSelector"] == {"pool": "a"} for p in pods)


def test_the_release_is_patched_on_the_workload_status():
    kube = FakeJobKube()
    tick(body(queueName="team-a", status=SUSPENDED_BY_KUEUE), kube, seen=kq.WorkloadSeen(EVICTED))
    ((name, patch, on_status),) = kube.workload_patches
    assert name == WL and on_status and patch["status"]["admission"] is None


def test_a_missing_priority_class_fails_the_job():
    kube = FakeJobKube()
    status = tick(body({qu.QUEUE_LABEL: "team-a", qu.PRIORITY_CLASS_LABEL: "high"}), kube)
    assert status["phase"] == "Failed" and "WorkloadPriorityClass 'high'" in status["message"]
    assert kube.workloads == []


def test_the_priority_class_goes_into_the_workload():
    kube = FakeJobKube()
    kube.cluster_objects[("workloadpriorityclasses", "high")] = {"metadata": {"name": "high"}, "value": 1000}
    tick(body({qu.QUEUE_LABEL: "team-a", qu.PRIORITY_CLASS_LABEL: "high"}), kube)
    assert kube.workloads[0]["spec"]["priority"] == 1000
    assert kube.workloads[0]["spec"]["priorityClassRef"]["name"] == "high"


def test_two_queue_names_fail_the_job():
    status = tick(body({qu.QUEUE_LABEL: "a"}, queueName="b"), FakeJobKube())
    assert status["phase"] == "Failed" and "different queues" in status["message"]


def test_require_queue_name_refuses_new_jobs_in_managed_namespaces_only():
    kube = FakeJobKube()
    kube.namespace_labels["ns"] = {"dmlt.io/kueue-managed": "true"}
    status = tick(body(), kube, require_queue_name=True)
    assert status["phase"] == "Failed" and "requires a Kueue LocalQueue" in status["message"]
    kube.namespace_labels["ns"] = {}
    assert tick(body(), FakeJobKube(), require_queue_name=True)["phase"] == "Pending"
    assert tick(body(), kube, require_queue_name=False)["phase"] == "Pending"


def test_the_workload_index_and_the_preemptor():
    labels = {**EVICTED["metadata"]["labels"]}
    key = asyncio.run(handlers.kueue_workloads(namespace="ns", labels=labels, body=EVICTED))
    assert list(key) == [("ns", "ddp")]
    other = {"metadata": {"name": "trainingjob-hi-1", "namespace": "ns", "uid": "hi-uid", "labels": {}}}
    stale = {"metadata": {"name": "old", "labels": {qu.JOB_UID_LABEL: "old-uid"}}}
    seen = kq.workload_of(UID, [EVICTED, stale], [[EVICTED], [other]])
    assert seen.workload["metadata"]["name"] == WL and seen.preemptor == "ns/trainingjob-hi-1"
    assert kq.workload_of(UID, [stale], []) == kq.WorkloadSeen()


def test_flavors_are_read_once_a_minute():
    kube, cache = FakeJobKube(), kq.FlavorCache()
    cache.get(kube, "default")
    cache.get(kube, "default")
    assert kube.reads == [("resourceflavors", "default")]


def test_the_job_queue_hands_the_worker_the_jobs_workload():
    jq = handlers.JobQueue(None, {}, None, workloads={("ns", "ddp"): [EVICTED]})
    seen = jq.workload(("ns", "ddp"), body())
    assert seen.workload["metadata"]["name"] == WL and seen.preemptor is None  # hi-uid is not indexed
    assert jq.workload(("ns", "other"), body()) == kq.WorkloadSeen()


def test_a_workload_event_wakes_its_job():
    marked = []

    class Queue:
        def mark(self, key, memo):
            marked.append(key)

    memo = kopf.Memo(job_queue=Queue())
    asyncio.run(handlers.workload_event(namespace="ns", labels={"dmlt.io/job-name": "ddp"}, memo=memo))
    assert marked == [("ns", "ddp")]


# --------------------------------------------------------------------------- queue position


def summary(*names):
    return {"items": [{"metadata": {"name": n}, "positionInLocalQueue": i, "positionInClusterQueue": i + 5}
                      for i, n in enumerate(names)]}  # fmt: skip


LQ_PATH = "/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/ns/localqueues/team-a/pendingworkloads"


def test_a_waiting_job_shows_its_position_and_looks_again_later():
    position = rc.ad.QueuePosition(in_local_queue=1, in_cluster_queue=6)
    p = plan({"phase": "Pending", "attempt": 0}, wl=PENDING, position=position, position_tracked=True)
    assert p.status["queue"]["position"] == 2 and "at position 2" in p.status["message"]
    q = queue(PENDING, position=position, position_tracked=True)
    assert rc.position_refresh_after(p.status, q) == rc.POSITION_REFRESH_S
    assert rc.position_refresh_after(p.status, queue(PENDING)) is None  # no visibility API
    admitted = plan({"phase": "Pending"}, wl=ADMITTED, position_tracked=True)
    assert "position" not in admitted.status["queue"]
    assert rc.position_refresh_after(admitted.status, queue(ADMITTED, position_tracked=True)) is None


def test_pending_workloads_are_read_once_per_local_queue_per_ttl():
    kube, cache = FakeJobKube(), kq.PendingCache()
    kube.pending[LQ_PATH] = summary("other", WL)
    assert cache.position(kube, "ns", "team-a", WL) == rc.ad.QueuePosition(1, 6)
    assert cache.position(kube, "ns", "team-a", "other") == rc.ad.QueuePosition(0, 5)
    assert cache.position(kube, "ns", "team-a", "absent") is None
    assert kube.pending_reads == [LQ_PATH + "?limit=1000"]
    cache.position(kube, "ns", "team-b", WL)
    assert len(kube.pending_reads) == 2  # one per LocalQueue
    cache.ttl_s = 0.0
    cache.position(kube, "ns", "team-a", WL)
    assert len(kube.pending_reads) == 3  # read again once stale


@pytest.mark.parametrize("status", [404, 403])
def test_an_absent_or_forbidden_visibility_api_means_no_position_logged_once(status, caplog):
    kube, cache = FakeJobKube(), kq.PendingCache(ttl_s=0.0)
    kube.pending_error = ApiException(status=status, reason="nope")
    with caplog.at_level(logging.WARNING):
        assert cache.position(kube, "ns", "team-a", WL) is None
        assert cache.position(kube, "ns", "team-b", WL) is None
    assert len(kube.pending_reads) == 1 and not cache.available  # not asked again for a while
    assert len([r for r in caplog.records if "visibility API" in r.getMessage()]) == 1


def test_a_local_queue_that_does_not_exist_is_no_reason_to_stop_asking(caplog):
    kube, cache = FakeJobKube(), kq.PendingCache(ttl_s=0.0)
    kube.pending_error = ApiException(status=404, reason="Not Found")
    kube.pending_error.body = (
        '{"kind":"Status","reason":"NotFound","details":{"name":"nope",'
        '"group":"visibility.kueue.x-k8s.io","kind":"localqueue"},"code":404}'
    )
    with caplog.at_level(logging.WARNING):
        assert cache.position(kube, "ns", "nope", WL) is None
    assert cache.available and not caplog.records  # the API is there; the other queues still ask


def test_a_failing_visibility_api_is_asked_again_and_logged_once(caplog):
    kube, cache = FakeJobKube(), kq.PendingCache(ttl_s=0.0)
    kube.pending_error = ApiException(status=500, reason="panic")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert cache.position(kube, "ns", "team-a", WL) is None
    assert len(kube.pending_reads) == 3 and cache.available
    assert len([r for r in caplog.records if "visibility API" in r.getMessage()]) == 1
    kube.pending_error = TimeoutError()
    assert cache.position(kube, "ns", "team-a", WL) is None


def test_a_queued_jobs_status_is_written_only_when_its_position_changes():
    kube = FakeJobKube()
    kube.pending[LQ_PATH] = summary("a", "b", WL)
    memo = memo_of(kube)
    memo.job_queue = handlers.JobQueue(None, {}, None)
    seen = kq.WorkloadSeen(PENDING)
    b = body({qu.QUEUE_LABEL: "team-a"}, status={"phase": "Pending", "attempt": 0})
    b["metadata"]["resourceVersion"] = "1"
    out = handlers.sync_job(b, [], memo, LOG, seen)
    assert out.requeue_after == rc.POSITION_REFRESH_S
    ((_, written, _),) = kube.status_patches
    assert written["queue"]["position"] == 3 and "at position 3" in written["message"]
    b["status"] = {**b["status"], **written}
    for _ in range(3):  # the same place: nothing to write
        assert handlers.sync_job(b, [], memo, LOG, seen).written is None
    assert len(kube.status_patches) == 1
    kube.pending[LQ_PATH] = summary("b", WL)
    memo.job_queue.pending.ttl_s = 0.0
    handlers.sync_job(b, [], memo, LOG, seen)
    assert kube.status_patches[-1][1]["queue"]["position"] == 2


# --------------------------------------------------------------------------- changes of the queue


RUNNING = {"phase": "Running", "attempt": 0, "restarts": 0, "startTime": "2026-12-07T03:59:00Z"}


def test_a_queue_named_after_the_job_started_is_ignored_while_it_runs():
    p = plan(RUNNING, pods=[pod(0), pod(1)])
    assert p.create_workload is None and p.delete_pods == [] and p.status["phase"] == "Running"
    assert "queue" not in p.status and reasons(p) == ["QueueIgnored"]
    ignored = next(c for c in p.status["conditions"] if c["type"] == rc.COND_QUEUE_IGNORED)
    assert ignored["status"] == "True" and "team-a" in ignored["message"]
    again = plan(p.status, pods=[pod(0), pod(1)])
    assert reasons(again) == [] and again.status["phase"] == "Running"
    # between two attempts of a gang restart it has no Pods, and is still not queued
    restarting = plan({**p.status, "phase": "Restarting", "attempt": 1})
    assert restarting.create_workload is None and restarting.create_ranks == [0, 1]


def test_a_queue_named_while_suspended_applies_on_resume():
    suspended = {"phase": "Suspended", "attempt": 1}
    suspended["conditions"] = [cond("Suspended", "True", "JobSuspended")]
    p = plan(suspended)
    assert p.create_workload is not None and p.create_ranks == []
    assert p.status["queue"]["state"] == "Pending"


def test_removing_the_queue_of_an_evicted_job_resumes_it_without_kueue():
    old = {**SUSPENDED_BY_KUEUE, "queue": {"name": "team-a", "state": "Queued"}}
    p = rc.plan(JOB, spec(), old, [], {}, T0, rc.QueueInput(None, REQUEUED))
    assert p.delete_workload == (WL, "wl-uid")
    assert p.create_ranks == [0, 1] and p.status["phase"] == "Pending"
    suspended = next(c for c in p.status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "False" and suspended["reason"] == "QueueRemoved"
    assert "LeftQueue" in reasons(p) and "queue" not in p.status
    assert rc.status_delta(old, p.status)["queue"] is None
    # its Workload gone already (not seen any more): the suspension ends all the same
    gone = rc.plan(JOB, spec(), SUSPENDED_BY_KUEUE, [], {}, T0, None)
    assert gone.create_ranks == [0, 1] and gone.delete_workload is None
    assert next(c for c in gone.status["conditions"] if c["type"] == "Suspended")["status"] == "False"


def test_removing_the_queue_of_a_waiting_job_deletes_its_workload():
    old = {"phase": "Pending", "attempt": 0, "queue": {"name": "team-a", "state": "Queued"}}
    p = rc.plan(JOB, spec(), old, [], {}, T0, rc.QueueInput(None, PENDING))
    assert p.delete_workload == (WL, "wl-uid") and p.create_ranks == [0, 1]
    assert reasons(p) == ["LeftQueue"] and "queue" not in p.status


def test_a_running_job_keeps_following_its_workload_when_its_queue_changes():
    old = {**RUNNING, "queue": {"name": "team-a", "workload": WL, "state": "Admitted"}}
    for named in (None, "team-b"):
        q = rc.QueueInput(named, ADMITTED, {"default": {"spec": {}}})
        p = rc.plan(JOB, spec(), old, [pod(0), pod(1)], {}, T0, q)
        assert p.delete_workload is None and p.create_workload is None and p.delete_pods == []
        assert p.status["queue"]["state"] == "Admitted" and p.status["queue"]["name"] == "team-a"


def test_an_outdated_waiting_workload_is_replaced():
    bigger = spec(resources={"requests": {"cpu": "2"}})
    p = plan({"phase": "Pending", "attempt": 0}, wl=PENDING, s=bigger)
    assert p.delete_workload == (WL, "wl-uid")
    assert p.create_workload["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2"}
    }
    assert "Requeued" in reasons(p) and p.status["queue"]["state"] == "Pending" and p.create_ranks == []
    moved = rc.plan(JOB, spec(), {"phase": "Pending"}, [], {}, T0, rc.QueueInput("team-b", PENDING))
    assert moved.delete_workload == (WL, "wl-uid") and moved.create_workload["spec"]["queueName"] == "team-b"
    # admitted: Kueue refuses podSet changes while it holds quota; the running gang is left alone
    admitted = plan({"phase": "Running", "attempt": 0}, pods=[pod(0), pod(1)], wl=ADMITTED, s=bigger)
    assert admitted.delete_workload is None and admitted.create_workload is None
    # the same spec written differently is not an edit
    same = spec(resources={"requests": {"cpu": "500m"}})
    written = qu.build_workload(JOB, spec(resources={"requests": {"cpu": "0.5"}}), "team-a")
    assert not qu.workload_outdated(written, same, "team-a")


def test_the_outdated_workload_is_deleted_before_the_new_one_is_created():
    kube = FakeJobKube()
    old = qu.build_workload(JOB, spec(), "team-a")
    kube.workloads.append(old)
    stale = {**PENDING, "metadata": {**PENDING["metadata"]}}
    tick(body(queueName="team-a", status={"phase": "Pending"}, replicas=3), kube, seen=kq.WorkloadSeen(stale))
    assert kube.workloads_deleted == [(WL, "wl-uid")]
    assert [w["spec"]["podSets"][0]["count"] for w in kube.workloads] == [3]
