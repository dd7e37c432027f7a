"""The operator against a real kube-apiserver (and etcd), with no kubelet: this test plays it.

What a unit test cannot show: the CRD is accepted by a real apiserver (structural schema, CEL
compiled within its cost budget, defaults applied), invalid specs are refused with the field
named, the chart's ClusterRole is enough (the operator runs with the ServiceAccount's
identity), status patches survive pruning, and the whole loop (create → Running → rank failure
→ gang restart → Succeeded, suspend/resume, TTL, operator restart) works on real objects.

Needs kube-apiserver and etcd from the build cache of hack/setup.sh (or $DMLT_K8S_BIN, $DMLT_ETCD);
a clear failure otherwise. About a minute on two cores.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.apiserver import (
    APISERVER_MARKS,
    NS,
    apply_job,
    events_of,
    get_job,
    job_gone,
    play_kubelet,
    pods_of,
    wait_phase,
    wait_pods,
    wait_until,
)

pytestmark = APISERVER_MARKS

# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"backend": "mpi"}, "spec.backend"),
        ({"backend": "nccl"}, "nvidia.com/gpu"),
        ({"trainer": {"hiddenDims": []}}, "spec.trainer.hiddenDims"),
        ({"trainer": {"dropout": 1.5}}, "spec.trainer.dropout"),
        ({"runPolicy": {"cleanPodPolicy": "Some"}}, "spec.runPolicy.cleanPodPolicy"),
    ],
)
def test_apiserver_rejects_invalid_specs(cluster, spec, fragment):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as err:
        apply_job(cluster, "bad", **spec)
    assert err.value.status == 422
    assert fragment in err.value.body


def test_apiserver_applies_defaults_and_keeps_fields_immutable(cluster):
    from kubernetes.client.exceptions import ApiException

    apply_job(cluster, "defaults", runPolicy={"suspend": True})
    spec = get_job(cluster, "defaults")["spec"]
    assert spec["trainer"]["hiddenDims"] == [512, 256, 128]
    assert spec["runPolicy"]["backoffLimit"] == 3 and spec["rendezvous"]["port"] == 29500
    custom = cluster["custom"]
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs",
                                              "defaults", {"spec": {"replicas": 3}})  # fmt: skip
    assert "replicas is immutable" in err.value.body
    custom.delete_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", "defaults")


def test_lifecycle_with_a_gang_restart(cluster, operator):
    apply_job(cluster, "life", runPolicy={"backoffLimit": 2})
    wait_pods(cluster, "life", 2, attempt=0)
    pods = pods_of(cluster, "life")
    assert pods["life-1"].spec.hostname == "life-1" and pods["life-1"].spec.subdomain == "life"
    svc = cluster["core"].read_namespaced_service("life", NS)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses
    for pod in pods:
        play_kubelet(cluster, pod, "running")
    job = wait_phase(cluster, "life", "Running")
    assert job["status"]["ready"] == "2/2"

    play_kubelet(cluster, "life-1", "failed")
    # Unscheduled Pods are deleted at once (no kubelet), so the new attempt follows quickly.
    wait_pods(cluster, "life", 2, attempt=1)
    job = get_job(cluster, "life")
    assert job["status"]["restarts"] == 1
    assert job["status"]["phase"] in ("Restarting", "Pending")
    for pod in pods_of(cluster, "life"):
        play_kubelet(cluster, pod, "running")
    wait_phase(cluster, "life", "Running")

    # An operator restart mid-run: same Pods, no new ones.
    uids = {n: p.metadata.uid for n, p in pods_of(cluster, "life").items()}
    operator.stop()
    operator.start()
    time.sleep(3)
    assert {n: p.metadata.uid for n, p in pods_of(cluster, "life").items()} == uids

    for pod in pods_of(cluster, "life"):
        play_kubelet(cluster, pod, "succeeded")
    job = wait_phase(cluster, "life", "Succeeded")
    assert job["status"]["restarts"] == 1 and job["status"]["completionTime"]
    reasons = events_of(cluster, "life")
    for reason in ("CreatedPods", "Running", "GangRestart", "Succeeded"):
        assert reason in reasons


def test_suspend_resume_and_ttl(cluster, operator):
    apply_job(cluster, "susp", runPolicy={"ttlSecondsAfterFinished": 1, "cleanPodPolicy": "All"})
    wait_pods(cluster, "susp", 2, attempt=0)
    custom = cluster["custom"]
    patch = {"spec": {"runPolicy": {"suspend": True}}}
    custom.patch_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", "susp", patch)
    wait_phase(cluster, "susp", "Suspended")
    wait_until(lambda: not pods_of(cluster, "susp"), 30, "suspended pods to go")
    patch = {"spec": {"runPolicy": {"suspend": False}}}
    custom.patch_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", "susp", patch)
    wait_pods(cluster, "susp", 2, attempt=1)
    for pod in pods_of(cluster, "susp"):
        play_kubelet(cluster, pod, "succeeded")
    wait_until(lambda: job_gone(cluster, "susp"), 30, "TTL deletion")
    assert not pods_of(cluster, "susp")


def test_a_job_has_no_finalizer_and_its_children_are_the_garbage_collectors(cluster, operator):
    """Deleting a job costs the operator nothing: it goes at once, and the garbage collector
    (not running here) deletes its Service and Pods through their controller references."""
    apply_job(cluster, "gone")
    wait_pods(cluster, "gone", 2, attempt=0)
    job = get_job(cluster, "gone")
    assert not job["metadata"].get("finalizers")
    assert not any(k.startswith("dmlt.io/") for k in job["metadata"].get("annotations") or {})
    children = [*pods_of(cluster, "gone").values(), cluster["core"].read_namespaced_service("gone", NS)]
    for child in children:
        (owner,) = child.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "TrainingJob",
            "gone",
            job["metadata"]["uid"],
            True,
        )
    cluster["custom"].delete_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", "gone")
    wait_until(lambda: job_gone(cluster, "gone"), 5, "the job to go at once")
    for pod in pods_of(cluster, "gone"):  # what the garbage collector would do
        cluster["core"].delete_namespaced_pod(pod, NS)


def test_the_finalizer_of_an_older_operator_is_removed(cluster, operator):
    apply_job(cluster, "legacy", finalizers=["dmlt.io/finalizer"])
    wait_pods(cluster, "legacy", 2, attempt=0)
    wait_until(lambda: not get_job(cluster, "legacy")["metadata"].get("finalizers"), 30, "kopf to drop it")
    cluster["custom"].delete_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", "legacy")
    wait_until(lambda: job_gone(cluster, "legacy"), 5, "the job to go at once")
    for pod in pods_of(cluster, "legacy"):
        cluster["core"].delete_namespaced_pod(pod, NS)
