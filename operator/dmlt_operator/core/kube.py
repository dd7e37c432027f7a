"""The one module that talks to the Kubernetes API.

Every write is idempotent: creating something that exists (409) or deleting something that is
gone (404) counts as success, so a handler interrupted at any point can simply run again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from dmlt_operator.core.leader import LeaseRecord, lease_body, lease_record
from dmlt_operator.core.objects import GROUP, JOB_PLURAL, STUDY_PLURAL, VERSION
from dmlt_operator.core.ratelimit import TokenBucket, retry_after_seconds

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
"""Kueue's Workloads (trainingjob/queueing.py builds them)."""

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (5, 30)
"""(connect, read) seconds for every call: a hung apiserver must not hang a reconcile."""
VISIBILITY_TIMEOUT = (2, 5)
"""(connect, read) seconds for Kueue's visibility API: a queue position is nice to have, never
worth holding a worker."""


THROTTLE_RETRIES = 3
"""How often a write the apiserver answered 429 (Too Many Requests) is tried again, each time
after its Retry-After, before the error goes to the caller."""


def load_config(pool_maxsize: int | None = None) -> None:
    """In a Pod: the ServiceAccount; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config).
    `pool_maxsize`: connections kept per host, at least one per thread that calls the API
    (client-python's default, cpu_count * 5, drops the rest and re-handshakes TLS)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    if pool_maxsize:
        cfg = client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = pool_maxsize
        client.Configuration.set_default(cfg)


class EventSink(Protocol):
    def post_event(self, body: Any, type_: str, reason: str, message: str) -> None: ...


class KueueKube(Protocol):
    """Kueue's side of a queued TrainingJob: its Workload, the cluster-scoped objects admission
    names, and the namespace's labels (for requireQueueName)."""

    def create_workload(self, workload: dict[str, Any]) -> bool: ...
    def patch_workload(
        self, namespace: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> bool: ...
    def read_cluster_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None: ...
    def read_namespace_labels(self, name: str) -> dict[str, str]: ...
    def delete_workload(self, namespace: str, name: str, uid: str | None = None) -> bool: ...
    def read_pending_workloads(self, path: str) -> dict[str, Any]: ...


class TrainingJobKube(EventSink, KueueKube, Protocol):
    """The calls the TrainingJob handlers make (Kube makes them; unit tests fake them)."""

    def create_pod(self, pod: dict[str, Any]) -> bool: ...
    def create_service(self, service: dict[str, Any]) -> bool: ...
    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> bool: ...
    def read_pod_log(
        self, namespace: str, name: str, container: str, tail_lines: int, limit_bytes: int
    ) -> str | None: ...
    def delete_trainingjob(self, namespace: str, name: str) -> bool: ...
    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None: ...


class StaleRead(Exception):
    """A status write carried the resourceVersion its plan was made from, and the object has
    changed since (409): plan again from a fresher read."""


class TuningStudyKube(EventSink, Protocol):
    """The calls the TuningStudy handlers make (Kube makes them; unit tests fake them)."""

    def read_secret_value(self, namespace: str, name: str, key: str) -> str | None: ...
    def create_trainingjob(self, job: dict[str, Any]) -> bool: ...
    def list_trainingjobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...
    def delete_trainingjob(self, namespace: str, name: str) -> bool: ...
    def patch_study_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None: ...


class Kube:
    """Thin, idempotent wrappers over the calls the operator makes (every Protocol above)."""

    def __init__(
        self, api_client: client.ApiClient | None = None, limiter: TokenBucket | None = None
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.limiter = limiter

    def _write(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One mutating call, within the client-side rate limit; a 429 pauses every writer for
        its Retry-After and is tried again (THROTTLE_RETRIES times)."""
        for tries_left in range(THROTTLE_RETRIES, -1, -1):
            if self.limiter is not None:
                self.limiter.acquire()
            try:
                return call(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
            except ApiException as exc:
                if exc.status != 429 or tries_left == 0:
                    raise
                wait = retry_after_seconds(exc.headers)
                log.warning("The apiserver throttles the operator (429): waiting %.1fs", wait)
                if self.limiter is not None:
                    self.limiter.pause(wait)
                else:
                    time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- children

    def create_pod(self, pod: dict[str, Any]) -> bool:
        """Create the Pod; False if one of that name already exists."""
        return self._create(self.core.create_namespaced_pod, pod)

    def create_service(self, service: dict[str, Any]) -> bool:
        """Create the Service; False if one of that name already exists."""
        return self._create(self.core.create_namespaced_service, service)

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete the Pod (only the one with this uid, when given); False if already gone."""
        body = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self._write(self.core.delete_namespaced_pod, name, namespace, body=body)
        except ApiException as exc:
            # 404: gone already; 409: the uid precondition failed, i.e. a newer Pod of that name.
            if exc.status in (404, 409):
                return False
            raise
        return True

    def read_pod_log(
        self, namespace: str, name: str, container: str, tail_lines: int, limit_bytes: int
    ) -> str | None:
        """The last lines of a container's log; None when there is none (yet, or any more)."""
        try:
            # Raw bytes: the client would otherwise json-decode a log that happens to be one
            # JSON document and hand back its Python repr.
            response = self.core.read_namespaced_pod_log(
                name,
                namespace,
                container=container,
                tail_lines=tail_lines,
                limit_bytes=limit_bytes,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            return response.data.decode("utf-8", errors="replace")
        except ApiException as exc:
            # 400: the container is not running yet; 404: the Pod is gone.
            if exc.status in (400, 404):
                return None
            raise

    # ---- trial TrainingJobs of a TuningStudy

    def create_trainingjob(self, job: dict[str, Any]) -> bool:
        """Create the TrainingJob; False if one of that name already exists."""
        meta = job["metadata"]
        try:
            self._write(
                self.custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                meta["namespace"],
                JOB_PLURAL,
                job,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def list_trainingjobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The TrainingJobs of a namespace that match the selector (a fresh read, not a cache)."""
        listed = self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            JOB_PLURAL,
            label_selector=label_selector,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return list(listed.get("items") or [])

    def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded; None when the Secret or the key is missing."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        if raw is None:
            return None
        try:
            return base64.b64decode(raw).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            return None

    # ---- Kueue

    def create_workload(self, workload: dict[str, Any]) -> bool:
        """Create the job's Kueue Workload; False if one of that name already exists."""
        meta = workload["metadata"]
        group, version = workload["apiVersion"].split("/")
        try:
            self._write(
                self.custom.create_namespaced_custom_object,
                group, version, meta["namespace"], "workloads", workload,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def patch_workload(self, namespace: str, name: str, patch: dict[str, Any], status: bool = False) -> bool:
        """Merge-patch the Workload (or its /status); False when it is gone or changed since
        the resourceVersion the patch carries (its watch event brings the new version)."""
        call = (
            self.custom.patch_namespaced_custom_object_status
            if status
            else self.custom.patch_namespaced_custom_object
        )
        return self._write_unless_gone(
            call, KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", name, patch,
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    def read_cluster_object(self, group: str, version: str, plural: str, name: str) -> dict[str, Any] | None:
        """A cluster-scoped custom object (a ResourceFlavor, a WorkloadPriorityClass); None if absent."""
        try:
            return self.custom.get_cluster_custom_object(
                group, version, plural, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_workload(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete the job's Workload (only that object, by `uid`: not a new one of the same
        name); False when it is gone already or is another one."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid) if uid else None)
        return self._write_unless_gone(
            self.custom.delete_namespaced_custom_object,
            KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", name, body=options,
        )  # fmt: skip

    def read_pending_workloads(self, path: str) -> dict[str, Any]:
        """GET a path of Kueue's visibility API (admission.pending_workloads_path): an aggregated
        API, not a custom resource, hence the plain request. Raises ApiException as any read."""
        api = self.custom.api_client
        request = api.param_serialize(
            "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
        )
        response = api.call_api(*request, _request_timeout=VISIBILITY_TIMEOUT)
        response.read()
        text = response.data.decode("utf-8", "replace") if response.data else ""
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        return json.loads(text or "{}")

    def read_namespace_labels(self, name: str) -> dict[str, str]:
        namespace = self.core.read_namespace(name, _request_timeout=REQUEST_TIMEOUT)
        return dict(namespace.metadata.labels or {})

    # ---- the job itself

    def delete_trainingjob(self, namespace: str, name: str) -> bool:
        try:
            self._write(
                self.custom.delete_namespaced_custom_object,
                GROUP, VERSION, namespace, JOB_PLURAL, name, propagation_policy="Background",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """Merge-patch the job's /status (keys set to None are removed); the job as written, None
        when it is gone. With `resource_version` the write applies only to that version of the
        job, else StaleRead."""
        return self._patch_status(JOB_PLURAL, namespace, name, status, resource_version)

    def patch_study_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """patch_status for a TuningStudy."""
        return self._patch_status(STUDY_PLURAL, namespace, name, status, resource_version)

    def _patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return self._write(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, plural, name, body,
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise StaleRead(
                    f"{plural} {namespace}/{name} changed since version {resource_version}"
                ) from None
            raise

    @staticmethod
    def post_event(body: Any, type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the object (posted by kopf in the background)."""
        kopf.event(body, type=type_, reason=reason, message=message[:1024])

    # ---- helpers

    def _write_unless_gone(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """A write that may find its object gone (404) or replaced (409): False then."""
        try:
            self._write(call, *args, **kwargs)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def _create(self, create: Any, obj: dict[str, Any]) -> bool:
        """Create `obj`. The reply is read as bytes and dropped: the client would otherwise turn
        it into model objects (milliseconds of CPU per Pod) that nobody looks at."""
        try:
            reply = self._write(create, obj["metadata"]["namespace"], obj, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        if reply is not None:
            reply.read()
            reply.release_conn()
        return True


class LeaseApi:
    """The Lease of leader election (core/leader.py's `LeaseStore`), on a client of its own with
    short timeouts: a renewal must not wait behind the reconcilers' calls."""

    def __init__(
        self, namespace: str, name: str, timeout_s: float, api_client: client.ApiClient | None = None
    ) -> None:
        self.api = client.CoordinationV1Api(api_client or client.ApiClient())
        self.namespace, self.name = namespace, name
        self.timeout = (timeout_s, timeout_s)

    def read(self) -> LeaseRecord | None:
        try:
            resp = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease_record(json.loads(resp.data))

    def write(self, lease: LeaseRecord) -> LeaseRecord | None:
        body = lease_body(self.namespace, self.name, lease)
        try:
            if lease.resource_version:
                resp = self.api.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=self.timeout, _preload_content=False
                )
            else:
                resp = self.api.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self.timeout, _preload_content=False
                )
        except ApiException as exc:
            if exc.status == 409:  # changed (or created) by another replica since we read it
                return None
            raise
        return lease_record(json.loads(resp.data))

    def watch(self, resource_version: str, timeout_s: float) -> Iterator[LeaseRecord]:
        stream = watch.Watch().stream(
            self.api.list_namespaced_lease,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=resource_version or None,
            timeout_seconds=int(timeout_s),
            _request_timeout=(self.timeout[0], timeout_s + 30),
        )
        for event in stream:
            if event["type"] in ("ADDED", "MODIFIED"):
                yield lease_record(event["raw_object"])
            elif event["type"] == "DELETED":
                yield LeaseRecord()  # gone: free to take


@dataclass(frozen=True, slots=True)
class Review:
    """What a TokenReview answered: status.authenticated, status.audiences, status.user."""

    authenticated: bool
    audiences: tuple[str, ...] = ()
    username: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class ProgressApi:
    """The progress receiver's two calls (trainingjob/progress_server.py's `ProgressKube`), on a
    client of its own: a push must not wait behind the reconcilers' calls."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        api_client = api_client or client.ApiClient()
        self.auth = client.AuthenticationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def review_token(self, token: str, audience: str) -> Review:
        """A TokenReview of `token` for `audience` (status.audiences says which it is valid for)."""
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[audience]))
        status = self.auth.create_token_review(review, _request_timeout=REQUEST_TIMEOUT).status
        user = status.user if status is not None else None
        return Review(
            authenticated=bool(status is not None and status.authenticated),
            audiences=tuple((status.audiences if status is not None else None) or ()),
            username=(user.username if user is not None else None) or "",
            extra={k: tuple(v or ()) for k, v in ((user.extra if user is not None else None) or {}).items()},
        )

    def patch_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> bool:
        """Set these status keys of the job with this uid; False when it is gone or was recreated
        under its name. A JSON patch whose first op tests the uid: the status subresource ignores
        metadata in a merge patch, so a uid there would guard nothing (tests/integration/
        test_progress_apiserver.py)."""
        ops = [{"op": "test", "path": "/metadata/uid", "value": uid}]
        ops += [{"op": "add", "path": f"/status/{key}", "value": value} for key, value in status.items()]
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, JOB_PLURAL, name, ops,
                _content_type="application/json-patch+json", _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except ApiException as exc:
            # 404: gone; 409/422: the uid test failed (recreated), or the job has no status yet.
            if exc.status in (404, 409, 422):
                return False
            raise
        return True
