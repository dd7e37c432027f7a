"""The unit tests' fakes stand in for the real I/O classes: both implement the same Protocols."""

from __future__ import annotations

import pytest
from dmlt_operator.core.kube import Kube, TrainingJobKube, TuningStudyKube
from dmlt_operator.tuningstudy.mlflow_rest import MlflowRest, MlflowTracking

from tests.helpers.operator_fakes import FakeJobKube, FakeMlflow, FakeStudyKube
from tests.helpers.protocols import assert_implements, protocol_members

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("protocol", "real", "fake"),
    [
        (TrainingJobKube, Kube, FakeJobKube),
        (TuningStudyKube, Kube, FakeStudyKube),
        (MlflowTracking, MlflowRest, FakeMlflow),
    ],
)
def test_the_fake_and_the_real_class_implement_the_protocol(protocol, real, fake):
    assert_implements(real, protocol)
    assert_implements(fake, protocol)


def test_the_protocols_cover_what_the_handlers_call():
    assert protocol_members(TrainingJobKube) == [
        "create_pod", "create_service", "create_workload", "delete_pod", "delete_trainingjob",
        "delete_workload", "patch_status", "patch_workload", "post_event", "read_cluster_object",
        "read_namespace_labels", "read_pending_workloads", "read_pod_log",
    ]  # fmt: skip
    assert protocol_members(TuningStudyKube) == [
        "create_trainingjob", "delete_trainingjob", "list_trainingjobs", "patch_study_status", "post_event",
        "read_secret_value",
    ]  # fmt: skip
    assert protocol_members(MlflowTracking) == ["ensure_parent_run", "finish_run", "register_model"]


def test_a_mismatch_is_caught():
    class Incomplete:
        def ensure_parent_run(self, experiment, run_name, study, study_uid, params=None): ...

        def finish_run(self, run_id, status): ...  # metrics and tags missing

    with pytest.raises(AssertionError, match="finish_run"):
        assert_implements(Incomplete, MlflowTracking)
