"""TrainingJob spec parsing: defaults, bounds and error messages that name the field."""

from __future__ import annotations

import pytest
from dmlt_operator.trainingjob.spec import SpecError, check_job_name, parse_spec

pytestmark = pytest.mark.unit


def test_minimal_spec_gets_defaults():
    spec = parse_spec({"image": "dmlt-trainer:dev"})
    assert spec.replicas == 1
    assert spec.procs_per_node == 1
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.backend == "auto"
    assert spec.effective_backend == "gloo"
    assert spec.trainer.hidden_dims == [512, 256, 128]
    assert spec.run_policy.backoff_limit == 3
    assert spec.run_policy.clean_pod_policy == "Running"
    assert spec.run_policy.suspend is False
    assert spec.rendezvous.timeout_seconds == 900
    assert spec.checkpoint.persistent_volume_claim is None


def test_camel_case_fields_are_read():
    spec = parse_spec(
        {
            "image": "x",
            "replicas": 2,
            "procsPerNode": 2,
            "trainer": {"batchSize": 64, "hiddenDims": [8, 4], "weightDecay": 0.0, "nSamples": 500},
            "runPolicy": {"backoffLimit": 0, "activeDeadlineSeconds": 60, "cleanPodPolicy": "All"},
            "checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}},
        }
    )
    assert spec.world_size == 4
    assert spec.trainer.batch_size == 64
    assert spec.trainer.n_samples == 500
    assert spec.run_policy.active_deadline_seconds == 60
    assert spec.checkpoint.persistent_volume_claim.claim_name == "ckpt"


def test_auto_backend_picks_nccl_for_gpus():
    spec = parse_spec({"image": "x", "resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert spec.effective_backend == "nccl"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"backend": "mpi"}, "spec.backend"),
        ({"trainer": {"hiddenDims": []}}, "spec.trainer.hiddenDims"),
        ({"trainer": {"hiddenDims": [64, 0]}}, "spec.trainer.hiddenDims[1]"),
        ({"trainer": {"epochs": 0}}, "spec.trainer.epochs"),
        ({"trainer": {"dropout": 1.0}}, "spec.trainer.dropout"),
        ({"trainer": {"lr": 0}}, "spec.trainer.lr"),
        ({"trainer": {"bogus": 1}}, "spec.trainer.bogus"),
        ({"runPolicy": {"cleanPodPolicy": "Some"}}, "spec.runPolicy.cleanPodPolicy"),
        ({"runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "duplicate env"),
        (
            {"checkpoint": {"persistentVolumeClaim": {"claimName": "c"}, "emptyDir": {}}},
            "only one of",
        ),
        ({"backend": "nccl"}, "nvidia.com/gpu"),
    ],
)
def test_invalid_specs_name_the_field(raw, fragment):
    with pytest.raises(SpecError) as err:
        parse_spec({"image": "x", **raw})
    assert fragment in str(err.value)


def test_missing_image_is_reported():
    with pytest.raises(SpecError, match="spec.image"):
        parse_spec({})


def test_all_problems_reported_at_once():
    with pytest.raises(SpecError) as err:
        parse_spec({"image": "x", "replicas": 0, "backend": "mpi"})
    assert "spec.replicas" in str(err.value) and "spec.backend" in str(err.value)


@pytest.mark.parametrize("name", ["a", "ddp-example", "j" * 50])
def test_good_job_names(name):
    check_job_name(name)


@pytest.mark.parametrize("name", ["1job", "Job", "job-", "j" * 51, "a.b"])
def test_bad_job_names(name):
    with pytest.raises(SpecError, match="metadata.name"):
        check_job_name(name)
