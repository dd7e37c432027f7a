"""Pure builders: one trial's TrainingJob from the study's template and the sampled values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dmlt_contract import STORAGE_ENV
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.trainingjob import build as resources
from dmlt_operator.trainingjob.spec import parse_spec
from dmlt_operator.tuningstudy.build import (
    ANNOTATION_PARAMS,
    LABEL_STUDY,
    LABEL_TRIAL,
    StudyRef,
    build_trial_job,
    check_trial_job,
    experiment_name,
    study_selector,
    tracking_uri,
    trial_job_name,
)
from dmlt_operator.tuningstudy.spec import SecretKeyRef, StudySpecError, parse_study_spec

pytestmark = pytest.mark.unit

REF = StudyRef("tuning-example", "ns", "study-uid", 3)
SECRET = SecretKeyRef(name="dmlt-postgresql", key="url")
PARAMETERS = [
    {"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "log": True},
    {"name": "hiddenDims", "type": "categorical", "choices": ["64-32", "128-64"]},
    {"name": "batchSize", "type": "categorical", "choices": [256, 512]},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},
]


def spec(**overrides: Any):
    template = {
        "image": "dmlt-trainer:dev",
        "replicas": 1,
        "trainer": {"dataset": "synthetic", "epochs": 5, "lr": 0.5, "extraArgs": ["--threads", "1"]},
        "env": [{"name": "FOO", "value": "bar"}, {"name": STORAGE_ENV, "value": "sqlite:///leak.db"}],
        "mlflow": {"experiment": "from-template"},
        "checkpoint": {"emptyDir": {}},
    }
    raw = {"parameters": PARAMETERS, "trialTemplate": template, "parallelism": 2, "maxTrials": 8,
           "pruner": {"name": "median", "startupTrials": 2, "warmupSteps": 1}}  # fmt: skip
    raw.update(overrides)
    return parse_study_spec(raw)


PARAMS = {"lr": 0.0123, "hiddenDims": "128-64", "batchSize": 512, "dropout": 0.25}


def test_names_labels_and_owner():
    job = build_trial_job(REF, spec(), 7, PARAMS, SECRET, "parent123")
    meta = job["metadata"]
    assert job["apiVersion"] == "dmlt.io/v1alpha1" and job["kind"] == "TrainingJob"
    assert meta["name"] == trial_job_name("tuning-example", 7) == "tuning-example-t7"
    assert meta["namespace"] == "ns"
    assert meta["labels"][LABEL_STUDY] == "tuning-example" and meta["labels"][LABEL_TRIAL] == "7"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "dmlt-operator"
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "dmlt.io/v1alpha1", "kind": "TuningStudy", "name": "tuning-example",
        "uid": "study-uid", "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip
    assert json.loads(meta["annotations"][ANNOTATION_PARAMS]) == PARAMS
    assert (
        study_selector("tuning-example")
        == "app.kubernetes.io/managed-by=dmlt-operator,dmlt.io/study=tuning-example"
    )


def test_sampled_values_replace_the_templates_trainer_settings():
    job = build_trial_job(REF, spec(), 7, PARAMS, SECRET, "parent123")
    trainer = job["spec"]["trainer"]
    assert trainer["lr"] == 0.0123 and trainer["dropout"] == 0.25
    assert trainer["hiddenDims"] == [128, 64] and trainer["batchSize"] == 512
    assert trainer["epochs"] == 5 and trainer["dataset"] == "synthetic"
    parsed = parse_spec(job["spec"])  # the trial job is a valid TrainingJob
    assert parsed.trainer.hidden_dims == [128, 64]


def test_trial_flags_follow_the_users_extra_args():
    job = build_trial_job(REF, spec(), 7, PARAMS, SECRET, "parent123")
    args = job["spec"]["trainer"]["extraArgs"]
    assert args[:2] == ["--threads", "1"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags == {
        "--study-name": "ns.tuning-example",
        "--trial-number": "7",
        "--objective": "val_auc",
        "--direction": "maximize",
        "--pruner": "median",
        "--pruner-startup-trials": "2",
        "--pruner-warmup-steps": "1",
        "--pruner-percentile": "25.0",
        "--pruner-min-resource": "1",
        "--pruner-reduction-factor": "3",
        "--parent-run-id": "parent123",
    }
    assert not any("sqlite" in a or "postgresql" in a for a in args)  # the URL never in args
    without_parent = build_trial_job(REF, spec(), 7, PARAMS, SECRET, None)
    assert "--parent-run-id" not in without_parent["spec"]["trainer"]["extraArgs"]


def test_the_rendered_pod_runs_the_trial():
    """End to end through the TrainingJob builders: the flags reach dmlt-train's command line."""
    job = build_trial_job(REF, spec(), 7, PARAMS, SECRET, "parent123")
    job_spec = parse_spec(job["spec"])
    pod = resources.build_rank_pod(
        resources.JobRef("tuning-example-t7", "ns", "job-uid"), job_spec, 0, 0, OperatorConfig()
    )
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--lr") + 1] == "0.0123"
    assert command[command.index("--hidden-dims") + 1] == "128,64"
    assert command[command.index("--trial-number") + 1] == "7"
    assert command[command.index("--run-name") + 1] == "tuning-example-t7"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env[STORAGE_ENV] == {
        "name": STORAGE_ENV,
        "valueFrom": {"secretKeyRef": {"name": "dmlt-postgresql", "key": "url"}},
    }


def test_storage_env_replaces_a_template_value_and_keeps_the_rest():
    job = build_trial_job(REF, spec(), 0, PARAMS, SECRET, None)
    env = job["spec"]["env"]
    assert [e["name"] for e in env] == ["FOO", STORAGE_ENV]
    assert env[-1]["valueFrom"]["secretKeyRef"] == {"name": "dmlt-postgresql", "key": "url"}


def test_mlflow_experiment_and_uri():
    s = spec()
    job = build_trial_job(REF, s, 0, PARAMS, SECRET, None)
    assert job["spec"]["mlflow"] == {"experiment": "from-template"}
    assert tracking_uri(s, "http://default:5000") == "http://default:5000"
    assert experiment_name(s) == "from-template"
    own = spec(mlflow={"trackingUri": "http://own:5000", "experiment": "study-exp"})
    job = build_trial_job(REF, own, 0, PARAMS, SECRET, None)
    assert job["spec"]["mlflow"] == {"trackingUri": "http://own:5000", "experiment": "study-exp"}
    assert tracking_uri(own, "http://default:5000") == "http://own:5000"


def test_the_template_itself_is_not_changed():
    s = spec()
    before = json.dumps(s.trial_template, sort_keys=True)
    build_trial_job(REF, s, 1, PARAMS, SECRET, "p")
    assert json.dumps(s.trial_template, sort_keys=True) == before


def test_bad_params_and_too_many_args_are_spec_errors():
    with pytest.raises(StudySpecError, match="momentum"):
        build_trial_job(REF, spec(), 0, {"momentum": 0.9}, SECRET, None)
    with pytest.raises(StudySpecError, match="hiddenDims"):
        build_trial_job(REF, spec(), 0, {**PARAMS, "hiddenDims": "x"}, SECRET, None)
    crowded = spec()
    template = {**crowded.trial_template, "trainer": {"extraArgs": ["--x"] * 60}}
    crowded = spec(trialTemplate=template)
    with pytest.raises(StudySpecError, match="extraArgs"):
        check_trial_job(REF, crowded, SECRET)


def test_longest_names_still_make_valid_jobs():
    ref = StudyRef("s" * 40, "ns", "uid")
    check_trial_job(ref, spec(), SECRET)  # trial 20000 of a 40-character study name


def test_the_trainer_parses_the_trial_flags():
    """The contract with dmlt-train: every flag a trial job passes is one the trainer reads."""
    from dmlt_trainer.cli import parse_config

    job = build_trial_job(REF, spec(), 7, PARAMS, SECRET, "parent123")
    pod = resources.build_rank_pod(
        resources.JobRef("tuning-example-t7", "ns", "job-uid"),
        parse_spec(job["spec"]),
        0,
        0,
        OperatorConfig(),
    )
    command = pod["spec"]["containers"][0]["command"]
    cfg = parse_config(["--mode", "single", *command[command.index("dmlt_trainer.cli") + 1 :]])
    hpo = cfg.hpo
    assert (hpo.study_name, hpo.trial_number) == ("ns.tuning-example", 7)
    assert (hpo.objective, hpo.direction, hpo.pruner) == ("val_auc", "maximize", "median")
    assert (hpo.pruner_startup_trials, hpo.pruner_warmup_steps) == (2, 1)
    assert (hpo.pruner_min_resource, hpo.pruner_reduction_factor) == (1, 3)
    assert hpo.storage in (None, "")  # the URL comes from DMLT_OPTUNA_STORAGE, never from args
    assert cfg.tracking.parent_run_id == "parent123" and cfg.run_name == "tuning-example-t7"
    assert (cfg.optim.lr, cfg.model.hidden_dims, cfg.train.batch_size) == (0.0123, [128, 64], 512)


def test_the_studys_priority_class_label_reaches_every_trial():
    body = {
        "metadata": {
            "name": "tuning-example", "namespace": "ns", "uid": "study-uid", "generation": 3,
            "labels": {"kueue.x-k8s.io/priority-class": "team-high"},
        }
    }  # fmt: skip
    ref = StudyRef.from_body(body)
    assert ref.priority_class == "team-high" and ref.name == "tuning-example" and ref.generation == 3
    labels = build_trial_job(ref, spec(), 7, PARAMS, SECRET, "parent123")["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/priority-class"] == "team-high"
    assert LABEL_TRIAL in labels and labels[LABEL_STUDY] == "tuning-example"
    without = build_trial_job(REF, spec(), 7, PARAMS, SECRET, "parent123")["metadata"]["labels"]
    assert "kueue.x-k8s.io/priority-class" not in without
