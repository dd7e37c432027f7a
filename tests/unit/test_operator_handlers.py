"""The kopf glue, driven with a fake API module: what one reconcile tick does end to end."""

from __future__ import annotations

import json
import logging

import kopf
import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.metrics import REGISTRY
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


def tick(b, kube, pods=()):
    patch = kopf.Patch()
    memo = kopf.Memo(config=OperatorConfig(default_tracking_uri="http://m:5000"), kube=kube)
    index = {("ns", "ddp"): list(pods)}
    handlers.reconcile_job(b, b["spec"], b["status"], "ns", "ddp", patch, memo, index, LOG)
    return patch


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


def test_check_spec_raises_permanent_error():
    with pytest.raises(kopf.PermanentError, match="spec.backend"):
        handlers.check_spec(name="ddp", spec={"image": "x", "backend": "mpi"}, logger=LOG)
    handlers.check_spec(name="ddp", spec={"image": "x"}, logger=LOG)


def test_trainer_pods_index():
    pod_body = {
        "metadata": {
            "name": "ddp-1",
            "uid": "p1",
            "labels": {"dmlt.io/job-name": "ddp", "dmlt.io/rank": "1", "dmlt.io/attempt": "0"},
        },
        "status": {"phase": "Pending"},
    }
    out = handlers.trainer_pods(namespace="ns", labels=pod_body["metadata"]["labels"], body=pod_body)
    ((key, summary),) = out.items()
    assert key == ("ns", "ddp") and summary.rank == 1
    pod_body["metadata"]["labels"]["dmlt.io/rank"] = "oops"
    assert handlers.trainer_pods(namespace="ns", labels=pod_body["metadata"]["labels"], body=pod_body) == {}


class RefusingKube(FakeJobKube):
    def create_pod(self, pod):
        exc = ApiException(status=403, reason="Forbidden")
        exc.body = json.dumps({"message": 'pods "ddp-0" is forbidden: exceeded quota'})
        raise exc


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


def test_pod_snapshot_retries_when_the_index_changes_under_it():
    class Flaky:
        calls = 0

        def get(self, key, default):
            Flaky.calls += 1
            if Flaky.calls < 3:
                raise RuntimeError("dictionary changed size during iteration")
            return [running_pod(0)]

    assert [p.name for p in handlers.pods_of(Flaky(), "ns", "ddp")] == ["ddp-0"]
