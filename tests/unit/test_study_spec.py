"""The typed TuningStudy spec: defaults, the search space's rules, and grid arithmetic."""

from __future__ import annotations

from typing import Any

import pytest
from dmlt_operator.tuningstudy.spec import (
    StudySpecError,
    check_study_name,
    parse_study_spec,
    trainer_value,
)

pytestmark = pytest.mark.unit

TEMPLATE = {"image": "dmlt-trainer:dev", "trainer": {"epochs": 4}}


def study(*parameters: dict[str, Any], **spec: Any) -> dict[str, Any]:
    params = list(parameters) or [{"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "log": True}]
    return {"parameters": params, "trialTemplate": TEMPLATE, **spec}


def test_defaults():
    s = parse_study_spec(study())
    assert (s.objective.metric, s.objective.direction) == ("val_auc", "maximize")
    assert (s.algorithm.name, s.algorithm.seed, s.algorithm.startup_trials) == ("tpe", 42, None)
    assert (s.max_trials, s.parallelism, s.max_failed_trials) == (10, 1, 3)
    assert (s.pruner.name, s.pruner.startup_trials, s.pruner.warmup_steps) == ("median", 5, 0)
    assert (s.pruner.min_resource, s.pruner.reduction_factor) == (1, 3)
    assert s.storage.secret_ref is None and s.storage.retain_study is False
    assert s.mlflow.tracking_uri == "" and s.mlflow.experiment == ""
    assert s.template.image == "dmlt-trainer:dev" and s.template.trainer.epochs == 4
    assert s.effective_max_trials == 10


def test_camel_case_fields_parse():
    s = parse_study_spec(
        study(
            maxTrials=8, parallelism=2, maxFailedTrials=0,
            algorithm={"name": "random", "seed": 7, "startupTrials": 3},
            pruner={"name": "hyperband", "minResource": 2, "reductionFactor": 4},
            storage={"secretRef": {"name": "db"}, "retainStudy": True},
            mlflow={"trackingUri": "http://m:5000", "experiment": "e", "registeredModel": "r"},
        )
    )  # fmt: skip
    assert (s.max_trials, s.parallelism, s.max_failed_trials) == (8, 2, 0)
    assert s.algorithm.startup_trials == 3 and s.pruner.reduction_factor == 4
    assert s.storage.secret_ref is not None and s.storage.secret_ref.key == "url"
    assert s.mlflow.registered_model == "r"


GOOD = [
    {"name": "lr", "type": "float", "min": 1e-5, "max": 1e-1, "log": True},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "step": 0.1},
    {"name": "weightDecay", "type": "categorical", "choices": ["0", "1e-4", 0]},
    {"name": "batchSize", "type": "int", "min": 64, "max": 512, "step": 64},
    {"name": "epochs", "type": "int", "min": 2, "max": 32, "log": True},
    {"name": "hiddenDims", "type": "categorical", "choices": ["512-256-128", "64", 32]},
    {"name": "batchSize", "type": "categorical", "choices": [256, "512"]},
]


@pytest.mark.parametrize("param", GOOD, ids=lambda p: f"{p['name']}-{p['type']}")
def test_good_parameters(param):
    parse_study_spec(study(param))


BAD = [
    ({"name": "lr", "type": "float", "min": 0.0, "max": 1.0, "log": True}, "log scale needs min > 0"),
    ({"name": "lr", "type": "float", "min": 0.1, "max": 0.1}, "min must be less than max"),
    ({"name": "lr", "type": "float", "min": 0.2, "max": 0.1}, "min must be less than max"),
    ({"name": "lr", "type": "float", "min": 0.1}, "need min and max"),
    ({"name": "lr", "type": "float", "min": 1e-3, "max": 1e-1, "log": True, "step": 0.01}, "log and step"),
    ({"name": "lr", "type": "float", "min": -1.0, "max": 0.1}, "lr must stay in (0, 10]"),
    ({"name": "lr", "type": "categorical"}, "need choices"),
    ({"name": "lr", "type": "categorical", "choices": []}, "at least 1"),
    ({"name": "lr", "type": "categorical", "choices": ["0.1"], "min": 0.0}, "choices only"),
    (
        {"name": "lr", "type": "float", "min": 0.1, "max": 0.2, "choices": ["0.1"]},
        "categorical parameters only",
    ),
    ({"name": "lr", "type": "int", "min": 1, "max": 2}, "real number"),
    ({"name": "dropout", "type": "float", "min": 0.0, "max": 1.0}, "dropout must stay in [0, 1)"),
    ({"name": "dropout", "type": "categorical", "choices": [0.1]}, "write real numbers as strings"),
    ({"name": "batchSize", "type": "float", "min": 64, "max": 512}, "is an integer"),
    ({"name": "batchSize", "type": "int", "min": 1, "max": 512}, "batchSize must stay in [2, 1000000]"),
    ({"name": "batchSize", "type": "int", "min": 64.5, "max": 512}, "whole number"),
    ({"name": "batchSize", "type": "int", "min": 64, "max": 128, "step": 100}, "step must not exceed"),
    ({"name": "batchSize", "type": "categorical", "choices": [256, 256]}, "unique"),
    ({"name": "hiddenDims", "type": "int", "min": 1, "max": 2}, "hiddenDims must be categorical"),
    ({"name": "hiddenDims", "type": "categorical", "choices": ["512,256"]}, "512-256-128"),
    (
        {"name": "hiddenDims", "type": "categorical", "choices": ["0-4"]},
        "hiddenDims choices are widths in [1, 65536]",
    ),
    ({"name": "momentum", "type": "float", "min": 0.1, "max": 0.9}, "spec.parameters[0].name"),
    ({"name": "lr", "type": "normal", "min": 0.1, "max": 0.9}, "spec.parameters[0].type"),
]


@pytest.mark.parametrize(("param", "fragment"), BAD, ids=[f"{p['name']}-{f[:18]}" for p, f in BAD])
def test_bad_parameters_name_the_field(param, fragment):
    with pytest.raises(StudySpecError) as err:
        parse_study_spec(study(param))
    assert fragment in str(err.value)
    assert "spec.parameters[0]" in str(err.value)


def test_study_level_rules():
    lr = {"name": "lr", "type": "float", "min": 0.001, "max": 0.01}
    cases = [
        (study(lr, dict(lr)), "parameter names must be unique; repeated: lr"),
        (study(lr, maxTrials=2, parallelism=3), "parallelism must not exceed maxTrials"),
        (study(lr, algorithm={"name": "grid"}), "algorithm grid needs a step on every float parameter: lr"),
        (study(lr, algorithm={"name": "anneal"}), "spec.algorithm.name"),
        (study(lr, maxTrials=0), "spec.maxTrials"),
        (study(lr, maxFailedTrials=-1), "spec.maxFailedTrials"),
        (study(lr, pruner={"name": "hyperband", "reductionFactor": 1}), "spec.pruner.reductionFactor"),
        (study(lr, storage={"secretRef": {"name": "db", "key": "a/b"}}), "spec.storage.secretRef.key"),
        (study(lr, objective={"metric": "val auc"}), "spec.objective.metric"),
        (
            study(lr, objective={"metric": "val_auroc"}),
            "'val_auroc' is not a metric the trainer logs per epoch",
        ),
        (study(lr, pruner={"name": "percentile", "percentile": 100}), "spec.pruner.percentile"),
        (study(lr, unknown=1), "spec.unknown"),
        ({"parameters": [lr]}, "spec.trialTemplate: Field required"),
        (study(lr, trialTemplate={"image": "i", "replicas": 0}), "spec.trialTemplate.replicas"),
        (
            study(lr, trialTemplate={"image": "i", "trainer": {"dropout": 2}}),
            "spec.trialTemplate.trainer.dropout",
        ),
        (study(lr, trialTemplate={"image": "i", "backend": "nccl"}), "backend nccl needs"),
    ]
    for raw, fragment in cases:
        with pytest.raises(StudySpecError) as err:
            parse_study_spec(raw)
        assert fragment in str(err.value), (fragment, str(err.value))


def test_grid_values_and_size():
    s = parse_study_spec(
        study(
            {"name": "lr", "type": "float", "min": 0.001, "max": 0.0035, "step": 0.001},
            {"name": "batchSize", "type": "int", "min": 64, "max": 256, "step": 64},
            {"name": "hiddenDims", "type": "categorical", "choices": ["64-32", "128-64"]},
            algorithm={"name": "grid"}, maxTrials=100,
        )
    )  # fmt: skip
    assert s.parameter("lr").grid_values() == [0.001, 0.002, 0.003]
    assert s.parameter("batchSize").grid_values() == [64, 128, 192, 256]
    assert s.parameter("hiddenDims").grid_values() == ["64-32", "128-64"]
    assert s.grid_size() == 3 * 4 * 2
    assert s.effective_max_trials == 24  # the grid runs out before maxTrials


def test_grid_size_limit():
    raw = study(
        {"name": "lr", "type": "float", "min": 1e-6, "max": 1.0, "step": 1e-6},
        algorithm={"name": "grid"},
    )
    with pytest.raises(StudySpecError, match="at most 100000 points"):
        parse_study_spec(raw)


def test_trainer_values():
    assert trainer_value("lr", "0.01") == 0.01
    assert trainer_value("dropout", 0) == 0.0
    assert trainer_value("batchSize", "512") == 512
    assert trainer_value("epochs", 4.0) == 4
    assert trainer_value("hiddenDims", "512-256-128") == [512, 256, 128]
    assert trainer_value("hiddenDims", 64) == [64]
    for name, raw in (("epochs", 4.5), ("lr", True), ("lr", "nan"), ("hiddenDims", "a")):
        with pytest.raises(ValueError):
            trainer_value(name, raw)
    with pytest.raises(ValueError, match="'abc' is not a number"):
        trainer_value("lr", "abc")
    with pytest.raises(ValueError, match="'x' is not an integer"):
        trainer_value("batchSize", "x")


@pytest.mark.parametrize("name", ["tuning-example", "a", "a" * 40])
def test_good_study_names(name):
    check_study_name(name)


@pytest.mark.parametrize("name", ["1study", "a" * 41, "has.dot", "Upper", "trailing-"])
def test_bad_study_names(name):
    with pytest.raises(StudySpecError, match="metadata.name"):
        check_study_name(name)
