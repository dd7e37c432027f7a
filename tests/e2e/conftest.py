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
    started = time.monotonic()
    deadline = started + timeout
    pod = None
    while time.monotonic() < deadline:
        pod = core_v1.read_namespaced_pod(name, ns)
        status = pod.status
        if ready and any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])):
            return PodResult(status.phase, "")
        if status.phase in until:
            return PodResult(status.phase, pod_logs(core_v1, name, ns))
        _fail_if_unschedulable(pod, name, ns, since=started)
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


UNSCHEDULABLE_GRACE_S = 90.0
"""How long a Pod may stay unschedulable before the wait gives up: a single-node cluster that
cannot place a small Pod for this long (taints, disk or memory pressure) will not place it."""


def _fail_if_unschedulable(pod: client.V1Pod, name: str, ns: str, *, since: float) -> None:
    if time.monotonic() - since < UNSCHEDULABLE_GRACE_S:
        return
    for cond in pod.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            pytest.fail(
                f"Pod {ns}/{name} is still unschedulable after {UNSCHEDULABLE_GRACE_S:.0f}s: {cond.message}",
                pytrace=False,
            )


PREFLIGHT_TIMEOUT_S = 420.0
PREFLIGHT_SCRIPT = "import torch, dmlt_trainer; print('preflight ok', torch.__version__, flush=True)"


@pytest.fixture(scope="session", autouse=True)
def cluster_runs_the_trainer_image(core_v1: client.CoreV1Api, trainer_image: str) -> None:
    """Before any e2e test: one Pod of the trainer image runs to completion on the cluster.

    When it cannot, every e2e test fails at once with this fixture's report (pytest keeps a
    session fixture's error) instead of each waiting out its own timeout.
    """
    name = f"e2e-preflight-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"dmlt-e2e": "true"}))
    )
    try:
        wait_for_default_service_account(core_v1, name)
        core_v1.create_namespaced_pod(name, _preflight_pod(trainer_image))
        try:
            result = wait_for_pod(core_v1, "preflight", name, timeout=PREFLIGHT_TIMEOUT_S)
        except pytest.fail.Exception as exc:
            pytest.fail(
                f"the cluster cannot run the trainer image: {exc}\n{cluster_report(core_v1, name)}",
                pytrace=False,
            )
        if result.phase != "Succeeded" or "preflight ok" not in result.logs:
            pytest.fail(
                f"the trainer image's preflight Pod ended {result.phase}; logs:\n{result.logs}\n"
                f"{cluster_report(core_v1, name)}",
                pytrace=False,
            )
    finally:
        core_v1.delete_namespace(name, propagation_policy="Background", grace_period_seconds=0)


def _preflight_pod(image: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="preflight"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="preflight",
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=["python3", "-c", PREFLIGHT_SCRIPT],
                    resources=client.V1ResourceRequirements(requests={"cpu": "50m", "memory": "256Mi"}),
                )
            ],
        ),
    )


def cluster_report(core_v1: client.CoreV1Api, ns: str) -> str:
    """The nodes' conditions, taints and allocatable resources, and the namespace's events."""
    lines = []
    for node in core_v1.list_node().items:
        pressing = [f"{c.type}={c.status} ({c.reason})" for c in node.status.conditions or []]
        taints = [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
        lines.append(
            f"node {node.metadata.name}: {', '.join(pressing)}; taints {taints or 'none'}; "
            f"allocatable {node.status.allocatable}"
        )
    for event in core_v1.list_namespaced_event(ns).items:
        lines.append(
            f"event {event.involved_object.kind}/{event.involved_object.name}: "
            f"{event.type} {event.reason}: {event.message}"
        )
    return "\n".join(lines)
