"""TrainingJob admission through Kueue, the pure pieces: the queue a job names, the Workload
built for it, the status patches the operator writes on it (trainingjob/queueing.py), and the
reading of its status: admission, placement, eviction, position, next step
(trainingjob/admission.py). tests/e2e/test_kueue_workload.py sends the same objects to Kueue."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.trainingjob import admission as ad
from dmlt_operator.trainingjob import queueing as q
from dmlt_operator.trainingjob.build import JobRef, build_rank_pod
from dmlt_operator.trainingjob.spec import parse_spec

pytestmark = pytest.mark.unit

JOB = JobRef(name="ddp", namespace="team-a", uid="0d3c6a1e-uid", generation=2)
NOW = datetime(2026, 12, 7, 3, 30, tzinfo=UTC)
LATER = datetime(2026, 12, 7, 3, 31, tzinfo=UTC)


def spec(**fields):
    return parse_spec({"image": "dmlt-trainer:dev", **fields})


def meta(**labels):
    return {"name": JOB.name, "namespace": JOB.namespace, "labels": labels}


def cond(type_, status, reason, message="", when="2026-12-07T03:00:00Z"):
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": when}


# --------------------------------------------------------------------------- queue name, priority


def test_queue_from_the_label_or_the_spec():
    assert q.queue_name(meta(**{q.QUEUE_LABEL: "team-a"}), spec()) == "team-a"
    assert q.queue_name(meta(), spec(queueName="team-b")) == "team-b"
    assert q.queue_name(meta(**{q.QUEUE_LABEL: "same"}), spec(queueName="same")) == "same"


def test_no_queue_means_not_queued():
    assert q.queue_name(meta(), spec()) is None
    assert q.queue_name({"name": "x"}, spec()) is None
    assert q.queue_name(meta(**{q.QUEUE_LABEL: " "}), spec()) is None


def test_label_and_spec_naming_different_queues_is_an_error():
    with pytest.raises(q.QueueError, match="name different queues"):
        q.queue_name(meta(**{q.QUEUE_LABEL: "a"}), spec(queueName="b"))


@pytest.mark.parametrize("bad", ["Team", "a" * 64, "-a", "a_b"])
def test_spec_queue_name_is_a_dns_label(bad):
    with pytest.raises(ValueError, match="queueName"):
        spec(queueName=bad)


def test_priority_class_from_the_label():
    assert q.priority_class_name(meta(**{q.PRIORITY_CLASS_LABEL: "high"})) == "high"
    assert q.priority_class_name(meta()) is None


def test_priority_from_a_workload_priority_class_or_a_priority_class():
    wpc = {"kind": "WorkloadPriorityClass", "metadata": {"name": "high"}, "value": 1000}
    p = q.Priority.from_object(wpc)
    assert p == q.Priority("high", 1000)
    assert p.ref() == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "high"}
    pc = q.Priority.from_object({"kind": "PriorityClass", "metadata": {"name": "batch"}, "value": 5})
    assert pc.ref() == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "batch"}
    with pytest.raises(q.QueueError):
        q.Priority.from_object({"kind": "ConfigMap", "metadata": {"name": "x"}})


# --------------------------------------------------------------------------- the Workload


def test_workload_name_is_per_job_object():
    name = q.workload_name(JOB)
    assert name.startswith("trainingjob-ddp-") and len(name) == len("trainingjob-ddp-") + 5
    assert q.workload_name(JOB) == name
    assert q.workload_name(JobRef("ddp", "team-a", "another-uid")) != name
    longest = JobRef("a" * 50, "n" * 63, "u")
    assert len(q.workload_name(longest)) <= 253


def test_workload_admits_the_whole_gang():
    wl = q.build_workload(
        JOB, spec(replicas=4, resources={"requests": {"cpu": "1", "memory": "2Gi"}}), "team-a"
    )
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    assert wl["metadata"]["namespace"] == "team-a"
    assert wl["spec"]["queueName"] == "team-a"
    (ps,) = wl["spec"]["podSets"]
    assert ps["name"] == q.POD_SET and ps["count"] == 4
    assert "minCount" not in ps  # all or nothing
    (container,) = ps["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert "priorityClassRef" not in wl["spec"]
    # always a priority: without one Kueue v0.17's visibility API panics (kueue#14399)
    assert wl["spec"]["priority"] == 0


def test_workload_is_owned_by_the_job_and_names_its_uid():
    wl = q.build_workload(JOB, spec(), "team-a")
    (owner,) = wl["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "dmlt.io/v1alpha1",
        "kind": "TrainingJob",
        "name": "ddp",
        "uid": JOB.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = wl["metadata"]["labels"]
    assert labels[q.JOB_UID_LABEL] == JOB.uid
    assert labels["dmlt.io/job-name"] == "ddp"
    assert q.QUEUE_LABEL not in labels  # Kueue's Job integrations must not take it for a job


def test_limits_without_requests_are_requests():
    s = spec(
        resources={"requests": {"cpu": "500m"}, "limits": {"cpu": "2", "nvidia.com/gpu": 1}}, backend="nccl"
    )
    (ps,) = q.pod_sets(s)
    resources = ps["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "500m", "nvidia.com/gpu": 1}
    assert resources["limits"] == {"cpu": "2", "nvidia.com/gpu": 1}


def test_workload_carries_the_jobs_node_selector_tolerations_and_priority():
    tol = {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}
    s = spec(nodeSelector={"pool": "cpu"}, tolerations=[tol])
    wl = q.build_workload(JOB, s, "team-a", q.Priority("high", 1000))
    template = wl["spec"]["podSets"][0]["template"]["spec"]
    assert template["nodeSelector"] == {"pool": "cpu"}
    assert template["tolerations"] == [tol]
    assert wl["spec"]["priority"] == 1000
    assert wl["spec"]["priorityClassRef"]["name"] == "high"


def test_no_resources_no_resources_block():
    (ps,) = q.pod_sets(spec())
    assert "resources" not in ps["template"]["spec"]["containers"][0]


def test_pod_sets_differ():
    s = spec(replicas=2, resources={"requests": {"cpu": "1"}})
    wl = q.build_workload(JOB, s, "team-a")
    assert not q.pod_sets_differ(wl, s)
    # what the apiserver or Kueue add does not count
    wl["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    assert not q.pod_sets_differ(wl, s)
    assert q.pod_sets_differ(wl, spec(replicas=3, resources={"requests": {"cpu": "1"}}))
    assert q.pod_sets_differ(wl, spec(replicas=2, resources={"requests": {"cpu": "2"}}))
    assert q.pod_sets_differ(
        wl, spec(replicas=2, resources={"requests": {"cpu": "1"}}, nodeSelector={"a": "b"})
    )
    assert q.pod_sets_differ({"spec": {"podSets": []}}, s)


# --------------------------------------------------------------------------- Workload statuses


def pending_workload():
    return {
        "metadata": {"name": "trainingjob-ddp-abcde", "namespace": "team-a", "resourceVersion": "41"},
        "spec": {"queueName": "team-a", "podSets": []},
        "status": {
            "conditions": [
                cond(
                    "QuotaReserved",
                    "False",
                    "Pending",
                    "couldn't assign flavors to pod set trainer: insufficient unused quota for cpu in "
                    "flavor default, 1 more needed",
                )
            ],
            "resourceRequests": [{"name": "trainer", "resources": {"cpu": "2"}}],
        },
    }


def admitted_workload(flavors=None):
    wl = pending_workload()
    wl["metadata"].update(resourceVersion="42", generation=1)
    wl["status"] = {
        "conditions": [
            cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq"),
            cond("Admitted", "True", "Admitted", "The workload is admitted"),
        ],
        "admission": {
            "clusterQueue": "cq",
            "podSetAssignments": [
                {
                    "name": "trainer",
                    "count": 2,
                    "flavors": flavors or {"cpu": "default"},
                    "resourceUsage": {"cpu": "2"},
                }
            ],
        },
    }
    return wl


PREEMPTION_MESSAGE = (
    "Preempted to accommodate a workload (UID: 7f0c-high, JobUID: 11aa-job) due to prioritization "
    "in the ClusterQueue; preemptor path: /cq; preemptee path: /cq"
)


def evicted_workload(reason="Preempted", message=PREEMPTION_MESSAGE):
    wl = admitted_workload()
    wl["status"]["conditions"] += [
        cond("Evicted", "True", reason, message),
        cond("Preempted", "True", "InClusterQueue", message)
        if reason == "Preempted"
        else cond("Preempted", "False", "x"),
    ]
    return wl


def test_pending_workload():
    view = ad.parse_workload(pending_workload())
    assert not view.admitted and not view.quota_reserved and view.eviction is None
    assert view.cluster_queue is None and view.flavors == {}
    assert view.pending_reason == "Pending"
    assert "insufficient unused quota for cpu" in view.pending_message
    assert view.queue == "team-a" and view.active


def test_admitted_workload():
    view = ad.parse_workload(admitted_workload({"cpu": "default", "memory": "default"}))
    assert view.admitted and view.quota_reserved and view.cluster_queue == "cq"
    assert view.flavors == {"cpu": "default", "memory": "default"}
    assert ad.flavor_names(view) == ["default"]
    assert view.pending_message == "" and not view.finished


def test_preempted_workload_names_the_preemptor():
    view = ad.parse_workload(evicted_workload())
    ev = view.eviction
    assert ev is not None and ev.preempted and not ev.counts_as_failure
    assert ev.preemptor_uid == "7f0c-high" and ev.preemptor_job_uid == "11aa-job"
    assert ev.preemption_reason == "InClusterQueue"


def test_preemptor_unknown_to_kueue():
    msg = (
        "Preempted to accommodate a workload (UID: UNKNOWN, JobUID: UNKNOWN) due to reclamation "
        "within the cohort"
    )
    ev = ad.parse_workload(evicted_workload(message=msg)).eviction
    assert ev is not None and ev.preemptor_uid is None and ev.preemptor_job_uid is None
    assert "another workload" in ad.eviction_event(ev)


def test_preemptor_from_the_preempted_condition_when_evicted_says_less():
    wl = evicted_workload()
    wl["status"]["conditions"][2]["message"] = "Preempted"
    ev = ad.parse_workload(wl).eviction
    assert ev is not None and ev.preemptor_uid == "7f0c-high"


def test_pods_ready_timeout_eviction():
    msg = "Exceeded the PodsReady timeout team-a/trainingjob-ddp-abcde"
    ev = ad.parse_workload(evicted_workload("PodsReadyTimeout", msg)).eviction
    assert ev is not None and ev.reason == "PodsReadyTimeout" and not ev.preempted
    assert ev.preemptor_uid is None and ev.preemption_reason is None
    assert "not every rank was ready in time" in ad.eviction_event(ev)


def test_evicted_false_is_no_eviction():
    wl = admitted_workload()
    wl["status"]["conditions"].append(cond("Evicted", "False", "QuotaReserved", "Previously: Preempted"))
    assert ad.parse_workload(wl).eviction is None


def test_admission_checks_hold_the_admission():
    wl = admitted_workload()
    wl["status"]["conditions"] = [cond("QuotaReserved", "True", "QuotaReserved")]
    wl["status"]["admissionChecks"] = [
        {"name": "prov", "state": "Pending", "message": "waiting for capacity", "lastTransitionTime": "x"},
        {"name": "ok", "state": "Ready", "message": ""},
    ]
    view = ad.parse_workload(wl)
    assert view.quota_reserved and not view.admitted
    assert [c.name for c in view.waiting_checks] == ["prov"]
    assert ad.next_step(view, pods_exist=False) is ad.Step.WAIT
    msg = ad.queued_message(view)
    assert "quota reserved in ClusterQueue cq" in msg and "prov (Pending)" in msg


def test_finished_and_deactivated_and_requeued():
    wl = admitted_workload()
    wl["status"]["conditions"].append(cond("Finished", "True", "Succeeded"))
    assert ad.parse_workload(wl).finished
    wl = pending_workload()
    wl["spec"]["active"] = False
    wl["status"]["requeueState"] = {"count": 1, "requeueAt": "2026-12-07T03:40:00Z"}
    view = ad.parse_workload(wl)
    assert not view.active and view.requeue_at == "2026-12-07T03:40:00Z"
    assert "deactivated" in ad.queued_message(view)


# --------------------------------------------------------------------------- placement


FLAVORS = {
    "spot": {
        "metadata": {"name": "spot"},
        "spec": {
            "nodeLabels": {"pool": "spot", "arch": "amd64"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
    "gpu": {"metadata": {"name": "gpu"}, "spec": {"nodeLabels": {"accel": "a100"}}},
    "plain": {"metadata": {"name": "plain"}, "spec": {}},
}


def test_placement_from_the_flavors():
    view = ad.parse_workload(admitted_workload({"cpu": "spot", "memory": "spot", "nvidia.com/gpu": "gpu"}))
    where = ad.placement(view, FLAVORS)
    assert where.node_selector == {"pool": "spot", "arch": "amd64", "accel": "a100"}
    assert where.tolerations == [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
    assert ad.placement(ad.parse_workload(admitted_workload({"cpu": "plain"})), FLAVORS) == ad.Placement()


def test_placement_needs_every_flavor_read():
    view = ad.parse_workload(admitted_workload({"cpu": "missing"}))
    with pytest.raises(KeyError, match="missing"):
        ad.placement(view, FLAVORS)


def test_placement_conflicting_with_the_jobs_node_selector():
    view = ad.parse_workload(admitted_workload({"cpu": "spot"}))
    with pytest.raises(ad.PlacementConflict, match="pool"):
        ad.placement(view, FLAVORS, node_selector={"pool": "on-demand"})
    assert ad.placement(view, FLAVORS, node_selector={"pool": "spot"}).node_selector["pool"] == "spot"


def test_placement_with_admission_check_updates():
    wl = admitted_workload({"cpu": "spot"})
    wl["status"]["admissionChecks"] = [
        {
            "name": "prov",
            "state": "Ready",
            "podSetUpdates": [
                {
                    "name": "trainer",
                    "labels": {"prov": "req-1"},
                    "annotations": {"a": "b"},
                    "nodeSelector": {"zone": "z1"},
                    "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
                },
                {"name": "other", "labels": {"ignored": "yes"}},
            ],
        }
    ]
    where = ad.placement(ad.parse_workload(wl), FLAVORS)
    assert where.node_selector == {"pool": "spot", "arch": "amd64", "zone": "z1"}
    assert where.labels == {"prov": "req-1"} and where.annotations == {"a": "b"}
    assert len(where.tolerations) == 1  # the same toleration once
    wl["status"]["admissionChecks"][0]["podSetUpdates"][0]["nodeSelector"] = {"pool": "other"}
    with pytest.raises(ad.PlacementConflict):
        ad.placement(ad.parse_workload(wl), FLAVORS)


def test_apply_placement_to_a_rank_pod():
    tol = {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}
    s = spec(replicas=2, nodeSelector={"disk": "ssd"}, tolerations=[tol])
    pod = build_rank_pod(JOB, s, 1, 0, OperatorConfig())
    where = ad.Placement(
        node_selector={"pool": "spot"},
        tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}, tol],
        labels={"prov": "r", "dmlt.io/rank": "9"},
        annotations={"x": "y"},
    )
    placed = ad.apply_placement(pod, where)
    assert placed["spec"]["nodeSelector"] == {"pool": "spot", "disk": "ssd"}
    assert placed["spec"]["tolerations"] == [
        tol,
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert placed["metadata"]["labels"]["dmlt.io/rank"] == "1"  # the operator's labels win
    assert placed["metadata"]["labels"]["prov"] == "r"
    assert placed["metadata"]["annotations"]["x"] == "y"
    assert pod["spec"].get("nodeSelector") == {"disk": "ssd"}  # the input is not changed
    assert ad.apply_placement(pod, ad.Placement()) == pod


# --------------------------------------------------------------------------- position


def test_position_from_the_visibility_api():
    summary = {
        "kind": "PendingWorkloadsSummary",
        "items": [
            {"metadata": {"name": "other"}, "positionInClusterQueue": 0, "positionInLocalQueue": 0},
            {
                "metadata": {"name": "trainingjob-ddp-abcde"},
                "positionInClusterQueue": 3,
                "positionInLocalQueue": 1,
            },
        ],
    }
    pos = ad.parse_position(summary, "trainingjob-ddp-abcde")
    assert pos == ad.QueuePosition(in_local_queue=1, in_cluster_queue=3)
    assert ad.parse_position(summary, "absent") is None
    assert ad.parse_position({}, "x") is None
    path = ad.pending_workloads_path("team-a", "lq")
    assert path == (
        "/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/team-a/localqueues/lq/pendingworkloads?limit=1000"
    )
    msg = ad.queued_message(ad.parse_workload(pending_workload()), pos)
    assert msg.startswith("queued in LocalQueue team-a at position 2: couldn't assign flavors")


# --------------------------------------------------------------------------- next step


@pytest.mark.parametrize(
    ("workload", "pods", "step"),
    [
        (None, False, ad.Step.CREATE_WORKLOAD),
        (None, True, ad.Step.SUSPEND),
        (pending_workload(), False, ad.Step.WAIT),
        (pending_workload(), True, ad.Step.SUSPEND),
        (admitted_workload(), False, ad.Step.RUN),
        (admitted_workload(), True, ad.Step.RUN),
        (evicted_workload(), True, ad.Step.SUSPEND),
        (evicted_workload(), False, ad.Step.RELEASE),
    ],
)
def test_next_step(workload, pods, step):
    view = ad.parse_workload(workload) if workload is not None else None
    assert ad.next_step(view, pods_exist=pods) is step


def test_next_step_after_release_and_when_finished():
    released = evicted_workload()
    released["status"]["conditions"] = [
        cond("QuotaReserved", "False", "Pending", "Preempted"),
        cond("Evicted", "True", "Preempted", PREEMPTION_MESSAGE),
    ]
    released["status"].pop("admission")
    assert ad.next_step(ad.parse_workload(released), pods_exist=False) is ad.Step.WAIT
    done = admitted_workload()
    done["status"]["conditions"].append(cond("Finished", "True", "Succeeded"))
    assert ad.next_step(ad.parse_workload(done), pods_exist=True) is ad.Step.DONE


# --------------------------------------------------------------------------- status patches


def conditions_by_type(patch):
    return {c["type"]: c for c in patch["status"]["conditions"]}


def test_release_quota_after_a_preemption():
    patch = q.release_quota_status(evicted_workload(), LATER)
    assert patch["metadata"] == {"resourceVersion": "42"}
    assert patch["status"]["admission"] is None
    by_type = conditions_by_type(patch)
    assert by_type["QuotaReserved"]["status"] == "False" and by_type["QuotaReserved"]["reason"] == "Pending"
    assert by_type["QuotaReserved"]["message"].startswith("Preempted to accommodate")
    assert by_type["QuotaReserved"]["lastTransitionTime"] == "2026-12-07T03:31:00Z"
    assert by_type["Admitted"]["status"] == "False"
    assert by_type["Requeued"]["status"] == "True" and by_type["Requeued"]["reason"] == "Preempted"
    assert by_type["Evicted"]["status"] == "True"  # Kueue resets it on the next reservation
    assert by_type["QuotaReserved"]["observedGeneration"] == 1


def test_release_quota_after_a_pods_ready_timeout_is_not_requeued():
    patch = q.release_quota_status(evicted_workload("PodsReadyTimeout", "timeout"), LATER)
    by_type = conditions_by_type(patch)
    assert by_type["Requeued"]["status"] == "False" and by_type["Requeued"]["reason"] == "PodsReadyTimeout"


def test_finished_status():
    patch = q.finished_status(admitted_workload(), True, "the job succeeded", NOW)
    fin = conditions_by_type(patch)["Finished"]
    assert fin["status"] == "True" and fin["reason"] == "Succeeded" and fin["message"] == "the job succeeded"
    assert (
        conditions_by_type(q.finished_status(admitted_workload(), False, "x", NOW))["Finished"]["reason"]
        == "Failed"
    )
    assert "admission" not in patch["status"]  # the quota is released by Finished itself


def test_pods_ready_status_and_active():
    ready = conditions_by_type(q.pods_ready_status(admitted_workload(), True, NOW))["PodsReady"]
    assert ready["status"] == "True" and ready["reason"] == "PodsReady"
    not_ready = conditions_by_type(q.pods_ready_status(admitted_workload(), False, NOW))["PodsReady"]
    assert not_ready["status"] == "False"
    assert q.active_patch(False) == {"spec": {"active": False}}


def test_patch_without_resource_version():
    wl = admitted_workload()
    del wl["metadata"]["resourceVersion"]
    assert "metadata" not in q.finished_status(wl, True, "ok", NOW)


# --------------------------------------------------------------------------- status and events


def test_queue_status_for_each_state():
    assert q.QUEUE_LABEL  # the label the status's queue comes from
    pending = ad.queue_status(None, "team-a")
    assert pending["state"] == "Pending" and pending["name"] == "team-a"
    queued = ad.queue_status(ad.parse_workload(pending_workload()), "team-a", ad.QueuePosition(0, 4))
    assert queued["state"] == "Queued" and queued["position"] == 1
    assert queued["workload"] == "trainingjob-ddp-abcde"
    assert "insufficient unused quota" in queued["message"]
    admitted = ad.queue_status(ad.parse_workload(admitted_workload()), "team-a")
    assert admitted == {
        "name": "team-a",
        "workload": "trainingjob-ddp-abcde",
        "clusterQueue": "cq",
        "state": "Admitted",
    }
    evicted = ad.queue_status(ad.parse_workload(evicted_workload()), "team-a")
    assert evicted["state"] == "Evicted" and evicted["reason"] == "Preempted"
    assert evicted["message"].startswith("Preempted to accommodate")
    released = evicted_workload()
    released["status"]["conditions"] = [
        cond("QuotaReserved", "False", "Pending", PREEMPTION_MESSAGE),
        cond("Evicted", "True", "Preempted", PREEMPTION_MESSAGE),
    ]
    requeued = ad.queue_status(ad.parse_workload(released), "team-a", ad.QueuePosition(0, 0))
    assert requeued["state"] == "Queued" and requeued["lastEviction"] == "Preempted"
    assert requeued["position"] == 1 and "clusterQueue" not in requeued


def test_eviction_events():
    ev = ad.parse_workload(evicted_workload()).eviction
    assert ev is not None
    workloads = [
        {"metadata": {"name": "trainingjob-big-12345", "namespace": "team-b", "uid": "7f0c-high"}},
        {"metadata": {"name": "x", "namespace": "team-a", "uid": "other"}},
    ]
    who = ad.preemptor_name(ev, workloads)
    assert who == "team-b/trainingjob-big-12345"
    assert ad.eviction_event(ev, who) == (
        "Preempted by team-b/trainingjob-big-12345 (InClusterQueue); Pods deleted, checkpoint kept"
    )
    assert ad.eviction_event(ev).startswith("Preempted by 7f0c-high")
    assert ad.preemptor_name(ev, []) is None
    stopped = ad.Eviction(reason="ClusterQueueStopped", message="The ClusterQueue is stopped")
    assert ad.eviction_event(stopped) == (
        "Evicted (ClusterQueueStopped): The ClusterQueue is stopped; Pods deleted, checkpoint kept"
    )


def test_queue_status_fits_the_crd():
    """status.queue as queue_status writes it is in the CRD's status schema (else pruned)."""
    from pathlib import Path

    import yaml

    from tests.helpers.crd_schema import assert_fits

    crd = Path(__file__).resolve().parents[2] / "helm" / "dmlt" / "crds" / "trainingjobs.dmlt.io.yaml"
    (version,) = yaml.safe_load(crd.read_text())["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["queue"]
    wl = admitted_workload()
    wl["status"]["conditions"] = [cond("QuotaReserved", "True", "QuotaReserved")]
    wl["status"]["admissionChecks"] = [{"name": "prov", "state": "Pending"}]
    released = evicted_workload()
    released["status"]["conditions"] = [cond("Evicted", "True", "Preempted", PREEMPTION_MESSAGE)]
    for workload in (None, pending_workload(), admitted_workload(), evicted_workload(), released, wl):
        view = ad.parse_workload(workload) if workload is not None else None
        status = ad.queue_status(view, "team-a", ad.QueuePosition(1, 2))
        assert_fits(status, schema, ".status.queue")


@pytest.mark.parametrize(
    "fields",
    [
        {"replicas": 3},
        {
            "replicas": 2,
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        },
        {
            "backend": "nccl",
            "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "4"}},
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    ],
)
def test_workload_template_asks_what_the_rank_pods_ask(fields):
    """Kueue charges the quota from the podSet's template: it must ask what every rank Pod that
    build.py makes asks (containers and their resources, init containers, node selector,
    tolerations), or admission and the Pods disagree. A drift guard for build.py changes."""
    s = spec(**fields)
    template = q.pod_sets(s)[0]["template"]["spec"]
    for rank in range(s.replicas):
        pod = build_rank_pod(JOB, s, rank, 0, OperatorConfig())["spec"]
        assert [c["name"] for c in pod["containers"]] == [c["name"] for c in template["containers"]]
        for built, asked in zip(pod["containers"], template["containers"], strict=True):
            res = built.get("resources") or {}
            effective = {**(res.get("limits") or {}), **(res.get("requests") or {})}
            assert (asked.get("resources") or {}).get("requests", {}) == effective
            assert (asked.get("resources") or {}).get("limits", {}) == (res.get("limits") or {})
        assert not pod.get("initContainers") and not pod.get("overhead")
        assert pod.get("nodeSelector", {}) == template.get("nodeSelector", {})
        assert pod.get("tolerations", []) == template.get("tolerations", [])
