"""The chart's TuningStudy parts: PostgreSQL (StatefulSet, Services, Secret), the operator's
storage settings, RBAC, and the CRD; rendered with `helm template` (tests/unit/test_helm_chart.py
holds the chart-wide checks: lint, documented strict values, the TrainingJob parts)."""

from __future__ import annotations

import re

import pytest
import yaml
from dmlt_operator.core.config import OperatorConfig

from tests.helpers.helm_chart import CHART, helm, render

pytestmark = pytest.mark.unit

PG = "dmlt-postgresql"


POD_FIELDS = {"metadata.namespace": "dmlt", "metadata.name": "dmlt-operator-0"}
"""The downward API's values for an operator Pod in the release namespace."""


def operator_env(objs) -> dict[str, str]:
    (c,) = objs[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]["containers"]
    return {
        e["name"]: e["value"] if "value" in e else POD_FIELDS[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in c["env"]
    }


def test_postgresql_statefulset():
    objs = render()
    sts = objs[("StatefulSet", PG)]
    spec = sts["spec"]
    assert spec["replicas"] == 1 and spec["serviceName"] == f"{PG}-hl"
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    (c,) = pod["containers"]
    assert c["image"] == "dmlt-postgres:dev" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    env = {e["name"]: e for e in c["env"]}
    for name, key in (
        ("POSTGRES_USER", "username"),
        ("POSTGRES_PASSWORD", "password"),
        ("POSTGRES_DB", "database"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": PG, "key": key}
    assert env["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready" and "--username=dmlt" in probe and "--dbname=optuna" in probe
    assert c["startupProbe"]["exec"]["command"] == probe and c["livenessProbe"]["exec"]["command"] == probe
    assert c["args"] == ["postgres", "-c", "max_connections=200"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"data": "/var/lib/postgresql/data", "run": "/var/run/postgresql", "tmp": "/tmp"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert "helm.sh/chart" not in claim["metadata"]["labels"]  # claim templates are immutable
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class


def test_postgresql_services():
    objs = render()
    svc = objs[("Service", PG)]
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 5432
    headless = objs[("Service", f"{PG}-hl")]
    assert headless["spec"]["clusterIP"] == "None"
    selector = objs[("StatefulSet", PG)]["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == headless["spec"]["selector"] == selector


def test_postgresql_secret_holds_the_storage_url():
    objs = render()
    secret = objs[("Secret", PG)]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = secret["stringData"]
    assert (data["username"], data["database"]) == ("dmlt", "optuna")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["password"])
    assert data["url"] == f"postgresql+psycopg2://dmlt:{data['password']}@{PG}.dmlt.svc:5432/optuna"
    # Rendered without a cluster the password is stable (manifests/ can be re-applied) ...
    assert render()[("Secret", PG)]["stringData"]["password"] == data["password"]
    # ... and values can set it.
    own = render("postgresql.auth.password=s3cret-pw")[("Secret", PG)]["stringData"]
    assert own["password"] == "s3cret-pw" and ":s3cret-pw@" in own["url"]


def test_the_password_lookup_keeps_an_existing_secret():
    """`helm install/upgrade` on a cluster: the Secret of an earlier install wins (it must match
    the retained data volume). helm template cannot look up, so check the template's logic."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers[helpers.index('define "dmlt.postgresql.password"') :]
    assert 'lookup "v1" "Secret" .Release.Namespace' in block
    assert 'index $existing.data "password" | b64dec' in block
    assert "randAlphaNum 32" in block


def test_operator_gets_the_default_storage_secret():
    env = operator_env(render())
    assert env["DMLT_DEFAULT_STORAGE_SECRET"] == PG and env["DMLT_DEFAULT_STORAGE_SECRET_KEY"] == "url"
    assert env["DMLT_STUDY_RECONCILE_INTERVAL_SECONDS"] == "5"
    cfg = OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith("DMLT_")})
    assert cfg.default_storage_secret == PG and cfg.study_reconcile_interval_s == 5.0


def test_an_existing_database_instead():
    objs = render("postgresql.enabled=false", "postgresql.existingSecret=optuna-db",
                  "postgresql.existingSecretKey=dsn")  # fmt: skip
    assert not any(name.startswith(PG) for _, name in objs)
    env = operator_env(objs)
    assert (
        env["DMLT_DEFAULT_STORAGE_SECRET"] == "optuna-db" and env["DMLT_DEFAULT_STORAGE_SECRET_KEY"] == "dsn"
    )
    none = operator_env(render("postgresql.enabled=false"))
    assert none["DMLT_DEFAULT_STORAGE_SECRET"] == ""


def test_existing_secret_with_the_charts_database_is_an_error():
    out = helm(
        "template", "dmlt", str(CHART), "--kube-version", "1.34.0", "--set", "postgresql.existingSecret=x"
    )
    assert out.returncode != 0 and "postgresql.enabled=false" in out.stderr


def test_persistence_options():
    objs = render("postgresql.persistence.enabled=false")
    sts = objs[("StatefulSet", PG)]["spec"]
    assert "volumeClaimTemplates" not in sts
    vols = {v["name"]: v for v in sts["template"]["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}
    none = render("postgresql.persistence.storageClassName=-")[("StatefulSet", PG)]["spec"]
    assert none["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""
    fast = render("postgresql.persistence.storageClassName=fast")[("StatefulSet", PG)]["spec"]
    assert fast["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"


def test_bad_credentials_are_rejected_by_the_values_schema():
    out = helm(
        "template", "dmlt", str(CHART), "--kube-version", "1.34.0", "--set", "postgresql.auth.password=a@b"
    )
    assert out.returncode != 0 and "password" in out.stderr


def test_rbac_for_studies_is_least_privilege():
    role = render()[("ClusterRole", "dmlt-operator")]
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    needed = {
        ("dmlt.io", "tuningstudies", "watch"), ("dmlt.io", "tuningstudies", "list"),
        ("dmlt.io", "tuningstudies", "patch"), ("dmlt.io", "tuningstudies/status", "patch"),
        ("dmlt.io", "tuningstudies/finalizers", "update"),
        ("dmlt.io", "trainingjobs", "create"), ("dmlt.io", "trainingjobs", "list"),
        ("dmlt.io", "trainingjobs", "watch"), ("dmlt.io", "trainingjobs", "delete"),
        ("", "secrets", "get"),
    }  # fmt: skip
    assert needed <= granted
    assert not any(r == "secrets" and v != "get" for _, r, v in granted)
    assert not any(r == "tuningstudies" and v in ("create", "delete", "update") for _, r, v in granted)


def test_both_crds_are_installed():
    out = helm("template", "dmlt", str(CHART), "--include-crds", "--kube-version", "1.34.0")
    assert out.returncode == 0, out.stderr
    crds = [
        d["metadata"]["name"]
        for d in yaml.safe_load_all(out.stdout)
        if d and d["kind"] == "CustomResourceDefinition"
    ]
    assert sorted(crds) == ["trainingjobs.dmlt.io", "tuningstudies.dmlt.io"]
