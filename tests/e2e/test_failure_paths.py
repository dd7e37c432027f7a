"""Failure paths on a real cluster, with the chart's operator: what the apiserver refuses after
admission, as the user sees it on the job.

- **Transient** (a ResourceQuota, counted by the real quota controller, that the job's Pods
  exceed): the job waits in Pending with the quota's refusal in `status.message` and a
  FailedCreatePod Event, while another job of the namespace runs; once the quota is raised
  the waiting job gets its second Pod and runs.
- **Permanent** (a LimitRange whose default limit makes the Pod invalid: a 422 the CRD cannot
  foresee): the job fails with reason InvalidSpec and a message naming the field, no Pod of it
  is left, and another job of the namespace still runs.

The integration tier (tests/integration/test_failure_paths_apiserver.py) proves the same
against a bare apiserver where the test plays kubelet and quota controller; this module has
the real ones. The chart is installed without PostgreSQL and optuna-dashboard (no study here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helpers.chart import Dmlt, installed_chart
from tests.helpers.jobs import SMALL_TRAINER, diagnose, job_events, job_manifest
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

RELEASE = "dmlt-failures"
BURSTABLE = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1536Mi"}}
WAIT_S = 300.0


@pytest.fixture(scope="module")
def dmlt(api_client: client.ApiClient, namespace: str) -> Iterator[Dmlt]:
    values = {"postgresql": {"enabled": False}, "dashboard": {"enabled": False}}
    with installed_chart(api_client, namespace, release=RELEASE, values=values) as installed:
        yield installed


def _job(name: str, resources: dict[str, Any]) -> dict[str, Any]:
    return job_manifest(name, trainer=SMALL_TRAINER, checkpoint={"emptyDir": {}}, resources=resources)


def _status(dmlt: Dmlt, name: str) -> dict[str, Any]:
    return (dmlt.get_job(name) or {}).get("status") or {}


def _pod_names(dmlt: Dmlt, name: str) -> list[str]:
    return sorted(p.metadata.name for p in dmlt.pods(name) if not p.metadata.deletion_timestamp)


def _runs(dmlt: Dmlt, name: str) -> None:
    """Another job of the namespace reaches Running (or is already done) while the first waits."""
    dmlt.create_job(_job(name, {}))
    wait_for(
        lambda: _status(dmlt, name).get("phase") in ("Running", "Succeeded"),
        WAIT_S,
        f"job {name} to run beside the refused one",
        diag=lambda: diagnose(dmlt, name),
    )


def _set_pod_quota(dmlt: Dmlt, pods: int) -> None:
    """A quota of `pods` Pods that are not BestEffort; returns once its controller counted them."""
    hard = {"pods": str(pods)}
    body = {"metadata": {"name": "pods"}, "spec": {"hard": hard, "scopes": ["NotBestEffort"]}}
    try:
        dmlt.core.create_namespaced_resource_quota(dmlt.namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        dmlt.core.patch_namespaced_resource_quota("pods", dmlt.namespace, {"spec": {"hard": hard}})

    def counted() -> bool:
        status = dmlt.core.read_namespaced_resource_quota("pods", dmlt.namespace).status
        return bool(status and (status.hard or {}).get("pods") == str(pods) and status.used is not None)

    wait_for(counted, 60, f"the quota controller to count Pods against a quota of {pods}")


def _quota_counted_pods(dmlt: Dmlt) -> int:
    """Pods already running in the namespace that a NotBestEffort quota counts (the chart's own)."""
    pods = dmlt.core.list_namespaced_pod(dmlt.namespace).items
    return sum(
        1
        for p in pods
        if p.status.phase not in ("Succeeded", "Failed") and p.status.qos_class != "BestEffort"
    )


@pytest.mark.timeout(900)
def test_a_quota_the_pods_exceed_keeps_the_job_pending_until_it_is_raised(dmlt: Dmlt) -> None:
    room = _quota_counted_pods(dmlt) + 1  # room for one rank of the job, not two
    _set_pod_quota(dmlt, room)
    try:
        dmlt.create_job(_job("quota", BURSTABLE))
        wait_for(
            lambda: "exceeded quota" in (_status(dmlt, "quota").get("message") or ""),
            WAIT_S,
            "the quota's refusal in the job's status",
            diag=lambda: diagnose(dmlt, "quota"),
        )
        status = _status(dmlt, "quota")
        assert status["phase"] == "Pending", status
        assert status["message"].startswith("Waiting (retrying): cannot create Pods: quota-1: "), status
        assert _pod_names(dmlt, "quota") == ["quota-0"]
        assert "FailedCreatePod" in {e.reason for e in job_events(dmlt, "quota")}

        _runs(dmlt, "other-quota")
        assert _status(dmlt, "quota")["phase"] == "Pending"

        _set_pod_quota(dmlt, room + 2)
        wait_for(
            lambda: _pod_names(dmlt, "quota") == ["quota-0", "quota-1"],
            WAIT_S,
            "the job's second Pod once the quota was raised",
            diag=lambda: diagnose(dmlt, "quota"),
        )
        wait_for(
            lambda: "exceeded quota" not in (_status(dmlt, "quota").get("message") or ""),
            WAIT_S,
            "the quota's refusal to clear from the job's status",
            diag=lambda: diagnose(dmlt, "quota"),
        )
    finally:
        for name in ("quota", "other-quota"):
            dmlt.delete_job(name)
        dmlt.core.delete_namespaced_resource_quota("pods", dmlt.namespace)


@pytest.mark.timeout(900)
def test_a_pod_the_apiserver_finds_invalid_fails_the_job_and_leaves_no_pods(dmlt: Dmlt) -> None:
    # A default cpu limit below what the job requests: the Pod the operator sends is valid, the
    # Pod the apiserver validates (after the LimitRanger admission plugin) is not.
    limits = {"type": "Container", "default": {"cpu": "50m"}, "defaultRequest": {"cpu": "50m"}}
    dmlt.core.create_namespaced_limit_range(
        dmlt.namespace, {"metadata": {"name": "cpu"}, "spec": {"limits": [limits]}}
    )
    try:
        dmlt.create_job(_job("invalid", {"requests": {"cpu": "1"}}))
        wait_for(
            lambda: _status(dmlt, "invalid").get("phase") == "Failed",
            WAIT_S,
            "the job with an invalid Pod to fail",
            diag=lambda: diagnose(dmlt, "invalid"),
        )
        status = _status(dmlt, "invalid")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec", failed
        expected = "invalid-0: the apiserver refused it: spec.containers[0].resources.requests"
        assert expected in status["message"], status["message"]
        assert "InvalidSpec" in {e.reason for e in job_events(dmlt, "invalid")}
        wait_for(lambda: not _pod_names(dmlt, "invalid"), 60, "no Pods of the failed job")

        _runs(dmlt, "other-invalid")  # BestEffort: the LimitRange's defaults make it valid
        assert _status(dmlt, "invalid")["phase"] == "Failed"
        assert not _pod_names(dmlt, "invalid")
    finally:
        for name in ("invalid", "other-invalid"):
            dmlt.delete_job(name)
        dmlt.core.delete_namespaced_limit_range("cpu", dmlt.namespace)
