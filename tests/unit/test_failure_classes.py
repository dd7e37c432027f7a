"""Which refusals are permanent (the object fails with InvalidSpec) and which transient (it
waits, retried), and what each does to a TrainingJob and a TuningStudy."""

from __future__ import annotations

import json

import pytest
import urllib3.exceptions
from dmlt_operator.core.failures import classify, classify_creation
from kubernetes.client.exceptions import ApiException

from tests.helpers.operator_fakes import FakeJobKube
from tests.helpers.study_harness import Harness
from tests.unit.test_operator_handlers import body, running_pod, tick

pytestmark = pytest.mark.unit

INVALID_POD = {
    "kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
    "message": 'Pod "ddp-1" is invalid: spec.containers[0].resources.limits[memory]: Invalid value',
    "details": {"name": "ddp-1", "kind": "Pod", "causes": [{
        "reason": "FieldValueInvalid", "field": "spec.containers[0].resources.limits[memory]",
        "message": "Invalid value: \"64Gi\": must be less than or equal to memory limit of 1Gi",
    }]},
}  # fmt: skip
QUOTA = {
    "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
    "message": 'pods "ddp-0" is forbidden: exceeded quota: q, requested: pods=1, limited: pods=1',
}  # fmt: skip


def api_error(status: int, body: dict | None = None, reason: str = "") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps(body) if body is not None else None
    return exc


@pytest.mark.parametrize(
    ("exc", "permanent", "reason"),
    [
        (api_error(422, INVALID_POD, "Unprocessable Entity"), True, "InvalidSpec"),
        (api_error(400, {"message": "cannot decode"}, "Bad Request"), True, "InvalidSpec"),
        (api_error(403, QUOTA, "Forbidden"), False, "ExceededQuota"),
        (api_error(403, {"message": "cannot create pods"}, "Forbidden"), False, "Forbidden"),
        (api_error(409, {"message": "conflict"}, "Conflict"), False, "Conflict"),
        (api_error(429, None, "Too Many Requests"), False, "TooManyRequests"),
        (api_error(500, None, "Internal Server Error"), False, "ServerError"),
        (api_error(503, {"message": "etcd down"}, "Service Unavailable"), False, "ServerError"),
        (TimeoutError("timed out"), False, "Timeout"),
        (urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"), False, "Timeout"),
        (urllib3.exceptions.MaxRetryError(None, "/api"), False, "Timeout"),
        (RuntimeError("something else"), False, "ReconcileError"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_classification(exc, permanent, reason):
    failure = classify(exc)
    assert (failure.permanent, failure.reason) == (permanent, reason)


def test_an_invalid_refusal_names_the_field():
    failure = classify(api_error(422, INVALID_POD))
    assert "spec.containers[0].resources.limits[memory]: Invalid value" in failure.message


def test_the_clients_own_validation_is_permanent_when_creating():
    failure = classify_creation(ValueError("Invalid value for `name`, must not be `None`"))
    assert failure.permanent and failure.reason == "InvalidSpec"
    assert "must not be `None`" in failure.message
    assert not classify(ValueError("x")).permanent  # elsewhere: a bug, retried and reported


class RefusingKube(FakeJobKube):
    """Creates ranks until `refuse` says otherwise for one of them."""

    def __init__(self, refuse, **kwargs):
        super().__init__(**kwargs)
        self.refuse = refuse

    def create_pod(self, pod):
        exc = self.refuse(pod["metadata"]["name"])
        if exc is not None:
            raise exc
        return super().create_pod(pod)


def test_a_pod_refused_as_invalid_fails_the_job_and_leaves_no_pods():
    kube = RefusingKube(lambda name: api_error(422, INVALID_POD) if name == "ddp-1" else None)
    patch = tick(body(), kube)
    status = patch["status"]
    assert status["phase"] == "Failed"
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert "ddp-1: the apiserver refused it: spec.containers[0].resources.limits[memory]" in status["message"]
    assert kube.deleted == [("ddp-0", None)]  # rank 0, created this tick, is removed again
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in kube.events]


def test_a_pod_the_client_refuses_fails_the_job():
    kube = RefusingKube(lambda name: TypeError("valueFrom.secretKeyRef: unexpected keyword 'nme'"))
    status = tick(body(), kube)["status"]
    assert status["phase"] == "Failed" and "the Kubernetes client refused it" in status["message"]
    assert "valueFrom.secretKeyRef" in status["message"]


def test_an_invalid_service_fails_the_job_before_any_pod():
    class InvalidService(FakeJobKube):
        def create_service(self, service):
            raise api_error(422, {"message": 'Service "ddp" is invalid', "details": {"causes": [
                {"field": "spec.ports[0].name", "message": "Invalid value"}]}})  # fmt: skip

    kube = InvalidService()
    status = tick(body(), kube)["status"]
    assert status["phase"] == "Failed" and "spec.ports[0].name: Invalid value" in status["message"]
    assert kube.created == []


def test_the_pods_a_failed_job_already_had_are_removed():
    kube = RefusingKube(lambda name: api_error(403, QUOTA) if name == "ddp-1" else None)
    status = dict(tick(body(), kube)["status"])  # rank 0 made, rank 1 waits for quota
    assert status["phase"] == "Pending" and "exceeded quota" in status["message"]
    kube.refuse = lambda name: api_error(422, INVALID_POD)  # then it is refused for good
    patch = tick(body(status), kube, [running_pod(0, "Pending")])
    assert patch["status"]["phase"] == "Failed"
    assert kube.deleted == [("ddp-0", "p0")]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_error(403, QUOTA, "Forbidden"), "exceeded quota: q"),
        (
            api_error(403, {"message": 'pods is forbidden: User "op" cannot create'}, "Forbidden"),
            "cannot create",
        ),
        (api_error(429, None, "Too Many Requests"), "429 Too Many Requests"),
    ],
)
def test_transient_refusals_keep_the_job_pending_with_the_reason(exc, expected):
    kube = RefusingKube(lambda name: exc)
    status = tick(body(), kube)["status"]
    assert status["phase"] == "Pending"
    assert status["message"].startswith("Waiting (retrying): cannot create Pods: ddp-0: ")
    assert expected in status["message"]
    kube.refuse = lambda name: None  # the quota is raised: the next tick creates the Pods
    status = {**status, **tick(body(status), kube)["status"]}
    assert [p["metadata"]["name"] for p in kube.created if p["kind"] == "Pod"] == ["ddp-0", "ddp-1"]


@pytest.mark.parametrize("exc", [api_error(503, None, "Service Unavailable"), TimeoutError("timed out")])
def test_server_errors_and_timeouts_raise_for_kopf_to_retry_with_backoff(exc):
    with pytest.raises(type(exc)):
        tick(body(), RefusingKube(lambda name: exc))


# ---- TuningStudy


def test_a_trial_job_refused_as_invalid_fails_the_study(tmp_path):
    hs = Harness(tmp_path)
    hs.kube.refuse = api_error(422, {"message": "TrainingJob is invalid", "details": {"causes": [
        {"field": "spec.resources.limits.memory", "message": "Invalid value: \"3gi\""}]}})  # fmt: skip
    status = hs.tick()
    assert status["phase"] == "Failed"
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.resources.limits.memory: Invalid value" in status["message"]
    assert hs.db_states() == {"RUNNING": 1}  # no more trials asked after the refusal


def test_a_trial_template_error_shows_before_a_missing_storage(tmp_path):
    hs = Harness(tmp_path, trialTemplate={"image": "img", "extraArgs": ["--lr=1"]})
    hs.kube.secrets.clear()  # no storage either
    status = hs.tick()
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "InvalidSpec"
    assert "extraArgs" in status["message"]
