"""Failure paths against a real kube-apiserver (and etcd), with the operator as a process.

What the apiserver does here that no CRD can see: a ResourceQuota the Pods exceed (transient:
the job waits with the quota's reason in status, then gets its Pods once the quota is raised),
and a LimitRange whose default limit makes a Pod invalid (permanent: 422, the job fails with
InvalidSpec naming the field, and no Pod is left behind). Meanwhile the operator keeps
reconciling another job of the same namespace.

There is no controller-manager: the test sets the quota's status as the quota controller would.
"""

from __future__ import annotations

from tests.helpers.apiserver import (
    APISERVER_MARKS,
    NS,
    apply_job,
    events_of,
    get_job,
    play_kubelet,
    pods_of,
    wait_phase,
    wait_pods,
    wait_until,
)

pytestmark = APISERVER_MARKS

REQUESTS = {"requests": {"cpu": "100m"}}


def message_of(cluster, name: str) -> str:
    return get_job(cluster, name).get("status", {}).get("message") or ""


def set_quota(cluster, pods: int) -> None:
    """A quota of `pods` Pods that are not BestEffort, with the status its controller would write."""
    core = cluster["core"]
    hard = {"pods": str(pods)}
    body = {"metadata": {"name": "pods"}, "spec": {"hard": hard, "scopes": ["NotBestEffort"]}}
    if not core.list_namespaced_resource_quota(NS).items:
        core.create_namespaced_resource_quota(NS, body)
        core.patch_namespaced_resource_quota_status(
            "pods", NS, {"status": {"hard": hard, "used": {"pods": "0"}}}
        )
        return
    core.patch_namespaced_resource_quota("pods", NS, {"spec": {"hard": hard}})
    core.patch_namespaced_resource_quota_status("pods", NS, {"status": {"hard": hard}})


def run_other_job(cluster, name: str) -> None:
    """Another job (BestEffort Pods: outside the quota's scope) runs while the first one waits."""
    apply_job(cluster, name)
    wait_pods(cluster, name, 2, attempt=0)
    for pod in pods_of(cluster, name):
        play_kubelet(cluster, pod, "running")
    wait_phase(cluster, name, "Running")


def test_a_quota_the_pods_exceed_keeps_the_job_waiting_until_it_is_raised(cluster, operator):
    set_quota(cluster, 1)
    apply_job(cluster, "quota", resources=REQUESTS)
    wait_until(lambda: "exceeded quota" in message_of(cluster, "quota"), 30, "the quota refusal in status")
    job = get_job(cluster, "quota")
    assert job["status"]["phase"] == "Pending"
    assert job["status"]["message"].startswith("Waiting (retrying): cannot create Pods: quota-1: ")
    assert list(pods_of(cluster, "quota")) == ["quota-0"]
    assert "FailedCreatePod" in events_of(cluster, "quota")

    run_other_job(cluster, "other-q")
    assert get_job(cluster, "quota")["status"]["phase"] == "Pending"

    set_quota(cluster, 4)
    wait_pods(cluster, "quota", 2, attempt=0)
    wait_until(lambda: "exceeded quota" not in message_of(cluster, "quota"), 30, "the refusal to clear")


def test_a_pod_the_apiserver_finds_invalid_fails_the_job_and_leaves_no_pods(cluster, operator):
    # A default cpu limit below what the job requests: the Pod the operator sends is valid,
    # the Pod the apiserver validates (after LimitRanger) is not.
    limits = {"type": "Container", "default": {"cpu": "50m"}, "defaultRequest": {"cpu": "50m"}}
    cluster["core"].create_namespaced_limit_range(
        NS, {"metadata": {"name": "cpu"}, "spec": {"limits": [limits]}}
    )
    try:
        apply_job(cluster, "invalid", resources={"requests": {"cpu": "1"}})
        job = wait_phase(cluster, "invalid", "Failed")
        condition = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
        assert condition["reason"] == "InvalidSpec"
        message = job["status"]["message"]
        assert "invalid-0: the apiserver refused it: spec.containers[0].resources.requests" in message, (
            message
        )
        assert "InvalidSpec" in events_of(cluster, "invalid")
        wait_until(lambda: not pods_of(cluster, "invalid"), 30, "no Pods of the failed job")

        run_other_job(cluster, "other-i")  # valid under the same LimitRange
        assert get_job(cluster, "invalid")["status"]["phase"] == "Failed"
        assert not pods_of(cluster, "invalid")
    finally:
        cluster["core"].delete_namespaced_limit_range("cpu", NS)
