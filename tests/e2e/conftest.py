"""Shared fixtures for the e2e suite.

The suite talks to whatever cluster ``KUBECONFIG`` (or ``~/.kube/config``) points at: the local
cluster of ``hack/cluster.sh up`` or a kind cluster. Without a reachable cluster every test fails
with a message saying how to get one; nothing is skipped silently.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

NO_CLUSTER_HELP = (
    "Start the local cluster with `sudo hack/cluster.sh up` and "
    "`export KUBECONFIG=$(hack/cluster.sh kubeconfig)`, or use kind "
    "(`kind create cluster` + `kind load docker-image dmlt-trainer:dev dmlt-operator:dev`)."
)

# Waiting reasons that mean the Pod will never start on its own.
_FATAL_WAITING = {
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@pytest.fixture(scope="session")
def api_client() -> client.ApiClient:
    """An API client for the cluster in KUBECONFIG; fails the test when none is reachable."""
    problem = None
    try:
        config.load_kube_config()
    except Exception as kube_exc:  # noqa: BLE001 - any config problem means "no cluster"
        try:
            config.load_incluster_config()
        except config.ConfigException:
            problem = kube_exc
    if problem is not None:
        pytest.fail(
            f"No Kubernetes cluster configured (KUBECONFIG={os.environ.get('KUBECONFIG')!r}): "
            f"{problem}. {NO_CLUSTER_HELP}",
            pytrace=False,
        )
    api = client.ApiClient()
    try:
        version = client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:  # noqa: BLE001 - connection refused, TLS, auth, timeout ...
        problem = exc
    if problem is not None:
        pytest.fail(
            f"Kubernetes cluster in KUBECONFIG={os.environ.get('KUBECONFIG')!r} is not reachable: "
            f"{problem}. {NO_CLUSTER_HELP}",
            pytrace=False,
        )
    print(f"e2e cluster: Kubernetes {version.git_version} at {api.configuration.host}")
    return api


@pytest.fixture(scope="session")
def core_v1(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def trainer_image() -> str:
    """The trainer image, loaded into the node by ``hack/cluster.sh images`` or ``kind load``."""
    return os.environ.get("DMLT_TRAINER_IMAGE", "dmlt-trainer:dev")


@pytest.fixture(scope="session")
def wait_pod(core_v1: client.CoreV1Api) -> Callable[..., PodResult]:
    """``wait_pod(name, ns, timeout=..., ready=False)``: see :func:`wait_for_pod`."""
    return functools.partial(wait_for_pod, core_v1)


@pytest.fixture(scope="session")
def default_service_account(core_v1: client.CoreV1Api) -> Callable[[str], None]:
    """``default_service_account(ns)`` waits until the namespace's default ServiceAccount exists."""
    return functools.partial(wait_for_default_service_account, core_v1)


@pytest.fixture(scope="module")
def namespace(core_v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test module, deleted afterwards."""
    module = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")[:30]
    name = f"e2e-{module}-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"dmlt-e2e": "true"}))
    )
    wait_for_default_service_account(core_v1, name)
    yield name
    try:
        core_v1.delete_namespace(name, propagation_policy="Background", grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def wait_for_default_service_account(core_v1: client.CoreV1Api, ns: str, timeout: float = 60) -> None:
    """Pods are rejected until the controller-manager has made the namespace's default SA."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            core_v1.read_namespaced_service_account("default", ns)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@dataclass(frozen=True, slots=True)
class PodResult:
    """How a run-to-completion Pod ended."""

    phase: str
    logs: str


def pod_logs(core_v1: client.CoreV1Api, name: str, ns: str) -> str:
    try:
        return core_v1.read_namespaced_pod_log(name, ns, _request_timeout=30)
    except ApiException as exc:
        return f"<no logs: {exc.status} {exc.reason}>"


def wait_for_pod(
    core_v1: client.CoreV1Api,
    name: str,
    ns: str,
    *,
    timeout: float,
    until: tuple[str, ...] = ("Succeeded", "Failed"),
    ready: bool = False,
) -> PodResult:
    """Poll a Pod until its phase is in ``until`` (or, with ``ready``, it is Ready).

    Fails fast, with the Pod's status, when it can never start (image missing from the node,
    bad config) and when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        pod = core_v1.read_namespaced_pod(name, ns)
        status = pod.status
        if ready and any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])):
            return PodResult(status.phase, "")
        if status.phase in until:
            return PodResult(status.phase, pod_logs(core_v1, name, ns))
        for cs in (status.container_statuses or []) + (status.init_container_statuses or []):
            waiting = cs.state.waiting if cs.state else None
            if waiting and waiting.reason in _FATAL_WAITING:
                hint = ""
                if "Image" in waiting.reason:
                    hint = (
                        f" The image {cs.image!r} is not on the node: run "
                        "`sudo hack/cluster.sh images` (local cluster) or "
                        "`kind load docker-image dmlt-trainer:dev` (kind)."
                    )
                pytest.fail(
                    f"Pod {ns}/{name} cannot start: {waiting.reason}: {waiting.message}.{hint}",
                    pytrace=False,
                )
        time.sleep(1)
    logs = pod_logs(core_v1, name, ns)
    pytest.fail(
        f"Pod {ns}/{name} not done after {timeout:.0f}s; status: {pod.status if pod else None}\n"
        f"logs:\n{logs}",
        pytrace=False,
    )
