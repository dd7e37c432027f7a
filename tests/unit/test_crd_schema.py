"""The TrainingJob CRD: documented, structural, defaulted like the operator, validated by CEL.

The apiserver is what users meet; these tests keep its schema honest without a cluster:
every field is described (`kubectl explain`), the status the planner writes fits the declared
status schema (else the apiserver prunes it silently), the schema's defaults equal the
operator's, and the CEL rules accept good objects and reject bad ones (evaluated with cel-python
when it is installed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from dmlt_operator.core.objects import GROUP, VERSION
from dmlt_operator.core.objects import JOB_KIND as KIND
from dmlt_operator.core.objects import JOB_PLURAL as PLURAL
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob import progress as pg
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec

from tests.helpers.crd_schema import apply_defaults, assert_fits, walk

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "helm" / "dmlt" / "crds" / "trainingjobs.dmlt.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def version(crd) -> dict[str, Any]:
    (v,) = crd["spec"]["versions"]
    return v


@pytest.fixture(scope="module")
def schema(version) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


def test_names_and_scope(crd, version):
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == KIND and names["plural"] == PLURAL
    assert "tj" in names["shortNames"] and "dmlt" in names["categories"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_every_field_has_a_description(schema):
    # metadata is the apiserver's own (it forbids anything but name/generateName there).
    missing = [
        path or "<root>" for path, node in walk(schema) if not node.get("description") and path != ".metadata"
    ]
    assert missing == []


def test_metadata_is_left_to_the_apiserver(schema):
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_schema_is_structural(schema):
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
            continue  # the root rule reads only metadata.name (bounded by the apiserver)
        for sub_path, sub in walk(node, path):
            if sub.get("type") == "array":
                assert "maxItems" in sub, f"{sub_path} needs maxItems (CEL rule on {path})"
            if sub.get("type") == "string":
                assert "maxLength" in sub or "enum" in sub, f"{sub_path} needs maxLength ({path})"


def test_cel_rules_present(schema):
    spec = schema["properties"]["spec"]["properties"]

    def rules(node):
        return " ; ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))

    assert "self >= 1" in rules(spec["replicas"])
    assert "self == oldSelf" in rules(spec["replicas"])
    assert "['auto', 'gloo', 'nccl']" in rules(spec["backend"])
    assert "self.all(d, d > 0)" in rules(spec["trainer"]["properties"]["hiddenDims"])
    for immutable in ("image", "replicas", "procsPerNode", "backend", "trainer", "checkpoint"):
        assert "self == oldSelf" in rules(spec[immutable]), immutable
    assert "self == oldSelf" not in rules(spec["runPolicy"])  # suspend must stay mutable
    assert "metadata.name" in rules(schema)
    for _, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"rule without message: {rule['rule']}"


def test_printer_columns_point_into_the_schema(version, schema):
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Ready", "Progress", "Val-AUC", "Restarts", "Queue", "Age"]
    for col in columns.values():
        assert col.get("description")
        path = col["jsonPath"]
        if path.startswith(".metadata"):
            continue
        node = schema
        for part in path.strip(".").split("."):
            props = node.get("properties")
            node = props[part] if props and part in props else node.get("additionalProperties")
            assert node is not None, f"{path} not in schema"


def test_status_schema_covers_what_the_operator_writes(schema):
    """A status field missing from the schema is pruned by the apiserver without an error."""
    status_schema = schema["properties"]["status"]
    job = JobRef("ddp", "ns", "u", 1)
    spec = parse_spec({"image": "i", "replicas": 2})
    pods = [
        pd.PodSummary(name=f"ddp-{r}", rank=r, attempt=0, owner_uid="u", uid=f"p{r}",
                      phase="Succeeded", ready=False, started=True, exit_code=0,
                      reason="Completed", message="done", node="n1")
        for r in range(2)
    ]  # fmt: skip
    report = pg.parse_trainer_log(
        '{"event": "epoch", "epoch": 3, "epochs": 3, "metrics": {"val_auc": 0.9}, '
        '"mlflow_run_id": "r1"}\n'
        '{"event": "finished", "status": "completed", "world_size": 2, "mlflow_run_id": "r1", '
        f'"weights_sha256": "{"a" * 64}"}}'
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    p = rc.plan(job, spec, None, [], {}, now)
    running = [
        pd.PodSummary(name=f"ddp-{r}", rank=r, attempt=0, owner_uid="u", uid=f"p{r}",
                      phase="Running", ready=True, started=True, node="n1")
        for r in range(2)
    ]  # fmt: skip
    p = rc.plan(job, spec, p.status, running, {}, now)
    p = rc.plan(job, spec, p.status, pods, {"ddp-0": report, "ddp-1": report}, now)
    assert p.status["phase"] == rc.SUCCEEDED
    assert set(rc.MANAGED_STATUS_KEYS) <= set(status_schema["properties"])
    assert_fits(p.status, status_schema, ".status")


# --------------------------------------------------------------------------- defaults


def test_schema_defaults_equal_the_operators(schema):
    spec_schema = schema["properties"]["spec"]
    minimal = {"image": "dmlt-trainer:dev"}
    defaulted = apply_defaults(minimal, spec_schema)
    assert defaulted["trainer"]["hiddenDims"] == [512, 256, 128]
    assert defaulted["runPolicy"]["backoffLimit"] == 3
    from_crd = parse_spec(defaulted).model_dump()
    from_model = parse_spec(minimal).model_dump()
    assert from_crd == from_model


def test_every_default_is_valid_for_its_field(schema):
    for path, node in walk(schema):
        if "default" in node:
            assert_fits(node["default"], node, path)
            if "enum" in node:
                assert node["default"] in node["enum"], path


# --------------------------------------------------------------------------- CEL

from tests.helpers.crd_admission import cel_violations as violations  # noqa: E402


def needs_cel(test):
    return test


def job(name="ddp-example", **spec):
    return {"apiVersion": "dmlt.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": {"image": "dmlt-trainer:dev", **spec}}  # fmt: skip


def defaulted(schema, obj):
    return apply_defaults(obj, schema)


@needs_cel
def test_cel_accepts_the_example(schema):
    docs = list(yaml.safe_load_all((ROOT / "examples" / "ddp.yaml").read_text()))
    jobs = [d for d in docs if d and d.get("kind") == "TrainingJob"]
    assert jobs
    for doc in jobs:
        assert violations(schema, defaulted(schema, doc)) == []
        parse_spec(doc["spec"])


@needs_cel
@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"backend": "mpi"}, "backend must be one of"),
        ({"backend": "nccl"}, "backend nccl needs"),
        ({"trainer": {"hiddenDims": []}}, "hiddenDims must be"),
        ({"trainer": {"hiddenDims": [8, -1]}}, "hiddenDims must be"),
        ({"trainer": {"dropout": 1.0}}, "dropout must be"),
        ({"trainer": {"lr": 0}}, "lr must be positive"),
        (
            {"checkpoint": {"persistentVolumeClaim": {"claimName": "c"}, "emptyDir": {}}},
            "only one of",
        ),
    ],
)
def test_cel_rejects_bad_specs(schema, spec, fragment):
    found = violations(schema, defaulted(schema, job(**spec)))
    assert any(fragment in v for v in found), found


@needs_cel
def test_cel_accepts_good_specs(schema):
    good = job(
        replicas=4,
        backend="nccl",
        resources={"limits": {"nvidia.com/gpu": 2}},
        trainer={"hiddenDims": [64], "dropout": 0.0, "lr": 1},
        checkpoint={"persistentVolumeClaim": {"claimName": "ckpt"}},
    )
    assert violations(schema, defaulted(schema, good)) == []


@needs_cel
@pytest.mark.parametrize("name", ["1abc", "a" * 51, "has.dot"])
def test_cel_rejects_bad_names(schema, name):
    assert any("metadata.name" in v for v in violations(schema, defaulted(schema, job(name))))


@needs_cel
def test_cel_immutability_and_mutable_run_policy(schema):
    old = defaulted(schema, job(replicas=2))
    grown = defaulted(schema, job(replicas=3))
    assert any("replicas is immutable" in v for v in violations(schema, grown, old))
    retrained = defaulted(schema, job(replicas=2, trainer={"epochs": 99}))
    assert any("trainer settings are immutable" in v for v in violations(schema, retrained, old))
    suspended = defaulted(schema, job(replicas=2, runPolicy={"suspend": True}))
    assert violations(schema, suspended, old) == []
