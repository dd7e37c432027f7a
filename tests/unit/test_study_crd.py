"""The TuningStudy CRD: documented, structural, defaulted like the operator, validated by CEL, and
its trialTemplate the TrainingJob spec schema verbatim (helm/sync_study_crd.py keeps them in step).

The CEL helpers come from test_crd_schema.py (the TrainingJob CRD's tests): the same
structural defaulting and the same cel-python evaluation, so both CRDs are held to one standard.
"""

from __future__ import annotations

import copy
import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from dmlt_contract import EPOCH_METRICS, PRUNERS
from dmlt_operator.core.objects import GROUP, STUDY_KIND, STUDY_PLURAL, VERSION
from dmlt_operator.tuningstudy import plan as sr
from dmlt_operator.tuningstudy import trials as tr
from dmlt_operator.tuningstudy.build import StudyRef
from dmlt_operator.tuningstudy.spec import parse_study_spec

from tests.helpers.crd_admission import cel_violations as violations
from tests.helpers.crd_schema import apply_defaults, assert_fits, walk

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "helm" / "dmlt" / "crds"
STUDY_CRD = CRDS / "tuningstudies.dmlt.io.yaml"
JOB_CRD = CRDS / "trainingjobs.dmlt.io.yaml"
EXAMPLE = ROOT / "examples" / "tuning.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(STUDY_CRD.read_text())


@pytest.fixture(scope="module")
def version(crd) -> dict[str, Any]:
    (v,) = crd["spec"]["versions"]
    return v


@pytest.fixture(scope="module")
def schema(version) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


def sync_module():
    spec = importlib.util.spec_from_file_location("sync_study_crd", ROOT / "helm" / "sync_study_crd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_objective_metrics_and_pruners_are_the_contracts(schema):
    """The CRD offers the metrics the trainer logs per epoch (an objective names one) and the
    pruners both sides build: the contract's lists."""
    spec = schema["properties"]["spec"]["properties"]
    assert spec["objective"]["properties"]["metric"]["enum"] == list(EPOCH_METRICS)
    assert spec["pruner"]["properties"]["name"]["enum"] == list(PRUNERS)


# --------------------------------------------------------------------------- the template copy


def test_trial_template_is_generated_from_the_job_crd():
    """Edit trainingjobs.dmlt.io.yaml, then run `python helm/sync_study_crd.py`."""
    current = STUDY_CRD.read_text()
    fresh = sync_module().render(JOB_CRD.read_text(), current)
    assert fresh == current, "tuningstudies.dmlt.io.yaml is out of date: run python helm/sync_study_crd.py"


def test_trial_template_schema_equals_the_job_spec_schema(schema):
    job = yaml.safe_load(JOB_CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    job_spec = dict(job["properties"]["spec"])
    template = dict(schema["properties"]["spec"]["properties"]["trialTemplate"])
    assert "TrainingJob" in template.pop("description")
    job_spec.pop("description")
    assert template == job_spec


def test_the_sync_would_notice_a_change_to_the_job_crd():
    module = sync_module()
    changed = JOB_CRD.read_text().replace("maximum: 1024\n", "maximum: 2048\n", 1)
    assert module.render(changed, STUDY_CRD.read_text()) != STUDY_CRD.read_text()


# --------------------------------------------------------------------------- shape


def test_names_and_scope(crd, version):
    assert crd["metadata"]["name"] == f"{STUDY_PLURAL}.{GROUP}"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == STUDY_KIND and names["plural"] == STUDY_PLURAL
    assert names["shortNames"] == ["ts"] and names["categories"] == ["dmlt"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_every_field_has_a_description(schema):
    missing = [
        path or "<root>" for path, node in walk(schema) if not node.get("description") and path != ".metadata"
    ]
    assert missing == []


def test_schema_is_structural(schema):
    assert schema["properties"]["metadata"] == {"type": "object"}
    for path, node in walk(schema):
        if path in ("", ".metadata"):
            continue
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path} array without items"


def test_cel_bounded_inputs(schema):
    """Rules over lists and strings need maxItems/maxLength, or the apiserver's cost estimate
    rejects the CRD."""
    for path, node in walk(schema):
        if not node.get("x-kubernetes-validations") or path == "":
            continue
        for sub_path, sub in walk(node, path):
            if sub.get("type") == "array":
                assert "maxItems" in sub, f"{sub_path} needs maxItems (CEL rule on {path})"
            if sub.get("type") == "string":
                assert "maxLength" in sub or "enum" in sub, f"{sub_path} needs maxLength ({path})"


def test_every_rule_has_a_message(schema):
    for _, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), rule["rule"]


def test_immutable_and_mutable_fields(schema):
    spec = schema["properties"]["spec"]["properties"]

    def rules(node):
        return " ; ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))

    for immutable in ("objective", "parameters", "algorithm", "pruner", "storage", "mlflow"):
        assert "self == oldSelf" in rules(spec[immutable]), immutable
    for mutable in ("maxTrials", "parallelism", "maxFailedTrials"):
        assert "oldSelf" not in rules(spec[mutable]), mutable


def test_printer_columns(version, schema):
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Algorithm", "Trials", "Running", "Pruned", "Best", "Phase", "Age"]
    for col in columns.values():
        assert col.get("description")
        path = col["jsonPath"]
        if path.startswith(".metadata"):
            continue
        node = schema
        for part in path.strip(".").split("."):
            node = (node.get("properties") or {}).get(part)
            assert node is not None, f"{path} not in schema"
        assert node["type"] == col["type"] or (col["type"] == "number" and node["type"] == "number"), path


def test_status_schema_covers_what_the_operator_writes(schema):
    """A status field missing from the schema is pruned by the apiserver without an error."""
    status_schema = schema["properties"]["status"]
    assert set(sr.MANAGED_STATUS_KEYS) <= set(status_schema["properties"])
    spec = parse_study_spec(
        {"parameters": [{"name": "lr", "type": "float", "min": 0.001, "max": 0.1, "log": True}],
         "trialTemplate": {"image": "i"}, "maxTrials": 2}
    )  # fmt: skip
    ref = StudyRef("s", "ns", "uid", 1)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    trials = [
        tr.TrialRecord(0, tr.T_RUNNING, {"lr": 0.01}, None, {"dmlt.value": 0.9, "dmlt.mlflow_run_id": "r0",
                                                            "dmlt.model_uri": "models:/m-1"}),
        tr.TrialRecord(1, tr.T_RUNNING, {"lr": 0.02}, None, {"dmlt.outcome": "pruned"}),
    ]  # fmt: skip
    jobs = [
        tr.TrialJob("s-t0", 0, "uid", phase="Succeeded", result="completed"),
        tr.TrialJob("s-t1", 1, "uid", phase="Succeeded", result="pruned"),
    ]
    plan = sr.plan(ref, spec, None, trials, jobs, now, tracking=True, parent_run_id="p1")
    assert plan.status["phase"] == sr.SUCCEEDED
    status = dict(plan.status)
    status["registeredModel"] = {"name": "s", "version": "1", "trial": 0}
    assert_fits(status, status_schema, ".status")


# --------------------------------------------------------------------------- defaults


def test_schema_defaults_equal_the_operators(schema):
    spec_schema = schema["properties"]["spec"]
    minimal = {
        "parameters": [{"name": "lr", "type": "float", "min": 0.001, "max": 0.1}],
        "trialTemplate": {"image": "dmlt-trainer:dev"},
    }
    defaulted = apply_defaults(minimal, spec_schema)
    assert defaulted["algorithm"]["name"] == "tpe" and defaulted["pruner"]["name"] == "median"
    assert defaulted["trialTemplate"]["trainer"]["hiddenDims"] == [512, 256, 128]
    from_crd = parse_study_spec(defaulted).model_dump()
    from_model = parse_study_spec(minimal).model_dump()
    # The CRD defaults the template's fields; the operator leaves the raw template as written.
    from_crd.pop("trial_template")
    from_model.pop("trial_template")
    assert from_crd == from_model


def test_every_default_is_valid_for_its_field(schema):
    for path, node in walk(schema):
        if "default" in node:
            assert_fits(node["default"], node, path)
            if "enum" in node:
                assert node["default"] in node["enum"], path


# --------------------------------------------------------------------------- CEL


def study_obj(name: str = "tuning-example", **spec: Any) -> dict[str, Any]:
    body = {
        "parameters": [{"name": "lr", "type": "float", "min": 0.0001, "max": 0.1, "log": True}],
        "trialTemplate": {"image": "dmlt-trainer:dev"},
        **spec,
    }
    return {"apiVersion": "dmlt.io/v1alpha1", "kind": "TuningStudy", "metadata": {"name": name}, "spec": body}


def defaulted(schema, obj):
    return apply_defaults(obj, schema)


def test_cel_accepts_the_example(schema):
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    studies = [d for d in docs if d.get("kind") == STUDY_KIND]
    assert len(studies) == 1
    for doc in studies:
        assert violations(schema, defaulted(schema, doc)) == []
        spec = parse_study_spec(doc["spec"])
        assert (spec.max_trials, spec.parallelism, spec.pruner.name) == (8, 2, "median")
        assert spec.template.replicas == 1


def test_cel_accepts_every_kind_of_parameter(schema):
    obj = study_obj(
        parameters=[
            {"name": "lr", "type": "float", "min": 1e-5, "max": 1e-1, "log": True},
            {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "step": 0.1},
            {"name": "weightDecay", "type": "categorical", "choices": ["0", "0.0001"]},
            {"name": "batchSize", "type": "int", "min": 64, "max": 512, "step": 64},
            {"name": "epochs", "type": "int", "min": 2, "max": 16, "log": True, "step": 1},
            {"name": "hiddenDims", "type": "categorical", "choices": ["512-256-128", 64]},
        ],
        algorithm={"name": "cmaes"},
        maxTrials=4,
        parallelism=4,
    )
    assert violations(schema, defaulted(schema, obj)) == []
    grid = study_obj(
        parameters=[{"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "step": 0.1}],
        algorithm={"name": "grid"},
    )
    assert violations(schema, defaulted(schema, grid)) == []


P = "parameters"
INVALID = [
    ({P: [{"name": "lr", "type": "float", "min": 0.1, "max": 0.01}]}, "min must be less than max"),
    (
        {P: [{"name": "weightDecay", "type": "float", "min": 0.0, "max": 0.1, "log": True}]},
        "log scale needs min",
    ),
    (
        {P: [{"name": "lr", "type": "float", "min": 0.01, "max": 0.1, "log": True, "step": 0.01}]},
        "log and step",
    ),
    ({P: [{"name": "lr", "type": "categorical"}]}, "categorical parameters need choices"),
    ({P: [{"name": "lr", "type": "categorical", "choices": []}]}, "categorical parameters need choices"),
    ({P: [{"name": "lr", "type": "categorical", "choices": ["0.1"], "max": 1}]}, "choices only"),
    ({P: [{"name": "lr", "type": "float", "min": 0.01}]}, "need min and max"),
    (
        {P: [{"name": "lr", "type": "float", "min": 0.01, "max": 0.1, "choices": [1]}]},
        "categorical parameters only",
    ),
    ({P: [{"name": "hiddenDims", "type": "int", "min": 1, "max": 4}]}, "hiddenDims must be categorical"),
    ({P: [{"name": "batchSize", "type": "float", "min": 8, "max": 64}]}, "batchSize and epochs are integers"),
    ({P: [{"name": "dropout", "type": "int", "min": 0, "max": 1}]}, "real numbers"),
    ({P: [{"name": "lr", "type": "float", "min": 0.0, "max": 0.1}]}, "lr must stay in (0, 10]"),
    ({P: [{"name": "dropout", "type": "float", "min": 0.0, "max": 1.0}]}, "dropout must stay in [0, 1)"),
    ({P: [{"name": "batchSize", "type": "int", "min": 8, "max": 64, "step": 0}]}, "step must be positive"),
    (
        {P: [{"name": "lr", "type": "float", "min": 0.01, "max": 0.1}] * 2},
        "parameter names must be unique",
    ),
    ({"maxTrials": 2, "parallelism": 3}, "parallelism must not exceed maxTrials"),
    ({"algorithm": {"name": "grid"}}, "algorithm grid needs a step"),
    ({"trialTemplate": {"image": "i", "replicas": 0}}, "replicas must be at least 1"),
    ({"trialTemplate": {"image": "i", "backend": "nccl"}}, "backend nccl needs"),
]


@pytest.mark.parametrize(("spec", "fragment"), INVALID, ids=[f for _, f in INVALID])
def test_cel_rejects_bad_search_spaces(schema, spec, fragment):
    found = violations(schema, defaulted(schema, study_obj(**spec)))
    assert any(fragment in v for v in found), found


@pytest.mark.parametrize("name", ["1abc", "a" * 41, "has.dot"])
def test_cel_rejects_bad_names(schema, name):
    assert any("metadata.name" in v for v in violations(schema, defaulted(schema, study_obj(name))))


def test_cel_immutability(schema):
    old = defaulted(schema, study_obj(maxTrials=8, parallelism=2))
    raised = defaulted(schema, study_obj(maxTrials=20, parallelism=4))
    assert violations(schema, raised, old) == []  # the budget may grow while the study runs
    new_space = copy.deepcopy(old)
    new_space["spec"]["parameters"][0]["max"] = 0.5
    assert any("parameters are immutable" in v for v in violations(schema, new_space, old))
    new_algo = copy.deepcopy(old)
    new_algo["spec"]["algorithm"]["name"] = "random"
    assert any("algorithm is immutable" in v for v in violations(schema, new_algo, old))
    new_image = copy.deepcopy(old)
    new_image["spec"]["trialTemplate"]["image"] = "other:dev"
    assert any("image is immutable" in v for v in violations(schema, new_image, old))
