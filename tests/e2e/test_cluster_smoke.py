"""Smoke tests that prove the cluster under KUBECONFIG can run dmlt's workloads.

- two trainer Pods behind a headless Service find each other by DNS name and complete a gloo
  all_reduce (world size 2), and their logs can be read;
- a Pod reaches another Pod through a ClusterIP Service (kube-proxy + DNS);
- admission is on: Pod Security `restricted` rejects a privileged Pod;
- dynamic volumes as kind has them: a default StorageClass whose claims bind on first consumer,
  are writable by the non-root trainer user under `restricted`, and whose directory on the node
  goes away with the claim (`reclaimPolicy: Delete`).
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.e2e

DDP_PORT = 29500

ALL_REDUCE_SCRIPT = textwrap.dedent(
    """
    import datetime, os, socket, time
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    master = os.environ["MASTER_ADDR"]
    deadline = time.monotonic() + 120
    while True:  # the headless Service's DNS record may lag the Pod
        try:
            print("master", master, "is", socket.gethostbyname(master), flush=True)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise
            print("waiting for DNS:", exc, flush=True)
            time.sleep(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{master}:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=180),
    )
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    print(f"rank {rank} host {socket.gethostname()} all_reduce={t.item()}", flush=True)
    assert t.item() == 3.0, t
    dist.destroy_process_group()
    """
)

HTTP_CLIENT_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, urllib.request
    for url in (os.environ["BY_NAME"], os.environ["BY_IP"]):
        for attempt in range(60):
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    print(url, resp.status, resp.read().decode().strip(), flush=True)
                    break
            except OSError as exc:
                print(url, "retry:", exc, flush=True)
                time.sleep(1)
        else:
            sys.exit(f"{url} unreachable")
    """
)


def _python_container(image: str, name: str, script: str, env: dict[str, str]) -> client.V1Container:
    return client.V1Container(
        name=name,
        image=image,
        image_pull_policy="IfNotPresent",
        command=["python3", "-c", script],
        env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
        resources=client.V1ResourceRequirements(
            requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "2Gi"}
        ),
    )


@pytest.mark.timeout(600)
def test_gloo_all_reduce_across_two_pods(
    core_v1: client.CoreV1Api, namespace: str, trainer_image: str, wait_pod: Callable
) -> None:
    labels = {"app": "ddp-smoke"}
    core_v1.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="ddp"),
            spec=client.V1ServiceSpec(
                cluster_ip="None",
                publish_not_ready_addresses=True,
                selector=labels,
                ports=[client.V1ServicePort(name="c10d", port=DDP_PORT)],
            ),
        ),
    )
    master = f"ddp-0.ddp.{namespace}.svc"
    for rank in range(2):
        core_v1.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=f"ddp-{rank}", labels=labels),
                spec=client.V1PodSpec(
                    hostname=f"ddp-{rank}",
                    subdomain="ddp",
                    restart_policy="Never",
                    containers=[
                        _python_container(
                            trainer_image,
                            "rank",
                            ALL_REDUCE_SCRIPT,
                            {
                                "RANK": str(rank),
                                "MASTER_ADDR": master,
                                "MASTER_PORT": str(DDP_PORT),
                                "GLOO_SOCKET_IFNAME": "eth0",
                                "OMP_NUM_THREADS": "1",
                            },
                        )
                    ],
                ),
            ),
        )
    for rank in range(2):
        result = wait_pod(f"ddp-{rank}", namespace, timeout=420)
        assert result.phase == "Succeeded", f"rank {rank} {result.phase}; logs:\n{result.logs}"
        # reading Pod logs through the apiserver -> kubelet path works
        assert f"rank {rank} host ddp-{rank} all_reduce=3.0" in result.logs, result.logs


@pytest.mark.timeout(400)
def test_pod_reaches_cluster_ip_service(
    core_v1: client.CoreV1Api, namespace: str, trainer_image: str, wait_pod: Callable
) -> None:
    labels = {"app": "web"}
    core_v1.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="web", labels=labels),
            spec=client.V1PodSpec(
                containers=[
                    client.V1Container(
                        name="web",
                        image=trainer_image,
                        image_pull_policy="IfNotPresent",
                        command=["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
                        ports=[client.V1ContainerPort(container_port=8080)],
                        readiness_probe=client.V1Probe(
                            tcp_socket=client.V1TCPSocketAction(port=8080), period_seconds=1
                        ),
                        resources=client.V1ResourceRequirements(requests={"cpu": "50m"}),
                    )
                ]
            ),
        ),
    )
    svc = core_v1.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                type="ClusterIP",
                selector=labels,
                ports=[client.V1ServicePort(port=80, target_port=8080)],
            ),
        ),
    )
    cluster_ip = svc.spec.cluster_ip
    assert cluster_ip and cluster_ip != "None"
    wait_pod("web", namespace, timeout=240, ready=True)
    core_v1.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="web-client"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[
                    _python_container(
                        trainer_image,
                        "client",
                        HTTP_CLIENT_SCRIPT,
                        {"BY_NAME": "http://web/", "BY_IP": f"http://{cluster_ip}/"},
                    )
                ],
            ),
        ),
    )
    result = wait_pod("web-client", namespace, timeout=240)
    assert result.phase == "Succeeded", result.logs
    assert "http://web/ 200" in result.logs, result.logs
    assert f"http://{cluster_ip}/ 200" in result.logs, result.logs


@pytest.mark.timeout(120)
def test_admission_rejects_privileged_pod(
    core_v1: client.CoreV1Api, trainer_image: str, default_service_account: Callable
) -> None:
    """Pod Security admission (`restricted`) must refuse a privileged Pod at the apiserver."""
    name = f"e2e-restricted-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={"dmlt-e2e": "true", "pod-security.kubernetes.io/enforce": "restricted"},
            )
        )
    )
    try:
        # without its default ServiceAccount the Pod would be refused for another reason
        default_service_account(name)
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="privileged"),
            spec=client.V1PodSpec(
                containers=[
                    client.V1Container(
                        name="c",
                        image=trainer_image,
                        image_pull_policy="IfNotPresent",
                        command=["true"],
                        security_context=client.V1SecurityContext(privileged=True),
                    )
                ]
            ),
        )
        with pytest.raises(ApiException) as err:
            core_v1.create_namespaced_pod(name, pod)
        assert err.value.status == 403, err.value
        assert "violates PodSecurity" in err.value.body, err.value.body
        assert "privileged" in err.value.body, err.value.body
    finally:
        core_v1.delete_namespace(name, grace_period_seconds=0)


DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
TRAINER_UID = 10001  # the trainer image's user (Dockerfile)

# Run in the restricted namespace as the trainer user: writes a file in a directory of its own,
# so that the teardown has to remove what another user made.
WRITE_SCRIPT = textwrap.dedent(
    """
    import os
    os.makedirs("/data/run", exist_ok=True)
    with open("/data/run/marker", "w") as f:
        f.write("written by uid %d" % os.getuid())
    print("wrote /data/run/marker as uid", os.getuid(), flush=True)
    """
)

# Run with the volume's parent directory on the node mounted read-only: what is at VOLUME_DIR.
INSPECT_SCRIPT = textwrap.dedent(
    """
    import os
    path = os.path.join("/node", os.environ["VOLUME_DIR"], "run", "marker")
    if os.path.exists(os.path.join("/node", os.environ["VOLUME_DIR"])):
        print("present", os.stat(path).st_uid, open(path).read(), flush=True)
    else:
        print("absent", flush=True)
    """
)


@dataclass(frozen=True, slots=True)
class VolumeProbe:
    """Claims written by the trainer's user in a ``restricted`` namespace, and a look at the node's
    directories from a ``privileged`` one (hostPath)."""

    core_v1: client.CoreV1Api
    wait_pod: Callable
    image: str
    restricted_ns: str
    privileged_ns: str

    def write_through_claim(self, claim: str) -> client.V1PersistentVolume:
        """Claim (unbound until a Pod uses it), write to it as the trainer; return its bound PV."""
        ns = self.restricted_ns
        self.core_v1.create_namespaced_persistent_volume_claim(ns, _claim(claim))
        time.sleep(3)  # a class that binds at once would have bound by now
        pending = self.core_v1.read_namespaced_persistent_volume_claim(claim, ns)
        assert pending.status.phase == "Pending", (
            f"claim {claim} is {pending.status.phase} before any Pod uses it: "
            "the default class should bind on first consumer"
        )
        writer = f"{claim}-writer"
        self.core_v1.create_namespaced_pod(ns, _restricted_writer(writer, self.image, claim))
        result = self.wait_pod(writer, ns, timeout=240)
        assert result.phase == "Succeeded", f"writer {result.phase}; logs:\n{result.logs}"
        assert f"wrote /data/run/marker as uid {TRAINER_UID}" in result.logs, result.logs
        bound = self.core_v1.read_namespaced_persistent_volume_claim(claim, ns)
        assert bound.status.phase == "Bound", bound.status
        self.core_v1.delete_namespaced_pod(writer, ns, grace_period_seconds=0)
        _wait_gone(lambda: self.core_v1.read_namespaced_pod(writer, ns), f"Pod {writer}", 60)
        return self.core_v1.read_persistent_volume(bound.spec.volume_name)

    def node_dir(self, volume_path: str, pod_name: str) -> str:
        """What a Pod on the node sees at ``volume_path``: 'present UID CONTENT' or 'absent'."""
        parent, volume_dir = volume_path.rstrip("/").rsplit("/", 1)
        container = _python_container(self.image, "inspect", INSPECT_SCRIPT, {"VOLUME_DIR": volume_dir})
        container.volume_mounts = [client.V1VolumeMount(name="node", mount_path="/node", read_only=True)]
        node = client.V1HostPathVolumeSource(path=parent, type="Directory")
        self.core_v1.create_namespaced_pod(
            self.privileged_ns,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=pod_name),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[container],
                    volumes=[client.V1Volume(name="node", host_path=node)],
                ),
            ),
        )
        result = self.wait_pod(pod_name, self.privileged_ns, timeout=180)
        assert result.phase == "Succeeded", result.logs
        return result.logs.strip()


@pytest.fixture(scope="module")
def volume_probe(
    core_v1: client.CoreV1Api, default_service_account: Callable, wait_pod: Callable, trainer_image: str
) -> Iterator[VolumeProbe]:
    suffix = uuid.uuid4().hex[:6]
    names = {level: f"e2e-volumes-{level}-{suffix}" for level in ("restricted", "privileged")}
    for level, name in names.items():
        core_v1.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=name,
                    labels={"dmlt-e2e": "true", "pod-security.kubernetes.io/enforce": level},
                )
            )
        )
        default_service_account(name)
    yield VolumeProbe(core_v1, wait_pod, trainer_image, names["restricted"], names["privileged"])
    for name in names.values():
        core_v1.delete_namespace(name, propagation_policy="Background", grace_period_seconds=0)


def _default_storage_class(api_client: client.ApiClient) -> client.V1StorageClass:
    classes = client.StorageV1Api(api_client).list_storage_class().items
    defaults = [c for c in classes if (c.metadata.annotations or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"]
    assert len(defaults) == 1, (
        f"want exactly one default StorageClass, have {[c.metadata.name for c in defaults]} "
        f"(all: {[c.metadata.name for c in classes]}); `hack/cluster.sh up` installs `standard`"
    )
    return defaults[0]


def _claim(name: str) -> client.V1PersistentVolumeClaim:
    """A claim that names no class, as the chart's and the examples' claims do."""
    return client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "64Mi"}),
        ),
    )


def _restricted_writer(name: str, image: str, claim: str) -> client.V1Pod:
    """The trainer's user under every rule of Pod Security `restricted`, writing to ``claim``."""
    container = _python_container(image, "writer", WRITE_SCRIPT, {})
    container.volume_mounts = [client.V1VolumeMount(name="data", mount_path="/data")]
    container.security_context = client.V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=client.V1Capabilities(drop=["ALL"]),
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            restart_policy="Never",
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=TRAINER_UID,
                run_as_group=TRAINER_UID,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            containers=[container],
            volumes=[
                client.V1Volume(
                    name="data",
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
                )
            ],
        ),
    )


def _volume_path(pv: client.V1PersistentVolume) -> str:
    source = pv.spec.host_path or pv.spec.local
    assert source is not None, f"PV {pv.metadata.name} is neither hostPath nor local: {pv.spec}"
    return source.path


def _wait_gone(read: Callable[[], object], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(1)
    pytest.fail(f"{what} still exists {timeout:.0f}s after it was deleted", pytrace=False)


@pytest.mark.timeout(60)
def test_default_storage_class_is_local_path(api_client: client.ApiClient) -> None:
    default = _default_storage_class(api_client)
    assert default.provisioner == "rancher.io/local-path", default.provisioner
    assert default.volume_binding_mode == "WaitForFirstConsumer", default.volume_binding_mode
    assert default.reclaim_policy == "Delete", default.reclaim_policy


@pytest.mark.timeout(420)
def test_restricted_non_root_pod_writes_to_a_claim(
    api_client: client.ApiClient, volume_probe: VolumeProbe
) -> None:
    pv = volume_probe.write_through_claim("written")
    assert pv.spec.storage_class_name == _default_storage_class(api_client).metadata.name, pv.spec
    claim_ref = pv.spec.claim_ref
    assert (claim_ref.namespace, claim_ref.name) == (volume_probe.restricted_ns, "written"), claim_ref
    seen = volume_probe.node_dir(_volume_path(pv), "inspect-written")
    assert seen == f"present {TRAINER_UID} written by uid {TRAINER_UID}", seen


@pytest.mark.timeout(480)
def test_deleting_a_claim_removes_its_volume_and_directory(
    core_v1: client.CoreV1Api, volume_probe: VolumeProbe
) -> None:
    pv = volume_probe.write_through_claim("deleted")
    path = _volume_path(pv)
    core_v1.delete_namespaced_persistent_volume_claim("deleted", volume_probe.restricted_ns)
    _wait_gone(lambda: core_v1.read_persistent_volume(pv.metadata.name), f"PV {pv.metadata.name}", 180)
    seen = volume_probe.node_dir(path, "inspect-deleted")
    assert seen == "absent", f"{path} is still on the node after its claim was deleted: {seen}"
