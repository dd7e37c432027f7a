"""The in-cluster MLflow REST API for the e2e tests: through the apiserver's service proxy, or
(where that path is refused) from a one-shot Pod in the namespace."""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes.client.rest import ApiException

from tests.helpers.kube import describe_pod, pod_log, raw_get, raw_request
from tests.helpers.names import (
    TRAINER_UID,
)
from tests.helpers.waiting import wait_for

if TYPE_CHECKING:
    from tests.helpers.chart import Dmlt


MLFLOW_POD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, urllib.parse, urllib.request
    url = os.environ["URL"]
    for attempt in range(30):
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                print("MLFLOW-JSON " + json.dumps(json.loads(resp.read())), flush=True)
                sys.exit(0)
        except Exception as exc:
            print("retry:", exc, file=sys.stderr, flush=True)
            time.sleep(2)
    sys.exit("MLflow unreachable: " + url)
    """
)


def mlflow_get(dmlt: Dmlt, path: str, query: Mapping[str, str], port: str = "http") -> dict[str, Any]:
    """GET the in-cluster MLflow REST API (e.g. `api/2.0/mlflow/runs/get`), parsed JSON.

    Through the apiserver's service proxy; if the proxy path is refused (some clusters block
    it), from a one-shot Pod in the namespace instead.
    """
    try:
        data = raw_get(
            dmlt.api_client,
            f"/api/v1/namespaces/{dmlt.namespace}/services/{dmlt.mlflow_service}:{port}/proxy/{path}",
            query,
        )
        return json.loads(data)
    except (ApiException, ValueError) as exc:
        proxy_error = exc
        print(f"MLflow through the service proxy failed ({exc}); asking from a Pod instead")
    return _mlflow_get_from_pod(dmlt, path, query, proxy_error)


def _mlflow_get_from_pod(dmlt: Dmlt, path: str, query: Mapping[str, str], why: Exception) -> dict[str, Any]:
    from urllib.parse import urlencode

    url = f"http://{dmlt.mlflow_service}.{dmlt.namespace}.svc:5000/{path}?{urlencode(dict(query))}"
    name = f"mlflow-query-{uuid.uuid4().hex[:8]}"
    dmlt.core.create_namespaced_pod(
        dmlt.namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"dmlt-e2e": "true"}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": TRAINER_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "query",
                        "image": os.environ.get("DMLT_TRAINER_IMAGE", "dmlt-trainer:dev"),
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-c", MLFLOW_POD_SCRIPT],
                        "env": [{"name": "URL", "value": url}],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                    }
                ],
            },
        },
    )
    try:
        phase = wait_for(
            lambda: (
                (p := dmlt.core.read_namespaced_pod(name, dmlt.namespace).status.phase)
                in ("Succeeded", "Failed")
                and p
            ),
            240,
            f"Pod {name} querying MLflow ({url}; the service proxy failed: {why})",
            diag=lambda: describe_pod(dmlt.core, dmlt.namespace, name),
        )
        log = pod_log(dmlt.core, dmlt.namespace, name, container="query")
        assert phase == "Succeeded", f"MLflow query {url} failed (service proxy failed too: {why}):\n{log}"
        for line in log.splitlines():
            if line.startswith("MLFLOW-JSON "):
                return json.loads(line[len("MLFLOW-JSON ") :])
        raise AssertionError(f"no MLflow answer in the log of {name}:\n{log}")
    finally:
        dmlt.core.delete_namespaced_pod(name, dmlt.namespace, grace_period_seconds=0)


def mlflow_search_runs(dmlt: Dmlt, experiment_ids: list[str], filter_string: str) -> list[dict[str, Any]]:
    """`api/2.0/mlflow/runs/search` (a POST) through the apiserver's service proxy; every run."""
    service = f"/api/v1/namespaces/{dmlt.namespace}/services/{dmlt.mlflow_service}:http"
    path = f"{service}/proxy/api/2.0/mlflow/runs/search"
    runs: list[dict[str, Any]] = []
    token = None
    while True:
        body = {"experiment_ids": experiment_ids, "filter": filter_string, "max_results": 500}
        if token:
            body["page_token"] = token
        page = json.loads(raw_request(dmlt.api_client, "POST", path, body=body))
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs
