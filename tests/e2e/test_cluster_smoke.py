"""Smoke tests that prove the cluster under KUBECONFIG can run dmlt's workloads.

- two trainer Pods behind a headless Service find each other by DNS name and complete a gloo
  all_reduce (world size 2), and their logs can be read;
- a Pod reaches another Pod through a ClusterIP Service (kube-proxy + DNS);
- admission is on: Pod Security `restricted` rejects a privileged Pod.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable

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
