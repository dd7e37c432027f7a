"""The chart's side of the progress receiver (issue 15, slice 5): a Service on every operator
replica, the TLS Secret mounted, the env, and RBAC: tokenreviews instead of pods/log."""

from __future__ import annotations

import pytest

from tests.helpers.helm_chart import render

pytestmark = pytest.mark.unit


def granted(objs):
    return {
        (group, resource, verb)
        for rule in objs[("ClusterRole", "dmlt-operator")]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def operator_container(objs):
    return objs[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]["containers"][0]


def test_with_a_certificate_the_receiver_serves_on_every_replica():
    objs = render("operator.progress.tls.existingSecret=my-tls")
    svc = objs[("Service", "dmlt-operator-progress")]
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "dmlt", "app.kubernetes.io/instance": "dmlt", "app.kubernetes.io/component": "operator",
    }  # fmt: skip
    assert svc["spec"]["ports"] == [
        {"name": "progress", "port": 8443, "targetPort": "progress", "protocol": "TCP"}
    ]
    c = operator_container(objs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DMLT_PROGRESS_SERVICE_URL"] == "https://dmlt-operator-progress.dmlt.svc:8443"
    assert env["DMLT_PROGRESS_TLS_DIR"] == "/etc/dmlt/progress-tls"
    assert (env["DMLT_PROGRESS_PORT"], env["DMLT_PROGRESS_TOKEN_EXPIRATION_SECONDS"]) == ("8443", "3600")
    assert {"name": "progress", "containerPort": 8443, "protocol": "TCP"} in c["ports"]
    volumes = objs[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "progress-tls", "secret": {"secretName": "my-tls"}} in volumes
    assert not any(kind == "Secret" and "progress" in name for kind, name in objs)  # the user's own
    rights = granted(objs)
    assert ("authentication.k8s.io", "tokenreviews", "create") in rights
    assert ("dmlt.io", "trainingjobs/status", "patch") in rights
    assert not any(r == "pods/log" for _, r, _ in rights)


@pytest.mark.parametrize("sets", [(), ("operator.progress.enabled=false",)])
def test_without_a_cluster_or_when_off_progress_comes_from_logs(sets):
    """helm template (manifests/) cannot keep a generated key stable: no receiver, log fallback."""
    objs = render(*sets, *(["operator.progress.tls.existingSecret=x"] if sets else []))
    assert ("Service", "dmlt-operator-progress") not in objs
    env = {e["name"] for e in operator_container(objs)["env"]}
    assert not any(name.startswith("DMLT_PROGRESS_") for name in env)
    rights = granted(objs)
    assert ("", "pods/log", "get") in rights
    assert not any(r == "tokenreviews" for _, r, _ in rights)
