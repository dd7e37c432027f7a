"""The Helm chart: documented strict values, clean lint, and what the templates render."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.helpers.helm_chart import CHART, SCHEMA, VALUES, helm, render

pytestmark = pytest.mark.unit


def test_every_value_has_a_comment():
    """Each leaf value has a `# --` comment above it, or sits inside a documented block
    (e.g. `resources:`)."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def commented(i: int) -> bool:
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1  # continuation lines of a multi-line comment
        return j >= 0 and lines[j].strip().startswith("# --")

    missing = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.]*):\s*(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = commented(i) or any(doc for _, doc in stack)
        if m.group(3) == "":
            stack.append((indent, documented))
        elif not documented:
            missing.append(m.group(2))
    assert missing == []


def schema_walk(node: dict[str, Any], path: str = "values"):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_walk(child, f"{path}.{name}")


def test_schema_is_strict_and_documented():
    for path, node in schema_walk(SCHEMA):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} is not strict"
        if path != "values":
            assert node.get("description"), f"{path} has no description"


def test_every_value_is_in_the_schema():
    def check(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        props = node.get("properties") or {}
        for key, value in values.items():
            assert key in props, f"{path}.{key} missing from values.schema.json"
            if isinstance(value, dict) and "properties" in props[key]:
                check(value, props[key], f"{path}.{key}")

    check(VALUES, SCHEMA, "values")


def test_values_validate_against_the_schema():
    import jsonschema

    jsonschema.validate(VALUES, SCHEMA)
    bad = json.loads(json.dumps(VALUES))
    bad["operator"]["imagePullPolicy"] = "Always"  # a typo'd key must be rejected
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_default_images():
    assert VALUES["operator"]["image"] == {
        "repository": "dmlt-operator", "tag": "dev", "pullPolicy": "IfNotPresent"
    }  # fmt: skip
    assert VALUES["mlflow"]["image"]["repository"] == "dmlt-trainer"
    assert VALUES["mlflow"]["enabled"] is True


# --------------------------------------------------------------------------- helm


def test_helm_lint_is_clean():
    out = helm("lint", str(CHART), "--strict", "--kube-version", "1.34.0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_unknown_value_is_rejected():
    out = helm("template", "dmlt", str(CHART), "--set", "operator.replicas=2")
    assert out.returncode != 0
    assert "additional properties" in (out.stderr + out.stdout).lower()


def test_operator_deployment():
    objs = render()
    dep = objs[("Deployment", "dmlt-operator")]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dmlt-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == "dmlt-operator:dev" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["DMLT_DEFAULT_TRACKING_URI"] == "http://dmlt-mlflow.dmlt.svc:5000"
    assert env["DMLT_HEALTH_PORT"] == "8080" and env["DMLT_METRICS_PORT"] == "9090"
    # Every DMLT_* variable the chart sets is one the operator reads.
    from dmlt_operator.core.config import OperatorConfig

    cfg = OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith("DMLT_")})
    assert cfg.default_tracking_uri == "http://dmlt-mlflow.dmlt.svc:5000"
    assert cfg.namespaces == ()


def test_rbac_is_least_privilege_and_covers_the_operator():
    objs = render()
    role = objs[("ClusterRole", "dmlt-operator")]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in g or "*" in r or "*" in v for g, r, v in granted)
    needed = {
        ("", "pods", "create"), ("", "pods", "delete"), ("", "pods", "list"),
        ("", "pods", "watch"), ("", "pods/log", "get"), ("", "services", "create"),
        ("", "events", "create"), ("dmlt.io", "trainingjobs", "watch"),
        ("dmlt.io", "trainingjobs", "patch"), ("dmlt.io", "trainingjobs", "delete"),
        ("dmlt.io", "trainingjobs/status", "patch"),
        ("dmlt.io", "trainingjobs/finalizers", "update"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("", "namespaces", "watch"),
    }  # fmt: skip
    assert needed <= granted
    # Secrets: only `get` by name (a TuningStudy's storage URL), never list or watch.
    assert {v for _, r, v in granted if r == "secrets"} == {"get"}
    binding = objs[("ClusterRoleBinding", "dmlt-operator")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dmlt-operator", "namespace": "dmlt"}]


def test_mlflow_server():
    objs = render()
    dep = objs[("Deployment", "dmlt-mlflow")]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "dmlt-trainer:dev"
    assert c["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in c["args"]
    assert "--artifacts-destination=/mlflow/artifacts" in c["args"]
    hosts = {e["name"]: e["value"] for e in c["env"]}["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {"dmlt-mlflow.dmlt.svc:*", "localhost:*"} <= set(hosts)
    svc = objs[("Service", "dmlt-mlflow")]
    assert svc["spec"]["ports"][0]["port"] == 5000
    pvc = objs[("PersistentVolumeClaim", "dmlt-mlflow")]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "dmlt-mlflow"


def test_mlflow_optional():
    objs = render("mlflow.enabled=false", "operator.defaultTrackingUri=http://mlflow.example:5000")
    assert not any(kind_name[1].endswith("-mlflow") for kind_name in objs)
    dep = objs[("Deployment", "dmlt-operator")]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DMLT_DEFAULT_TRACKING_URI"] == "http://mlflow.example:5000"


def test_mlflow_without_persistence_uses_empty_dir():
    objs = render("mlflow.persistence.enabled=false")
    assert ("PersistentVolumeClaim", "dmlt-mlflow") not in objs
    vols = {v["name"]: v for v in objs[("Deployment", "dmlt-mlflow")]["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}


def test_metrics_service_and_watch_namespaces():
    objs = render("operator.watchNamespaces={a,b}")
    svc = objs[("Service", "dmlt-operator-metrics")]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    dep = objs[("Deployment", "dmlt-operator")]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DMLT_NAMESPACES"] == "a,b"


def test_crd_is_installed_from_crds_folder():
    out = helm("template", "dmlt", str(CHART), "--include-crds", "--kube-version", "1.34.0")
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert "CustomResourceDefinition" in kinds
