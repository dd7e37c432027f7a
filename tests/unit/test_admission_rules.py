"""The CRDs' admission checks, without an apiserver: the admission table (tests/admission_cases.py)
through the CRDs' own schema and CEL rules and through the operator's spec models, and every
closed set or bound of the trainer tied to the CRD that holds it.

The real apiserver runs the same table in tests/integration/test_admission.py; here the CEL
rules run in cel-python with a fake of Kubernetes' quantity and strings libraries
(tests/crd_admission.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from dmlt_contract import DATASETS
from dmlt_operator.core import kube_formats as kf
from dmlt_operator.trainingjob.spec import SpecError, TrainerSpec
from dmlt_operator.tuningstudy.spec import parse_study_spec
from dmlt_trainer import config as trainer_config

from tests.helpers.admission_cases import INVALID, JOB_PLURAL, VALID, operator_parses
from tests.helpers.crd_admission import admission_violations, pattern_of
from tests.helpers.crd_schema import apply_defaults

pytestmark = pytest.mark.unit

CRDS = Path(__file__).resolve().parents[2] / "helm" / "dmlt" / "crds"


def _schema(file: str) -> dict[str, Any]:
    (version,) = yaml.safe_load((CRDS / file).read_text())["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


SCHEMAS = {
    JOB_PLURAL: _schema("trainingjobs.dmlt.io.yaml"),
    "tuningstudies": _schema("tuningstudies.dmlt.io.yaml"),
}
JOB_SPEC = SCHEMAS[JOB_PLURAL]["properties"]["spec"]
STUDY_SCHEMA = SCHEMAS["tuningstudies"]


def admitted(plural: str, spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The defaulted spec and what the CRD's checks refuse it for."""
    schema = SCHEMAS[plural]
    obj = apply_defaults({"apiVersion": "dmlt.io/v1alpha1", "metadata": {"name": "case"},
                          "spec": copy.deepcopy(spec)}, schema)  # fmt: skip
    return obj["spec"], admission_violations(schema, obj)


def names_field(violation: str, field: str) -> bool:
    """The violation is reported at `field`, or at its parent naming the missing child."""
    path, _, message = violation.partition(": ")
    path = path.lstrip(".")
    parent, _, child = field.rpartition(".")
    return path == field or (path == parent and f"'{child}'" in message)


def test_the_tables_are_large_enough():
    assert len(INVALID) >= 60 and len(VALID) >= 10
    assert len({case for case, *_ in INVALID}) == len(INVALID)
    assert len({case for case, _ in VALID}) == len(VALID)


@pytest.mark.parametrize(("case", "obj", "field", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_the_crd_refuses(case, obj, field, words):
    _, found = admitted(*obj)
    assert any(names_field(v, field) for v in found), found


@pytest.mark.parametrize(("case", "obj", "field", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_the_operator_refuses(case, obj, field, words):
    with pytest.raises(SpecError):
        operator_parses(*obj)


@pytest.mark.parametrize(("case", "obj"), VALID, ids=[c[0] for c in VALID])
def test_the_crd_and_the_operator_accept(case, obj):
    spec, found = admitted(*obj)
    assert found == []
    operator_parses(obj[0], spec)
    operator_parses(*obj)


# Refusals in the apiserver's own words (OpenAPI types, patterns, enums, lengths, list maps):
# the operator's model refuses those too, in pydantic's words.
APISERVER_WORDS = {"should match", "at least 1", "253", "63", "Unsupported value", "integer", "boolean",
                   "Required value", "Duplicate value", "must have at most 128 items"}  # fmt: skip
PRUNED = {"valueFrom-typo"}
"""The apiserver prunes the misspelt field and then finds no source; the operator names the field."""
CEL_CASES = [c for c in INVALID if c[3] not in APISERVER_WORDS and c[0] not in PRUNED]


@pytest.mark.parametrize(("case", "obj", "field", "words"), CEL_CASES, ids=[c[0] for c in CEL_CASES])
def test_operator_messages_are_the_crds(case, obj, field, words):
    """Where the CRD's refusal is a rule of ours, the operator's model says the same words."""
    assert any(words in v for v in admitted(*obj)[1])
    with pytest.raises(SpecError) as err:
        operator_parses(*obj)
    assert words in str(err.value)


# --------------------------------------------------------------------------- closed sets and bounds


def test_datasets_are_the_trainers():
    dataset = JOB_SPEC["properties"]["trainer"]["properties"]["dataset"]
    assert tuple(dataset["enum"]) == DATASETS
    assert get_args(trainer_config.DataConfig.model_fields["dataset"].annotation) == DATASETS
    assert get_args(TrainerSpec.model_fields["dataset"].annotation) == DATASETS
    assert dataset["default"] == trainer_config.DataConfig().dataset


def test_file_dataset_needs_what_the_trainer_needs():
    with pytest.raises(trainer_config.ConfigError, match="--data-path FILE and --target-column COLUMN"):
        trainer_config.DataConfig(dataset="file")
    trainer_config.DataConfig(dataset="file", data_path="x.csv", target="y")
    assert admitted(JOB_PLURAL, {"image": "i", "trainer": {"dataset": "file"}})[1]
    assert not admitted(JOB_PLURAL, {"image": "i", "trainer": {"dataset": "file", "dataPath": "x.csv",
                                                                "target": "y"}})[1]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("spec.env[].name", kf.ENV_NAME),
        ("spec.env[].valueFrom.secretKeyRef.name", kf.DNS_SUBDOMAIN),
        ("spec.env[].valueFrom.secretKeyRef.key", kf.CONFIG_KEY),
        ("spec.env[].valueFrom.configMapKeyRef.name", kf.DNS_SUBDOMAIN),
        ("spec.env[].valueFrom.configMapKeyRef.key", kf.CONFIG_KEY),
        ("spec.env[].valueFrom.fieldRef.fieldPath", kf.FIELD_PATH),
        ("spec.env[].valueFrom.resourceFieldRef.resource", kf.RESOURCE_FIELD),
        ("spec.env[].valueFrom.resourceFieldRef.containerName", kf.DNS_LABEL),
        ("spec.checkpoint.persistentVolumeClaim.claimName", kf.DNS_SUBDOMAIN),
        ("spec.serviceAccountName", kf.DNS_SUBDOMAIN),
        ("spec.nodeSelector{}", kf.LABEL_VALUE),
        ("spec.tolerations[].value", kf.LABEL_VALUE),
    ],
)
def test_crd_patterns_are_the_operators(path, pattern):
    assert pattern_of(SCHEMAS[JOB_PLURAL], path) == pattern
    assert pattern_of(STUDY_SCHEMA, path.replace("spec.", "spec.trialTemplate.", 1)) == pattern


def test_study_secret_name_pattern():
    assert pattern_of(STUDY_SCHEMA, "spec.storage.secretRef.name") == kf.DNS_SUBDOMAIN


def test_env_names_follow_kubernetes_1_34():
    """Printable ASCII other than '=' (RelaxedEnvironmentVariableValidation, GA in 1.34)."""
    printable = [chr(c) for c in range(32, 127)]
    assert [c for c in printable if not kf.matches(kf.ENV_NAME, c)] == ["="]
    assert not any(kf.matches(kf.ENV_NAME, c) for c in ("\t", "\n", "\x7f", "é", ""))


def _trainer_bounds() -> dict[str, tuple[float | None, bool, float | None, bool]]:
    """(low, low inclusive, high, high inclusive) of each tunable setting in the TrainingJob CRD."""
    props = JOB_SPEC["properties"]["trainer"]["properties"]
    out: dict[str, tuple[float | None, bool, float | None, bool]] = {}
    for name in ("batchSize", "epochs", "weightDecay"):
        node = props[name]
        out[name] = (node.get("minimum"), True, node.get("maximum"), True)
    out["lr"] = (0.0, False, props["lr"]["maximum"], True)  # CEL: self > 0.0
    out["dropout"] = (0.0, True, 1.0, False)  # CEL: self >= 0.0 && self < 1.0
    return out


TRAINER_BOUNDS = _trainer_bounds()
TRAINER_FIELD = {"batchSize": "batch_size", "epochs": "epochs", "lr": "lr", "weightDecay": "weight_decay",
                 "dropout": "dropout"}  # fmt: skip


TRAINER_SECTION = {"batchSize": trainer_config.TrainConfig, "epochs": trainer_config.TrainConfig,
                   "lr": trainer_config.OptimConfig, "weightDecay": trainer_config.OptimConfig,
                   "dropout": trainer_config.ModelConfig}  # fmt: skip


def _trainer_accepts(name: str, value: float) -> bool:
    section = TRAINER_SECTION[name]
    try:
        section(**{TRAINER_FIELD[name]: value})
    except trainer_config.ConfigError:
        return False
    return True


def _job_crd_accepts(name: str, value: float) -> bool:
    return not admitted(JOB_PLURAL, {"image": "i", "trainer": {name: value}})[1]


def _study_accepts(param: dict[str, Any]) -> tuple[bool, bool]:
    """(the study CRD admits the parameter, the operator's model accepts it)."""
    spec = {"parameters": [param], "trialTemplate": {"image": "i"}}
    crd_ok = not admitted("tuningstudies", spec)[1]
    try:
        parse_study_spec(spec)
    except SpecError:
        return crd_ok, False
    return crd_ok, True


@pytest.mark.parametrize("name", sorted(TRAINER_BOUNDS))
def test_trainer_lower_bounds_are_the_crds(name):
    """The trainer's own lower bound, the TrainingJob CRD's and the study CRD's are one."""
    low, inclusive, _, _ = TRAINER_BOUNDS[name]
    below = low - (1 if name in ("batchSize", "epochs") else 1e-6)
    assert _trainer_accepts(name, low) == inclusive
    assert not _trainer_accepts(name, below)
    assert _job_crd_accepts(name, low) == inclusive and not _job_crd_accepts(name, below)


@pytest.mark.parametrize("name", sorted(TRAINER_BOUNDS))
def test_study_parameters_hold_the_trainer_bounds(name):
    low, low_in, high, high_in = TRAINER_BOUNDS[name]
    whole = name in ("batchSize", "epochs")
    kind = "int" if whole else "float"
    step = 1 if whole else 1e-6
    inner_low = low if low_in else low + step
    inner_high = (high if high_in else high - step) if high is not None else inner_low + 10
    assert _study_accepts({"name": name, "type": kind, "min": inner_low, "max": inner_high}) == (True, True)
    below = {"name": name, "type": kind, "min": low - step, "max": inner_high}
    assert _study_accepts(below) == (False, False)
    if high is not None:
        outer = high + step if high_in else high
        assert _study_accepts({"name": name, "type": kind, "min": inner_low, "max": outer}) == (False, False)
    for choice, ok in ((inner_low, True), (low - step, False)):
        written = int(choice) if whole else str(choice)
        param = {"name": name, "type": "categorical", "choices": [written]}
        assert _study_accepts(param) == (ok, ok), (param, ok)


def test_hidden_dims_choices_hold_the_width_bounds():
    width = JOB_SPEC["properties"]["trainer"]["properties"]["hiddenDims"]
    top, layers = width["items"]["maximum"], width["maxItems"]
    for choices, ok in (
        ([top], True),
        ([top + 1], False),
        (["-".join(["1"] * layers)], True),
        (["-".join(["1"] * (layers + 1))], False),
        (["8-0"], False),
        ([0], False),
    ):
        param = {"name": "hiddenDims", "type": "categorical", "choices": choices}
        assert _study_accepts(param) == (ok, ok), choices  # fmt: skip


def test_grid_limit_is_the_operators():
    from dmlt_operator.tuningstudy.spec import MAX_GRID

    def grid(high: int) -> dict[str, Any]:
        return {"parameters": [{"name": "batchSize", "type": "int", "min": 2, "max": high}],
                "algorithm": {"name": "grid"}, "trialTemplate": {"image": "i"}}  # fmt: skip

    assert not admitted("tuningstudies", grid(MAX_GRID + 1))[1]
    parse_study_spec(grid(MAX_GRID + 1))
    assert admitted("tuningstudies", grid(MAX_GRID + 2))[1]
    with pytest.raises(SpecError, match="at most 100000 points"):
        parse_study_spec(grid(MAX_GRID + 2))
