"""Kubernetes API access for the e2e tests: raw requests (Table views, service proxy, CRDs),
Pod logs and the trainer's JSON lines in them, CRDs, storage classes, Pod descriptions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helpers.names import (
    CRD_FILE,
    LABEL_ATTEMPT,
    TABLE_ACCEPT,
    TRAINER_CONTAINER,
)
from tests.helpers.waiting import wait_for


def parse_k8s_time(text: str) -> datetime:
    """RFC 3339 with up to nanoseconds (log timestamps) → aware datetime (microseconds)."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def json_events(text: str, event: str | None = None) -> list[dict[str, Any]]:
    """The trainer's JSON lines (`{"event": ...}`) in a log, optionally only one kind."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj and (event is None or obj["event"] == event):
            out.append(obj)
    return out


def pod_log(
    core: client.CoreV1Api,
    ns: str,
    name: str,
    *,
    container: str | None = TRAINER_CONTAINER,
    timestamps: bool = False,
    tail_lines: int | None = None,
) -> str:
    """A Pod's log as text. Raw bytes: the client would json-decode a one-document log."""
    kwargs: dict[str, Any] = {"timestamps": timestamps, "_preload_content": False, "_request_timeout": 60}
    if container:
        kwargs["container"] = container
    if tail_lines:
        kwargs["tail_lines"] = tail_lines
    response = core.read_namespaced_pod_log(name, ns, **kwargs)
    return response.data.decode("utf-8", errors="replace")


def try_pod_log(core: client.CoreV1Api, ns: str, name: str, **kwargs: Any) -> str:
    try:
        return pod_log(core, ns, name, **kwargs)
    except ApiException as exc:
        return f"<no log of {name}: {exc.status} {exc.reason}>"


def timestamped_events(text: str, event: str | None = None) -> list[tuple[datetime, dict[str, Any]]]:
    """JSON events of a log read with timestamps=True, each with the kubelet's timestamp."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        found = json_events(rest, event)
        if found:
            try:
                out.append((parse_k8s_time(stamp), found[0]))
            except ValueError:
                continue
    return out


def raw_request(
    api_client: client.ApiClient,
    method: str,
    path: str,
    query: Mapping[str, str] | None = None,
    *,
    body: Any = None,
    accept: str = "application/json",
    timeout: float = 30,
) -> bytes:
    """One apiserver request (Table views, service proxy, whole CRDs) without the client's
    models; the response body as bytes; ApiException unless 2xx."""
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = "application/json"
    method, url, headers, body, _ = api_client.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(
            status=response.status, reason=response.reason, body=data.decode("utf-8", errors="replace")
        )
    return data


def raw_get(
    api_client: client.ApiClient,
    path: str,
    query: Mapping[str, str] | None = None,
    *,
    accept: str = "application/json",
    timeout: float = 30,
) -> bytes:
    return raw_request(api_client, "GET", path, query, accept=accept, timeout=timeout)


def default_storage_class(api_client: client.ApiClient) -> str | None:
    classes = client.StorageV1Api(api_client).list_storage_class().items
    for sc in classes:
        annotations = sc.metadata.annotations or {}
        if (
            annotations.get("storageclass.kubernetes.io/is-default-class") == "true"
            or annotations.get("storageclass.beta.kubernetes.io/is-default-class") == "true"
        ):
            return sc.metadata.name
    return None


def ready_node(api_client: client.ApiClient) -> str:
    nodes = client.CoreV1Api(api_client).list_node().items
    for node in nodes:
        if node.spec.unschedulable:
            continue
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
            return node.metadata.name
    raise AssertionError(f"no Ready, schedulable node among {[n.metadata.name for n in nodes]}")


def apply_crd(api_client: client.ApiClient, crd_file: Path = CRD_FILE, timeout: float = 60) -> None:
    """Create or replace a CRD from the working tree (Helm installs crds/ once, never upgrades).

    Raw requests: the CRD's schema need not round-trip through the client's models."""
    body = yaml.safe_load(crd_file.read_text())
    name = body["metadata"]["name"]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        current = json.loads(raw_get(api_client, f"{path}/{name}"))
    except ApiException as exc:
        if exc.status != 404:
            raise
        raw_request(api_client, "POST", path, body=body)
    else:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        raw_request(api_client, "PUT", f"{path}/{name}", body=body)

    def established() -> bool:
        crd = json.loads(raw_get(api_client, f"{path}/{name}"))
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, timeout, f"CRD {name} to be Established")


def table_row(api_client: client.ApiClient, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(printer columns as `kubectl get` shows them, the object) of one object, in one read."""
    data = raw_get(api_client, path, {"includeObject": "Object"}, accept=TABLE_ACCEPT)
    table = json.loads(data)
    names = [c["name"] for c in table["columnDefinitions"]]
    row = table["rows"][0]
    return dict(zip(names, row["cells"], strict=False)), row["object"]


def require_default_storage_class(api_client: client.ApiClient) -> str:
    """The cluster's default StorageClass: the chart's claims and examples/ddp.yaml's bind
    through it, as they do for a user. None is a failure that says how to get one."""
    name = default_storage_class(api_client)
    assert name, (
        "the cluster has no default StorageClass: the chart's MLflow and PostgreSQL claims and "
        "examples/ddp.yaml's checkpoint claim would stay Pending. `hack/cluster.sh up` installs "
        "local-path-provisioner as the default class (kind ships it too)."
    )
    return name


def namespace_alive(core: client.CoreV1Api, ns: str | None) -> bool:
    if not ns:
        return False
    try:
        return core.read_namespace(ns).status.phase != "Terminating"
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def describe_pod(core: client.CoreV1Api, ns: str, name: str) -> str:
    try:
        pod = core.read_namespaced_pod(name, ns)
    except ApiException as exc:
        return f"Pod {name}: {exc.status} {exc.reason}"
    states = []
    for cs in pod.status.container_statuses or []:
        state = cs.state
        if state.running:
            states.append(f"{cs.name}: running since {state.running.started_at}")
        elif state.terminated:
            t = state.terminated
            states.append(f"{cs.name}: terminated {t.reason} exit {t.exit_code} {t.message or ''}".strip())
        elif state.waiting:
            states.append(f"{cs.name}: waiting {state.waiting.reason} {state.waiting.message or ''}".strip())
    conds = [
        f"{c.type}={c.status}{'(' + c.reason + ')' if c.reason else ''}" for c in pod.status.conditions or []
    ]
    labels = pod.metadata.labels or {}
    return (
        f"Pod {name} attempt={labels.get(LABEL_ATTEMPT)} phase={pod.status.phase} "
        f"deleting={bool(pod.metadata.deletion_timestamp)} {'; '.join(states)} [{' '.join(conds)}]"
    )


def describe_namespace_pods(core: client.CoreV1Api, ns: str) -> str:
    try:
        pods = core.list_namespaced_pod(ns).items
        lines = [describe_pod(core, ns, p.metadata.name) for p in pods]
        events = core.list_namespaced_event(ns).items
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the failure they explain
        return f"<cannot describe the Pods in {ns}: {exc}>"
    events.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    lines += [
        f"event {e.type} {e.reason} {e.involved_object.kind}/{e.involved_object.name}: {e.message}"
        for e in events[-30:]
    ]
    return "\n".join(lines)
