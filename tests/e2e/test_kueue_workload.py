"""The Workloads the operator will create for queued TrainingJobs, sent to the real Kueue
(`DMLT_KUEUE=1 hack/cluster.sh up`), with the status patches the operator will write, and Kueue's
answers read by trainingjob/admission.py. No operator runs here: the test plays its part.

- Kueue's webhooks and CRD schema accept the built Workload (a server-side dry run, then for
  real), owned by a real TrainingJob;
- a 1-CPU gang (replicas 1) is admitted to a 1-CPU ClusterQueue; its placement comes from the
  ResourceFlavor's node labels and tolerations;
- PodsReady, as the operator will report it, is accepted;
- a 2-rank gang of 1 CPU each is never admitted in part, and deactivating it keeps it out;
- a high-priority Workload preempts the admitted one: Evicted/Preempted, naming the preemptor;
  the operator's release_quota_status hands the quota back, the high one is admitted, the low
  one waits (its position from the visibility API), and is admitted again after
  finished_status frees the quota.

Skipped, saying so, where Kueue is not installed (the default `hack/cluster.sh up`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dmlt_operator.core.conditions import now_utc
from dmlt_operator.trainingjob import admission as ad
from dmlt_operator.trainingjob import queueing as q
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec
from kubernetes import client

from tests.helpers.kube import apply_crd, raw_get
from tests.helpers.kueue import cluster_queue, kueue_api
from tests.helpers.names import CRD_FILE, GROUP, PLURAL, VERSION
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

ADMIT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def kueue(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return kueue_api(api_client)


@pytest.fixture(scope="module")
def queues(
    kueue: client.CustomObjectsApi, api_client: client.ApiClient, namespace: str
) -> Iterator[dict[str, str]]:
    """The shared ClusterQueue of 1 CPU (tests/helpers/kueue.py), whose flavor also gives the
    Pods a toleration, so that the placement has both parts to check."""
    apply_crd(api_client, CRD_FILE)  # the Workloads' owner, a TrainingJob, must exist
    toleration = {"key": "dmlt.io/e2e", "operator": "Exists", "effect": "NoSchedule"}
    with cluster_queue(kueue, namespace, cpu="1", tolerations=(toleration,)) as names:
        yield names


def training_job(name: str, namespace: str, replicas: int = 1) -> dict[str, Any]:
    """A TrainingJob that names the queue and stays suspended: should an operator run on this
    cluster, it starts nothing for it; here only its identity (uid, spec) matters."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {q.QUEUE_LABEL: "team"}},
        "spec": {
            "image": "dmlt-trainer:dev",
            "replicas": replicas,
            "resources": {"requests": {"cpu": "1", "memory": "64Mi"}, "limits": {"cpu": "1"}},
            "runPolicy": {"suspend": True},
        },
    }


def create_workload(kueue: client.CustomObjectsApi, namespace: str, name: str, replicas: int = 1,
                    priority: q.Priority | None = None) -> dict[str, Any]:  # fmt: skip
    tj = kueue.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, training_job(name, namespace, replicas)
    )
    spec = parse_spec(tj["spec"])
    queue = q.queue_name(tj["metadata"], spec)
    assert queue == "team"
    wl = q.build_workload(JobRef.from_body(tj), spec, queue, priority)
    g, v = q.KUEUE_GROUP, q.KUEUE_VERSION
    dry = kueue.create_namespaced_custom_object(g, v, namespace, q.WORKLOAD_PLURAL, wl, dry_run="All")
    assert dry["spec"]["podSets"][0]["count"] == replicas
    return kueue.create_namespaced_custom_object(g, v, namespace, q.WORKLOAD_PLURAL, wl)


def read(kueue: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return kueue.get_namespaced_custom_object(
        q.KUEUE_GROUP, q.KUEUE_VERSION, namespace, q.WORKLOAD_PLURAL, name
    )


def view_when(kueue, namespace: str, name: str, check, what: str) -> ad.WorkloadView:
    def probe() -> ad.WorkloadView | None:
        view = ad.parse_workload(read(kueue, namespace, name))
        return view if check(view) else None

    def diag() -> str:
        return json.dumps((read(kueue, namespace, name).get("status") or {}), indent=1)[:4000]

    return wait_for(probe, ADMIT_TIMEOUT, f"Workload {name} {what}", interval=0.2, diag=diag)


def patch_status(kueue, namespace: str, name: str, patch: dict[str, Any]) -> None:
    kueue.patch_namespaced_custom_object_status(
        q.KUEUE_GROUP, q.KUEUE_VERSION, namespace, q.WORKLOAD_PLURAL, name, patch
    )


def priority(kueue, name: str) -> q.Priority:
    return q.Priority.from_object(
        kueue.get_cluster_custom_object(q.KUEUE_GROUP, q.KUEUE_VERSION, "workloadpriorityclasses", name)
    )


def check_placement(kueue, view: ad.WorkloadView, queues: dict[str, str]) -> None:
    """The admission names the ClusterQueue's flavor; the Pods get its node labels and tolerations."""
    assert view.cluster_queue == queues["cq"]
    assert view.flavors == {"cpu": queues["flavor"], "memory": queues["flavor"]}
    flavors = {
        n: kueue.get_cluster_custom_object(q.KUEUE_GROUP, q.KUEUE_VERSION, "resourceflavors", n)
        for n in ad.flavor_names(view)
    }
    where = ad.placement(view, flavors)
    assert where.node_selector == {"kubernetes.io/os": "linux"}
    assert where.tolerations == [{"key": "dmlt.io/e2e", "operator": "Exists", "effect": "NoSchedule"}]


def check_gang_waits(kueue, namespace: str) -> None:
    """A 2-rank gang of 1 CPU each never fits 1 CPU: not admitted, not in part either. Then
    deactivated (what runPolicy.suspend on a queued job does): Kueue keeps it out of the queue."""
    gang = create_workload(kueue, namespace, "gang", replicas=2)["metadata"]["name"]
    view = view_when(kueue, namespace, gang, lambda w: w.pending_message, "to say why it waits")
    assert not view.quota_reserved and not view.admitted
    assert "cpu" in view.pending_message
    print("gang:", ad.queued_message(view))
    kueue.patch_namespaced_custom_object(
        q.KUEUE_GROUP, q.KUEUE_VERSION, namespace, q.WORKLOAD_PLURAL, gang, q.active_patch(False)
    )
    view = view_when(kueue, namespace, gang, lambda w: not w.active, "deactivated")
    assert not view.quota_reserved and ad.next_step(view, pods_exist=False) is ad.Step.WAIT
    assert "deactivated" in ad.queued_message(view)


def check_pods_ready(kueue, namespace: str, name: str) -> None:
    """PodsReady as the operator reports it once every rank is Ready (Kueue's waitForPodsReady)."""
    patch_status(kueue, namespace, name, q.pods_ready_status(read(kueue, namespace, name), True, now_utc()))
    conditions = read(kueue, namespace, name)["status"]["conditions"]
    assert any(c["type"] == "PodsReady" and c["status"] == "True" for c in conditions)


def check_preempted_by(kueue, namespace: str, view: ad.WorkloadView, preemptor: dict[str, Any]) -> None:
    """The eviction names the preemptor; Kueue keeps the quota reserved until the job stops."""
    ev = view.eviction
    assert ev is not None and ev.preempted
    assert ev.preemptor_uid == preemptor["metadata"]["uid"]
    assert ev.preemptor_job_uid == preemptor["metadata"]["labels"][q.JOB_UID_LABEL]
    listed = kueue.list_namespaced_custom_object(q.KUEUE_GROUP, q.KUEUE_VERSION, namespace, q.WORKLOAD_PLURAL)
    who = ad.preemptor_name(ev, listed["items"])
    assert who == f"{namespace}/{preemptor['metadata']['name']}"
    print("event:", ad.eviction_event(ev, who))
    assert view.quota_reserved and ad.next_step(view, pods_exist=True) is ad.Step.SUSPEND
    assert ad.next_step(view, pods_exist=False) is ad.Step.RELEASE


def check_position(kueue, api_client, namespace: str, name: str) -> None:
    """A queued Workload's place, from the visibility API, in the job's queue status."""

    def position() -> ad.QueuePosition | None:
        summary = json.loads(raw_get(api_client, ad.pending_workloads_path(namespace, "team")))
        return ad.parse_position(summary, name)

    pos = wait_for(position, ADMIT_TIMEOUT, f"{name} in the LocalQueue's pending workloads")
    status = ad.queue_status(ad.parse_workload(read(kueue, namespace, name)), "team", pos)
    assert status["state"] == "Queued" and status["position"] >= 1
    assert status["lastEviction"] == "Preempted"
    print("queued:", status["message"])


def finish(kueue, namespace: str, name: str) -> None:
    patch_status(
        kueue, namespace, name, q.finished_status(read(kueue, namespace, name), True, "done", now_utc())
    )


@pytest.mark.timeout(600)
def test_kueue_admits_preempts_and_readmits_the_operators_workloads(kueue, queues, namespace, api_client):
    low_prio, high_prio = priority(kueue, queues["low"]), priority(kueue, queues["high"])
    assert (low_prio.value, high_prio.value) == (10, 1000)

    # a 1-CPU gang is admitted; its placement is the flavor's
    t0 = time.monotonic()
    low = create_workload(kueue, namespace, "low", priority=low_prio)["metadata"]["name"]
    view = view_when(kueue, namespace, low, lambda w: w.admitted, "admitted")
    admit_s = time.monotonic() - t0
    assert ad.next_step(view, pods_exist=False) is ad.Step.RUN
    check_placement(kueue, view, queues)
    check_pods_ready(kueue, namespace, low)
    check_gang_waits(kueue, namespace)

    # a high-priority Workload preempts the low one, which names it
    t1 = time.monotonic()
    high_wl = create_workload(kueue, namespace, "high", priority=high_prio)
    high = high_wl["metadata"]["name"]
    view = view_when(kueue, namespace, low, lambda w: w.eviction is not None, "evicted")
    evict_s = time.monotonic() - t1
    check_preempted_by(kueue, namespace, view, high_wl)
    assert not ad.parse_workload(read(kueue, namespace, high)).admitted

    # the operator (its Pods gone) releases the quota: the high one is admitted, the low one waits
    patch_status(kueue, namespace, low, q.release_quota_status(read(kueue, namespace, low), now_utc()))
    t2 = time.monotonic()
    view_when(kueue, namespace, high, lambda w: w.admitted, "admitted after the release")
    release_to_admit_s = time.monotonic() - t2
    view = ad.parse_workload(read(kueue, namespace, low))
    assert not view.quota_reserved and ad.next_step(view, pods_exist=False) is ad.Step.WAIT
    check_position(kueue, api_client, namespace, low)

    # the high one ends: Finished frees the quota, the low one is admitted again, its eviction cleared
    finish(kueue, namespace, high)
    view = view_when(kueue, namespace, low, lambda w: w.admitted, "admitted again")
    assert view.eviction is None and ad.next_step(view, pods_exist=False) is ad.Step.RUN
    finish(kueue, namespace, low)
    assert ad.parse_workload(read(kueue, namespace, low)).finished
    print(
        f"timings: admitted {admit_s:.1f}s after create; evicted {evict_s:.1f}s after the preemptor's "
        f"create; preemptor admitted {release_to_admit_s:.1f}s after the release"
    )
