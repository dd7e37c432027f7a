"""A job's MLflow run: its metrics, its page in the MLflow UI and the model it logged.

A server (http/https tracking URI) is asked over its REST API; one that lives inside the
cluster (`http://<service>.<namespace>.svc...`) through the apiserver's service proxy, so it
works from a laptop. A local store (sqlite:, file paths) is read with MLflow's own client.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ProxyGet = Callable[[str, str, str, str, Mapping[str, str]], bytes]
"""(namespace, service, port, path, query) → body: the apiserver's service proxy."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MlflowRun:
    """What MLflow holds about one run."""

    run_id: str
    tracking_uri: str
    experiment_id: str | None = None
    status: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    model_uri: str | None = None

    @property
    def url(self) -> str | None:
        """The run's page in the MLflow UI (servers only; `mlflow ui` serves a local store)."""
        return run_url(self.tracking_uri, self.experiment_id, self.run_id)


def run_url(tracking_uri: str | None, experiment_id: str | None, run_id: str) -> str | None:
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")) or experiment_id is None:
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def in_cluster_service(tracking_uri: str) -> tuple[str, str, str] | None:
    """(namespace, service, port) of an in-cluster URL like http://svc.ns.svc:5000, else None."""
    parts = urllib.parse.urlsplit(tracking_uri)
    host = parts.hostname or ""
    labels = host.split(".")
    if parts.scheme != "http" or len(labels) < 3 or labels[2] != "svc":
        return None
    return labels[1], labels[0], str(parts.port or 80)


def model_uri_of(run_id: str, tags: Mapping[str, str], model_ids: list[str]) -> str | None:
    """The registered version if the trainer registered one, else the logged model."""
    registered = tags.get("registered_model")
    if registered and "/" in registered:
        name, version = registered.rsplit("/", 1)
        return f"models:/{name}/{version}"
    if model_ids:
        return f"models:/{model_ids[0]}"
    return None


def from_rest(tracking_uri: str, payload: Mapping[str, Any]) -> MlflowRun:
    """A `runs/get` answer → MlflowRun."""
    run = payload.get("run") or {}
    info = run.get("info") or {}
    data = run.get("data") or {}
    tags = {t["key"]: t.get("value", "") for t in data.get("tags") or []}
    model_ids = [
        m["model_id"] for m in (run.get("outputs") or {}).get("model_outputs") or [] if "model_id" in m
    ]
    run_id = info.get("run_id") or info.get("run_uuid") or ""
    return MlflowRun(
        run_id=run_id,
        tracking_uri=tracking_uri,
        experiment_id=info.get("experiment_id"),
        status=info.get("status"),
        metrics={m["key"]: m["value"] for m in data.get("metrics") or [] if "value" in m},
        params={p["key"]: p.get("value", "") for p in data.get("params") or []},
        tags=tags,
        model_uri=model_uri_of(run_id, tags, model_ids),
    )


def fetch_run(tracking_uri: str | None, run_id: str, proxy_get: ProxyGet | None = None) -> MlflowRun:
    """Read run `run_id` from the tracking server or store; raises OSError/ValueError when unreachable."""
    uri = tracking_uri or ""
    query = {"run_id": run_id}
    if uri.startswith(("http://", "https://")):
        service = in_cluster_service(uri)
        if service is not None and proxy_get is not None:
            body = proxy_get(*service, "api/2.0/mlflow/runs/get", query)
        else:
            url = f"{uri.rstrip('/')}/api/2.0/mlflow/runs/get?{urllib.parse.urlencode(query)}"
            with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 - the user's tracking server
                body = response.read()
        return from_rest(uri, json.loads(body))
    return _from_store(uri or None, run_id)


def _from_store(tracking_uri: str | None, run_id: str) -> MlflowRun:
    from mlflow.tracking import MlflowClient

    mlflow_client = MlflowClient(tracking_uri=tracking_uri)
    run = mlflow_client.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    model_ids = [m.model_id for m in getattr(outputs, "model_outputs", None) or []]
    tags = dict(run.data.tags)
    return MlflowRun(
        run_id=run_id,
        tracking_uri=mlflow_client.tracking_uri,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        tags=tags,
        model_uri=model_uri_of(run_id, tags, model_ids),
    )
