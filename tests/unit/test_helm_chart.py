"""The Helm chart: documented strict values, clean lint, and what the templates render."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
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
    out = helm("template", "dmlt", str(CHART), "--set", "operator.replicaCount=2")
    assert out.returncode != 0
    assert "additional properties" in (out.stderr + out.stdout).lower()


def test_operator_deployment():
    objs = render()
    dep = objs[("Deployment", "dmlt-operator")]
    # Two replicas, one active (the Lease holder): a rolling update may overlap old and new Pods.
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
    }  # fmt: skip
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
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DMLT_DEFAULT_TRACKING_URI"] == "http://dmlt-mlflow.dmlt.svc:5000"
    assert env["DMLT_HEALTH_PORT"] == "8080" and env["DMLT_METRICS_PORT"] == "9090"
    from_fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert from_fields == {"DMLT_LEASE_NAMESPACE": "metadata.namespace", "DMLT_POD_NAME": "metadata.name"}
    # Every DMLT_* variable the chart sets is one the operator reads (the Pod's namespace: dmlt).
    from dmlt_operator.core.config import OperatorConfig

    env["DMLT_LEASE_NAMESPACE"] = "dmlt"
    cfg = OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith("DMLT_")})
    assert cfg.default_tracking_uri == "http://dmlt-mlflow.dmlt.svc:5000"
    assert cfg.namespaces == ()
    election = cfg.leader_election
    assert election.enabled and election.lease_name == "dmlt-operator"
    assert (election.lease_duration_s, election.renew_deadline_s, election.retry_period_s) == (9, 6, 3)


def test_operator_disruption_budget_keeps_one_replica():
    pdb = render()[("PodDisruptionBudget", "dmlt-operator")]
    assert pdb["spec"]["minAvailable"] == 1
    dep = render()[("Deployment", "dmlt-operator")]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert ("PodDisruptionBudget", "dmlt-operator") not in render("operator.replicas=1")


def test_operator_replicas_prefer_different_nodes():
    pod = render()[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert labels["app.kubernetes.io/component"] == "operator"
    one = render("operator.replicas=1")[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]
    assert "affinity" not in one
    mine = render("operator.affinity.nodeAffinity.x=1")[("Deployment", "dmlt-operator")]
    assert mine["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {"x": 1}}


def test_one_replica_without_leader_election_is_recreated():
    objs = render("operator.replicas=1", "operator.leaderElection.enabled=false")
    dep = objs[("Deployment", "dmlt-operator")]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"name": "DMLT_LEADER_ELECTION", "value": "false"} in c["env"]
    assert not any(e["name"] == "DMLT_LEASE_NAME" for e in c["env"])
    assert ("Role", "dmlt-operator-leader-election") not in objs


def test_several_replicas_need_leader_election():
    out = helm("template", "dmlt", str(CHART), "--kube-version", "1.34.0",
               "--set", "operator.leaderElection.enabled=false")  # fmt: skip
    assert out.returncode != 0 and "needs operator.leaderElection.enabled" in out.stderr


def test_leader_election_rbac_is_one_lease_in_the_release_namespace():
    objs = render()
    role = objs[("Role", "dmlt-operator-leader-election")]
    assert role["metadata"]["namespace"] == "dmlt"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["dmlt-operator"], "verbs": ["get", "list", "watch", "update"]},
    ]  # fmt: skip
    binding = objs[("RoleBinding", "dmlt-operator-leader-election")]
    assert binding["roleRef"]["name"] == "dmlt-operator-leader-election"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dmlt-operator", "namespace": "dmlt"}]
    # No lease access cluster-wide.
    assert not any(
        "coordination.k8s.io" in r["apiGroups"] for r in objs[("ClusterRole", "dmlt-operator")]["rules"]
    )


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
        ("kueue.x-k8s.io", "workloads", "delete"),
        ("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads", "get"),
    }  # fmt: skip
    assert needed <= granted
    # Kueue's visibility API: the queue position only, read and nothing else
    assert {(r, v) for g, r, v in granted if g == "visibility.kueue.x-k8s.io"} == {
        ("localqueues/pendingworkloads", "get")
    }
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
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
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
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DMLT_NAMESPACES"] == "a,b"


def test_crd_is_installed_from_crds_folder():
    out = helm("template", "dmlt", str(CHART), "--include-crds", "--kube-version", "1.34.0")
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert "CustomResourceDefinition" in kinds


# --------------------------------------------------------------------------- optuna-dashboard

RESTRICTED_POD = {
    "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}  # fmt: skip
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
}  # fmt: skip


def dashboard_container(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (c,) = objs[("Deployment", "dmlt-dashboard")]["spec"]["template"]["spec"]["containers"]
    return c


def test_dashboard_is_on_by_default_against_the_study_database():
    assert VALUES["dashboard"]["enabled"] is True
    objs = render()
    dep = objs[("Deployment", "dmlt-dashboard")]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == RESTRICTED_POD and pod["automountServiceAccountToken"] is False
    c = dashboard_container(objs)
    assert c["image"] == "dmlt-dashboard:dev" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["securityContext"] == RESTRICTED_CONTAINER
    env = {e["name"]: e for e in c["env"]}
    # The same Secret and key the operator's default storage names (DMLT_DEFAULT_STORAGE_SECRET).
    assert env["OPTUNA_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "dmlt-postgresql", "key": "url"}
    operator_env = {
        e["name"]: e.get("value")
        for e in objs[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert operator_env["DMLT_DEFAULT_STORAGE_SECRET"] == "dmlt-postgresql"
    assert operator_env["DMLT_DEFAULT_STORAGE_SECRET_KEY"] == "url"
    script = c["command"][-1]
    assert "optuna_dashboard.run_server" in script and 'os.environ["OPTUNA_STORAGE"]' in script
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/api/studies"
    assert c["livenessProbe"]["httpGet"]["path"] == "/api/meta"
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    assert c["resources"]["limits"]["memory"]
    svc = objs[("Service", "dmlt-dashboard")]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_dashboard_compiles_as_python():
    compile(dashboard_container(render())["command"][-1], "dashboard", "exec")


def test_dashboard_uses_an_existing_database_secret():
    objs = render(
        "postgresql.enabled=false", "postgresql.existingSecret=studies-db", "postgresql.existingSecretKey=uri"
    )
    env = {e["name"]: e for e in dashboard_container(objs)["env"]}
    assert env["OPTUNA_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "studies-db", "key": "uri"}


def test_dashboard_needs_a_study_database():
    objs = render("postgresql.enabled=false")
    assert not any(name.endswith("-dashboard") for _, name in objs)
    assert "dmlt-dashboard" not in render_notes("postgresql.enabled=false")
    assert "optuna-dashboard is not deployed: there is no study database" in render_notes(
        "postgresql.enabled=false"
    )


def test_dashboard_off():
    objs = render("dashboard.enabled=false")
    assert not any(name.endswith("-dashboard") for _, name in objs)


def test_dashboard_values_are_strict():
    out = helm("template", "dmlt", str(CHART), "--set", "dashboard.replicas=2")
    assert out.returncode != 0 and "additional properties" in (out.stderr + out.stdout).lower()


def render_notes(*sets: str) -> str:
    """NOTES.txt as `helm install` prints it: helm template skips NOTES, so a copy of the chart
    gets one more template that includes it (install --dry-run needs a cluster)."""
    with tempfile.TemporaryDirectory() as scratch:
        chart = Path(scratch) / "dmlt"
        shutil.copytree(CHART, chart)
        (chart / "templates" / "zz-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ include "dmlt/templates/NOTES.txt" . | quote }}\n'
        )
        args = ["template", "dmlt", str(chart), "-n", "dmlt", "--kube-version", "1.34.0"]
        out = helm(*args, "--show-only", "templates/zz-notes.yaml", *(a for s in sets for a in ("--set", s)))
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["data"]["notes"]


def test_install_notes_say_how_to_reach_both_uis():
    notes = render_notes()
    assert "kubectl -n dmlt port-forward svc/dmlt-mlflow 5000" in notes
    assert "kubectl -n dmlt port-forward svc/dmlt-dashboard 8080" in notes
    assert "http://localhost:8080" in notes
    assert "dmlt-dashboard" not in render_notes("dashboard.enabled=false")
