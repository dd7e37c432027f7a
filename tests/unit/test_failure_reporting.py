"""No silent failures: an exception in any step of either reconciler is reported on the object
(status.message, a Warning Event, dmlt_reconcile_failures_total), and becomes a retry (the work
queue's backoff, for jobs and studies alike)."""

from __future__ import annotations

import logging

import kopf
import pytest
from dmlt_operator.core import metrics
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.trainingjob import build as job_build
from dmlt_operator.trainingjob import handlers as job_handlers
from dmlt_operator.trainingjob import plan as job_plan
from dmlt_operator.tuningstudy import build as study_build
from dmlt_operator.tuningstudy import handlers as study_handlers
from dmlt_operator.tuningstudy import plan as study_plan

from tests.helpers.operator_fakes import FakeJobKube
from tests.helpers.study_harness import Harness
from tests.unit.test_operator_handlers import body, running_pod

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test")


class Injected(Exception):
    """An arbitrary failure nothing in the operator expects."""


def step_id(case: tuple) -> str:
    (owner, attribute), step, scenario = case
    return f"{getattr(owner, '__name__', owner).rsplit('.', 1)[-1]}.{attribute}-{scenario}"


def boom(*_args, **_kwargs):
    raise Injected("injected failure")


def failures(kind: str, step: str) -> float:
    labels = {"kind": kind, "step": step, "reason": "ReconcileError"}
    return metrics.REGISTRY.get_sample_value("dmlt_reconcile_failures_total", labels) or 0.0


def assert_reported(kind: str, step: str, patch, events, before: float) -> None:
    message = patch["status"]["message"]
    assert message.startswith(f"Waiting (retrying): {step} failed: Injected: injected failure"), message
    assert [(t, r) for t, r, m in events if m == message] == [("Warning", "ReconcileError")]
    assert failures(kind, step) == before + 1


# ---- TrainingJob


def job_status(kube: FakeJobKube, scenario: str) -> tuple[dict, list, dict]:
    """(status, pods, extra spec) of a job at the point a scenario reaches its step."""
    if scenario == "fresh":
        return {}, [], {}
    if scenario == "finished":
        done = {"phase": "Succeeded", "attempt": 0, "completionTime": "2020-01-01T00:00:00Z"}
        return done, [], {"runPolicy": {"ttlSecondsAfterFinished": 0}}
    first = job_tick(body(), kube)
    status = dict(first["status"])
    return status, [running_pod(0), running_pod(1, "Failed")], {}


def job_tick(b, kube, pods=()) -> dict:
    status: dict = {}
    memo = kopf.Memo(config=OperatorConfig(default_tracking_uri="http://m:5000"), kube=kube)
    job_handlers.reconcile_job(b, list(pods), status, memo, LOG)
    return {"status": status}


def job_sync(b, kube, pods=()) -> tuple[job_handlers.Outcome, dict]:
    """One worker run (sync_job): its outcome, and the status it wrote ({} when none)."""
    memo = kopf.Memo(config=OperatorConfig(default_tracking_uri="http://m:5000"), kube=kube)
    outcome = job_handlers.sync_job(b, list(pods), memo, LOG)
    written = {k: v for _, status, _ in kube.status_patches for k, v in status.items()}
    return outcome, ({"status": written} if written else {})


JOB_STEPS = [
    # (what fails, the step it is reported as, the scenario that reaches it)
    ((job_handlers, "parse_spec"), "check spec", "fresh"),
    ((job_plan, "logs_to_read"), "read pod logs", "fresh"),
    ((job_plan, "plan"), "plan", "fresh"),
    ((job_build, "build_service"), "create service", "fresh"),
    (("kube", "create_service"), "create service", "fresh"),
    (("kube", "delete_pod"), "delete pods", "failed rank"),
    ((job_build, "build_rank_pod"), "create pods", "fresh"),
    (("kube", "create_pod"), "create pods", "fresh"),
    ((job_plan, "status_delta"), "post events", "fresh"),
    (("kube", "delete_trainingjob"), "delete job", "finished"),
]


@pytest.mark.parametrize(("target", "step", "scenario"), JOB_STEPS, ids=[step_id(c) for c in JOB_STEPS])
def test_any_failure_of_a_trainingjob_reconcile_is_reported(monkeypatch, target, step, scenario):
    kube = FakeJobKube()
    status, pods, spec = job_status(kube, scenario)
    owner, attribute = target
    monkeypatch.setattr(kube if owner == "kube" else owner, attribute, boom)
    b = body(status, **spec)
    before = failures("TrainingJob", step)
    kube.status_patches.clear()
    outcome, patch = job_sync(b, kube, pods)
    assert "injected failure" in outcome.error
    assert_reported("TrainingJob", step, patch, kube.events, before)


def test_the_same_failure_again_posts_no_second_event(monkeypatch):
    kube = FakeJobKube()
    monkeypatch.setattr(job_plan, "plan", boom)
    status: dict = {}
    for _ in range(2):
        kube.status_patches.clear()
        outcome, patch = job_sync(body(status), kube)
        assert outcome.error is not None
        status = {**status, **patch.get("status", {})}
    assert [r for _, r, _ in kube.events] == ["ReconcileError"]
    assert kube.status_patches == []  # the same message again: nothing to write


# ---- TuningStudy


def study_scenario(hs: Harness, scenario: str) -> None:
    if scenario == "trials done":
        hs.tick()
        hs.run_trainers()


STUDY_STEPS = [
    ((study_handlers, "parse_study_spec"), "check spec", "fresh"),
    ((study_build, "check_trial_job"), "check spec", "fresh"),
    (("kube", "read_secret_value"), "open storage", "fresh"),
    (("store", "open_study"), "open storage", "fresh"),
    (("mlflow", "ensure_parent_run"), "connect to MLflow", "fresh"),
    (("store", "set_user_attr"), "connect to MLflow", "fresh"),
    (("store", "list_trials"), "list trials", "fresh"),
    ((study_plan, "plan"), "plan", "fresh"),
    (("store", "asker"), "act on the plan", "fresh"),
    ((study_build, "build_trial_job"), "check spec", "fresh"),  # the template is checked first
    (("kube", "create_trainingjob"), "act on the plan", "fresh"),
    (("store", "tell"), "act on the plan", "trials done"),
    (("mlflow", "finish_run"), "finalize", "trials done"),
    (("mlflow", "register_model"), "finalize", "trials done"),
    ((study_plan, "status_delta"), "post events", "fresh"),
]


@pytest.mark.parametrize(("target", "step", "scenario"), STUDY_STEPS, ids=[step_id(c) for c in STUDY_STEPS])
def test_any_failure_of_a_tuningstudy_reconcile_is_reported(tmp_path, monkeypatch, target, step, scenario):
    hs = Harness(tmp_path, maxTrials=2)
    study_scenario(hs, scenario)
    owner, attribute = target
    owners = {"kube": hs.kube, "store": hs.store, "mlflow": hs.mlflow}
    monkeypatch.setattr(owners.get(owner, owner), attribute, boom)
    before = failures("TuningStudy", step)
    hs.body["metadata"]["resourceVersion"] = "7"
    outcome = study_handlers.sync_study(hs.body, hs.trial_jobs(), hs.memo(), LOG)
    assert outcome.error is not None and "injected failure" in outcome.error
    (name, written, version), *_ = hs.kube.status_patches
    assert (name, version) == ("study", "7")  # written onto the version it was planned from
    assert_reported("TuningStudy", step, {"status": written}, hs.kube.events, before)
