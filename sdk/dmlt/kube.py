"""The one module of the client that talks to Kubernetes (the official `kubernetes` client).

Every failure leaves as one of the client's errors with one line to act on: no cluster, no
CRD, operator not running, forbidden, refused at admission, not found.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from dmlt import upstream as up
from dmlt.errors import (
    ClusterUnavailable,
    CrdMissing,
    DmltError,
    Forbidden,
    NotFound,
    OperatorNotRunning,
    Refused,
)

TIMEOUT = (5, 30)
"""(connect, read) seconds of every request."""
PLURALS = {up.KIND: up.PLURAL, up.STUDY_KIND: up.STUDY_PLURAL}
OPERATOR_SELECTOR = "app.kubernetes.io/part-of=dmlt,app.kubernetes.io/component=operator"
INSTALL_HINT = "install it with `helm install dmlt ./helm/dmlt -n dmlt --create-namespace`"


def _message(exc: ApiException) -> str:
    try:
        text = json.loads(exc.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        text = None
    return str(text or exc.reason or exc.status)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn the client's exceptions into the client's one-line errors."""
    try:
        yield
    except ApiException as exc:
        if exc.status == 403:
            raise Forbidden(f"forbidden: {what}: {_message(exc)}") from None
        if exc.status == 404:
            raise NotFound(f"not found: {what}") from None
        if exc.status in (400, 422):
            raise Refused(f"refused by the cluster: {what}: {_message(exc)}") from None
        if exc.status == 409:
            raise DmltError(f"{what}: {_message(exc)}") from None
        if exc.status == 0 or exc.status is None:
            raise ClusterUnavailable(f"cannot reach the cluster ({what}): {exc.reason}") from None
        raise DmltError(f"{what}: {exc.status} {_message(exc)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        host = client.Configuration.get_default_copy().host
        raise ClusterUnavailable(f"cannot reach the cluster at {host} ({what}): {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).split(": ", 1)[-1][:200]


def _env(deployment: Any) -> dict[str, str]:
    return {e.name: e.value for c in deployment.spec.template.spec.containers for e in c.env or []}


@dataclass(frozen=True, slots=True)
class Connection:
    """A configured API client and the namespace of the current kubeconfig context."""

    api_client: client.ApiClient
    namespace: str


def connect(context: str | None = None) -> Connection:
    """The kubeconfig (KUBECONFIG or ~/.kube/config), or the Pod's ServiceAccount inside a Pod."""
    namespace = "default"
    # Read KUBECONFIG now: the client library's own default is taken once, when it is imported.
    config_file = os.environ.get("KUBECONFIG") or None
    try:
        config.load_kube_config(config_file=config_file, context=context)
        contexts, current = config.list_kube_config_contexts(config_file=config_file)
        if context is not None:
            current = next(c for c in contexts if c["name"] == context)
        namespace = (current.get("context") or {}).get("namespace") or "default"
    except Exception as kube_exc:  # noqa: BLE001 - missing file, bad YAML, unknown context ...
        try:
            config.load_incluster_config()
        except config.ConfigException:
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ClusterUnavailable(
                f"no cluster configured: cannot load the kubeconfig {where} ({_reason(kube_exc)}); "
                "set KUBECONFIG, or run with --local"
            ) from None
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as fh:
            namespace = fh.read().strip() or "default"
    return Connection(client.ApiClient(), namespace)


class Kube:
    """Reads and writes of dmlt objects, their Pods, logs and events."""

    def __init__(self, connection: Connection) -> None:
        self.api_client = connection.api_client
        self.default_namespace = connection.namespace
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    # ---- preflight

    def check_crd(self, kind: str) -> None:
        """CrdMissing unless the apiserver serves `kind` (discovery: any user may ask)."""
        plural = PLURALS[kind]
        try:
            with translated(f"discovering {up.GROUP}/{up.VERSION}"):
                resources = client.CustomObjectsApi(self.api_client).get_api_resources(
                    up.GROUP, up.VERSION, _request_timeout=TIMEOUT
                )
        except NotFound:
            resources = None
        names = {r.name for r in (resources.resources if resources else [])}
        if plural not in names:
            raise CrdMissing(
                f"the cluster has no {kind} resource ({plural}.{up.GROUP}): the dmlt chart is not "
                f"installed; {INSTALL_HINT}"
            )

    def operator_deployments(self, namespace: str) -> list[Any] | None:
        """The dmlt operator Deployments that serve `namespace`; None when the user may not list
        Deployments cluster-wide (then nothing is known)."""
        apps = client.AppsV1Api(self.api_client)
        try:
            with translated("listing the dmlt operator Deployments"):
                deployments = apps.list_deployment_for_all_namespaces(
                    label_selector=OPERATOR_SELECTOR, _request_timeout=TIMEOUT
                ).items
        except Forbidden:
            return None
        serving = []
        for dep in deployments:
            env = _env(dep)
            served = [n for n in (env.get("DMLT_NAMESPACES") or "").split(",") if n]
            if not served or namespace in served:
                serving.append(dep)
        return serving

    def check_operator(self, namespace: str) -> None:
        """OperatorNotRunning unless a ready dmlt operator serves `namespace` (when the user may
        not look, following the object reports an operator that never writes a status)."""
        serving = self.operator_deployments(namespace)
        if serving is None:
            return
        if not serving:
            raise OperatorNotRunning(
                f"no dmlt operator serves namespace {namespace!r}: nothing would run the job; {INSTALL_HINT}"
            )
        if not any((dep.status.ready_replicas or 0) > 0 for dep in serving):
            names = ", ".join(f"{d.metadata.namespace}/{d.metadata.name}" for d in serving)
            raise OperatorNotRunning(f"the dmlt operator ({names}) is not running: no ready replica")

    def operator_tracking_uri(self, namespace: str) -> str | None:
        """The MLflow server the operator serving `namespace` gives jobs without their own."""
        for dep in self.operator_deployments(namespace) or []:
            uri = _env(dep).get("DMLT_DEFAULT_TRACKING_URI")
            if uri:
                return uri
        return None

    # ---- dmlt objects

    def create(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        ns = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        with translated(f"creating {kind} {ns}/{name}"):
            return self.custom.create_namespaced_custom_object(
                up.GROUP, up.VERSION, ns, PLURALS[kind], dict(body), _request_timeout=TIMEOUT
            )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with translated(f"{kind} {namespace}/{name}"):
            return self.custom.get_namespaced_custom_object(
                up.GROUP, up.VERSION, namespace, PLURALS[kind], name, _request_timeout=TIMEOUT
            )

    def find(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, namespace, name)
        except NotFound:
            return None

    def list(self, kind: str, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` (None: every namespace)."""
        plural = PLURALS[kind]
        kwargs: dict[str, Any] = {"_request_timeout": TIMEOUT}
        if selector:
            kwargs["label_selector"] = selector
        with translated(f"listing {plural} in {namespace or 'all namespaces'}"):
            if namespace is None:
                listed = self.custom.list_cluster_custom_object(up.GROUP, up.VERSION, plural, **kwargs)
            else:
                listed = self.custom.list_namespaced_custom_object(
                    up.GROUP, up.VERSION, namespace, plural, **kwargs
                )
        return list(listed.get("items") or [])

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with translated(f"deleting {kind} {namespace}/{name}"):
            self.custom.delete_namespaced_custom_object(
                up.GROUP, up.VERSION, namespace, PLURALS[kind], name, _request_timeout=TIMEOUT
            )

    # ---- Pods, logs, events

    def pods(self, namespace: str, selector: str) -> list[client.V1Pod]:
        with translated(f"listing Pods in {namespace}"):
            return self.core.list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=TIMEOUT
            ).items

    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        """The trainer container's log, each line prefixed with the kubelet's timestamp."""
        kwargs: dict[str, Any] = {"timestamps": True, "_preload_content": False, "_request_timeout": (5, 60)}
        if since_seconds is not None:
            kwargs["since_seconds"] = since_seconds
        with translated(f"log of Pod {namespace}/{pod}"):
            response = self.core.read_namespaced_pod_log(pod, namespace, container="trainer", **kwargs)
            return response.data.decode("utf-8", errors="replace")

    def events(self, namespace: str, kind: str, name: str) -> list[client.CoreV1Event]:
        selector = f"involvedObject.name={name},involvedObject.kind={kind}"
        with translated(f"events of {kind} {namespace}/{name}"):
            events = self.core.list_namespaced_event(
                namespace, field_selector=selector, _request_timeout=TIMEOUT
            ).items
        return sorted(
            events, key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
        )

    def proxy_get(
        self, namespace: str, service: str, port: str, path: str, query: Mapping[str, str]
    ) -> bytes:
        """GET through the apiserver's service proxy (an in-cluster HTTP service, from outside)."""
        method, url, headers, body, _ = self.api_client.param_serialize(
            "GET",
            f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path}",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        with translated(f"service {namespace}/{service} through the apiserver proxy"):
            response = self.api_client.call_api(
                method, url, header_params=headers, body=body, _request_timeout=TIMEOUT
            )
            data = response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason, body=data)
        return data
