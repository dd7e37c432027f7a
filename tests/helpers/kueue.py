"""Kueue objects for the e2e tests that queue TrainingJobs (`DMLT_KUEUE=1 hack/cluster.sh up`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from dmlt_operator.trainingjob import queueing as q
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helpers.kube import raw_get

G, V = q.KUEUE_GROUP, q.KUEUE_VERSION
WPC = q.WORKLOAD_PRIORITY_CLASS_PLURAL


def kueue_api(api_client: client.ApiClient) -> client.CustomObjectsApi:
    """The custom objects API, once Kueue is known to be installed (else the test fails, saying so)."""
    try:
        raw_get(api_client, f"/apis/{G}/{V}")
    except ApiException as exc:
        if exc.status == 404:
            pytest.fail(
                "Kueue is not installed on this cluster: `DMLT_KUEUE=1 hack/cluster.sh up`", pytrace=False
            )
        raise
    return client.CustomObjectsApi(api_client)


@contextmanager
def cluster_queue(
    kueue: client.CustomObjectsApi, namespace: str, cpu: str, tolerations: tuple[dict, ...] = ()
) -> Iterator[dict[str, str]]:
    """A ResourceFlavor (node label kubernetes.io/os=linux, which every node has, and
    `tolerations` for the Pods it admits), a ClusterQueue
    of `cpu` CPUs (and memory: Kueue needs every requested resource covered) that preempts lower
    priorities, the LocalQueue `team` in `namespace`, two WorkloadPriorityClasses; their names.
    The cluster-scoped ones are deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    names = {
        "flavor": f"tj-{tag}",
        "cq": f"tj-{tag}",
        "lq": "team",
        "low": f"tj-low-{tag}",
        "high": f"tj-high-{tag}",
    }
    objects = [
        ("resourceflavors", "ResourceFlavor", {
            "metadata": {"name": names["flavor"]},
            "spec": {"nodeLabels": {"kubernetes.io/os": "linux"}, "tolerations": list(tolerations)},
        }),
        ("clusterqueues", "ClusterQueue", {
            "metadata": {"name": names["cq"]},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [{
                    "coveredResources": ["cpu", "memory"],
                    "flavors": [{"name": names["flavor"], "resources": [
                        {"name": "cpu", "nominalQuota": cpu},
                        {"name": "memory", "nominalQuota": "16Gi"}]}],
                }],
            },
        }),
        (WPC, "WorkloadPriorityClass", {"metadata": {"name": names["low"]}, "value": 10}),
        (WPC, "WorkloadPriorityClass", {"metadata": {"name": names["high"]}, "value": 1000}),
    ]  # fmt: skip
    for plural, kind, body in objects:
        kueue.create_cluster_custom_object(G, V, plural, {"apiVersion": f"{G}/{V}", "kind": kind, **body})
    kueue.create_namespaced_custom_object(
        G, V, namespace, "localqueues",
        {"apiVersion": f"{G}/{V}", "kind": "LocalQueue", "metadata": {"name": names["lq"]},
         "spec": {"clusterQueue": names["cq"]}},
    )  # fmt: skip
    try:
        yield names
    finally:
        for plural, _, body in reversed(objects):
            try:
                kueue.delete_cluster_custom_object(G, V, plural, body["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    print(
                        f"teardown: deleting {plural}/{body['metadata']['name']}: {exc.status} {exc.reason}"
                    )
