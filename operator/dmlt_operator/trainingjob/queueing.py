"""Pure pieces of TrainingJob admission through Kueue: the queue a job names, the Workload the
operator creates for it, and the status patches the operator writes on that Workload.

The integration (docs/operator.md, "Queues"): a TrainingJob that names a LocalQueue gets one
Kueue `Workload` (kueue.x-k8s.io/v1beta2, the storage version of Kueue v0.17), created and
followed by the operator, the way Kueue's own job reconciler does for a batch/v1 Job:

- one podSet `trainer` with count = replicas and no minCount, so Kueue admits the whole gang or
  none of it;
- the operator starts the rank Pods only once the Workload is admitted, with the flavors' node
  labels and tolerations (admission.py), and deletes them when Kueue evicts it;
- after such a stop it hands the quota back (`release_quota_status`), and when the job ends it
  marks the Workload Finished (`finished_status`); Kueue's job reconciler does both for its Jobs,
  no Kueue controller does them for a Workload whose owner is a TrainingJob.

Nothing here talks to Kubernetes; the planner passes in what it read (the Workload, the
ResourceFlavors, the priority class's value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dmlt_operator.core.conditions import set_condition
from dmlt_operator.core.objects import JOB_KIND, LABEL_COMPONENT, owner_reference
from dmlt_operator.trainingjob.build import TRAINER_CONTAINER, JobRef, job_labels
from dmlt_operator.trainingjob.spec import TrainingJobSpec
from kubernetes.utils.quantity import parse_quantity

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
"""The storage version of Workloads in Kueue v0.17 (v1beta1 is still served)."""
WORKLOAD_API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
WORKLOAD_KIND = "Workload"
WORKLOAD_PLURAL = "workloads"
RESOURCE_FLAVOR_PLURAL = "resourceflavors"
WORKLOAD_PRIORITY_CLASS_PLURAL = "workloadpriorityclasses"

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""The label Kueue users put on a job to queue it (Kueue's constants.QueueLabel)."""
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
"""Names a WorkloadPriorityClass, as on Kueue's own jobs (constants.WorkloadPriorityClassLabel)."""
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""The owning job's uid on its Workload: Kueue quotes it in a preemption message ("JobUID")."""

DEFAULT_PRIORITY = 0
"""A Workload's priority when it names no class (Kueue's constants.DefaultPriority)."""

POD_SET = "trainer"
"""The one podSet: every rank Pod is alike for Kueue (the same resources, selector, tolerations)."""

# Workload condition types and reasons (apis/kueue/v1beta2/workload_types.go)
COND_QUOTA_RESERVED = "QuotaReserved"
COND_ADMITTED = "Admitted"
COND_EVICTED = "Evicted"
COND_PREEMPTED = "Preempted"
COND_REQUEUED = "Requeued"
COND_FINISHED = "Finished"
COND_PODS_READY = "PodsReady"
REASON_PENDING = "Pending"
REASON_PREEMPTED = "Preempted"
REASON_NODE_FAILURES = "NodeFailures"
REASON_SUCCEEDED = "Succeeded"
REASON_FAILED = "Failed"


class QueueError(ValueError):
    """The job names its queue or priority inconsistently; the message says which fields."""


def queue_name(metadata: Mapping[str, Any], spec: TrainingJobSpec) -> str | None:
    """The LocalQueue a job names: its `kueue.x-k8s.io/queue-name` label or `spec.queueName`.

    Both may be set only to the same name; neither means the job is not queued.
    """
    label = ((metadata.get("labels") or {}).get(QUEUE_LABEL) or "").strip() or None
    if label and spec.queue_name and label != spec.queue_name:
        raise QueueError(
            f"metadata.labels[{QUEUE_LABEL!r}] {label!r} and spec.queueName {spec.queue_name!r} "
            "name different queues: set one, or both to the same LocalQueue"
        )
    return label or spec.queue_name


def priority_class_name(metadata: Mapping[str, Any]) -> str | None:
    """The WorkloadPriorityClass a job names with the `kueue.x-k8s.io/priority-class` label."""
    return ((metadata.get("labels") or {}).get(PRIORITY_CLASS_LABEL) or "").strip() or None


@dataclass(frozen=True, slots=True)
class Priority:
    """A resolved priority class: the Workload must carry its value too (Kueue's CRD rule
    "priority should not be nil when priorityClassRef is set")."""

    name: str
    value: int
    kind: str = "WorkloadPriorityClass"
    """WorkloadPriorityClass (kueue.x-k8s.io) or PriorityClass (scheduling.k8s.io)."""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Priority:
        """From a WorkloadPriorityClass or a scheduling.k8s.io PriorityClass object as read."""
        kind = obj.get("kind") or "WorkloadPriorityClass"
        if kind not in ("WorkloadPriorityClass", "PriorityClass"):
            raise QueueError(f"{kind} is not a priority class")
        return cls(name=obj["metadata"]["name"], value=int(obj.get("value") or 0), kind=kind)

    def ref(self) -> dict[str, str]:
        group = KUEUE_GROUP if self.kind == "WorkloadPriorityClass" else "scheduling.k8s.io"
        return {"group": group, "kind": self.kind, "name": self.name}


def workload_name(job: JobRef) -> str:
    """`trainingjob-<job>-<5 hex of its uid>`: one name per job object, so a job deleted and
    created again under the same name never adopts the old Workload (that one is collected with
    its owner). Kueue names its own Workloads the same way (`job-<name>-<hash>`)."""
    digest = hashlib.sha256(f"{job.namespace}/{job.name}/{job.uid}".encode()).hexdigest()[:5]
    return f"{JOB_KIND.lower()}-{job.name}-{digest}"


def _requests(spec: TrainingJobSpec) -> dict[str, Any]:
    """What Kubernetes makes of the container's resources: a limit without a request is also
    the request. That is what Kueue charges to the quota for each rank."""
    return {**spec.resources.limits, **spec.resources.requests}


def pod_template(spec: TrainingJobSpec) -> dict[str, Any]:
    """The part of a rank Pod that Kueue reads: the trainer container's resources, the node
    selector and tolerations the job asks for (flavors must fit them). Not the whole Pod: the
    per-rank command and hostname do not matter to admission."""
    container: dict[str, Any] = {"name": TRAINER_CONTAINER, "image": spec.image}
    resources: dict[str, Any] = {}
    if requests := _requests(spec):
        resources["requests"] = dict(requests)
    if spec.resources.limits:
        resources["limits"] = dict(spec.resources.limits)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    return {"metadata": {"labels": {LABEL_COMPONENT: "trainer"}}, "spec": pod_spec}


def pod_sets(spec: TrainingJobSpec) -> list[dict[str, Any]]:
    """One podSet for the gang: count = replicas and no minCount, all or nothing."""
    return [{"name": POD_SET, "count": spec.replicas, "template": pod_template(spec)}]


def build_workload(
    job: JobRef, spec: TrainingJobSpec, queue: str, priority: Priority | None = None
) -> dict[str, Any]:
    """The Workload that asks Kueue to admit `job`'s gang to LocalQueue `queue`."""
    labels = {**job_labels(job.name), JOB_UID_LABEL: job.uid}
    # spec.priority always: Kueue's scheduler reads a missing one as 0, but v0.17's visibility
    # server dereferences it, so one pending Workload without it makes every pendingworkloads
    # request of its ClusterQueue panic (kubernetes-sigs/kueue#14399, fixed after v0.17.0).
    workload_spec: dict[str, Any] = {
        "queueName": queue,
        "podSets": pod_sets(spec),
        "priority": priority.value if priority is not None else DEFAULT_PRIORITY,
    }
    if priority is not None:
        workload_spec["priorityClassRef"] = priority.ref()
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": WORKLOAD_KIND,
        "metadata": {
            "name": workload_name(job),
            "namespace": job.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(job, JOB_KIND)],
        },
        "spec": workload_spec,
    }


def pod_sets_differ(workload: Mapping[str, Any], spec: TrainingJobSpec) -> bool:
    """Whether the Workload no longer describes the job's gang (count or template). Kueue
    refuses podSet changes while quota is reserved; the planner replaces a Workload that differs
    only while it is not admitted."""
    have = (workload.get("spec") or {}).get("podSets") or []
    want = pod_sets(spec)
    if len(have) != len(want):
        return True
    got, wanted = have[0], want[0]
    if got.get("name") != wanted["name"] or got.get("count") != wanted["count"]:
        return True
    return _template_core(got.get("template") or {}) != _template_core(wanted["template"])


def workload_outdated(workload: Mapping[str, Any], spec: TrainingJobSpec, queue: str) -> bool:
    """Whether the Workload no longer asks for what the job needs: another LocalQueue, or
    another gang (pod_sets_differ). Such a Workload is replaced while it holds no quota."""
    return (workload.get("spec") or {}).get("queueName") != queue or pod_sets_differ(workload, spec)


def _template_core(template: Mapping[str, Any]) -> tuple[Any, ...]:
    """What admission depends on, ignoring the fields the apiserver or Kueue default."""
    spec = template.get("spec") or {}
    containers = [
        (c.get("name"), _quantities(c.get("resources") or {})) for c in spec.get("containers") or []
    ]
    return (containers, spec.get("nodeSelector") or {}, spec.get("tolerations") or [])


def _quantities(resources: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Requests and limits by value: Kueue's webhook writes quantities back canonical ("0.5" is
    read as "500m"), which must not look like an edited spec."""
    out: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        values = resources.get(kind) or {}
        if values:
            out[kind] = {name: _quantity(value) for name, value in values.items()}
    return out


def _quantity(value: Any) -> Any:
    try:
        return parse_quantity(value)
    except ValueError:
        return str(value)


# --------------------------------------------------------------------------- status patches


def _conditions(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(c) for c in (workload.get("status") or {}).get("conditions") or []]


def _status_patch(workload: Mapping[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch for the status subresource. The conditions list goes whole (a merge patch
    replaces lists); the resourceVersion makes it fail with 409 instead of overwriting a status
    Kueue changed meanwhile: then read again and recompute."""
    meta = workload.get("metadata") or {}
    patch: dict[str, Any] = {"status": status}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return patch


def release_quota_status(workload: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """After the rank Pods of an evicted Workload are gone: give the quota back so Kueue can
    queue the Workload again, as Kueue's job reconciler does for its Jobs (Requeued, then
    QuotaReserved=False reason Pending with the eviction's message, no admission, Admitted=False).
    Requeued is True after a preemption or node failures, as Kueue sets it."""
    conditions = _conditions(workload)
    evicted = next((c for c in conditions if c.get("type") == COND_EVICTED), None)
    reason = (evicted or {}).get("reason") or REASON_PENDING
    message = (evicted or {}).get("message") or "The job's Pods are stopped"
    generation = (workload.get("metadata") or {}).get("generation")
    requeued = reason in (REASON_PREEMPTED, REASON_NODE_FAILURES)
    conditions = set_condition(conditions, COND_REQUEUED, requeued, reason, message, now, generation)
    conditions = set_condition(
        conditions, COND_QUOTA_RESERVED, False, REASON_PENDING, message, now, generation
    )
    if any(c.get("type") == COND_ADMITTED for c in conditions):
        conditions = set_condition(
            conditions, COND_ADMITTED, False, "NoReservation", "The workload has no reservation",
            now, generation,
        )  # fmt: skip
    return _status_patch(workload, {"conditions": conditions, "admission": None})


def finished_status(
    workload: Mapping[str, Any], succeeded: bool, message: str, now: datetime
) -> dict[str, Any]:
    """The job ended: Finished=True frees its quota at once (Kueue's job reconciler does this
    for its Jobs; the Workload itself stays until the TrainingJob is deleted)."""
    reason = REASON_SUCCEEDED if succeeded else REASON_FAILED
    generation = (workload.get("metadata") or {}).get("generation")
    conditions = set_condition(_conditions(workload), COND_FINISHED, True, reason, message, now, generation)
    return _status_patch(workload, {"conditions": conditions})


def pods_ready_status(workload: Mapping[str, Any], ready: bool, now: datetime) -> dict[str, Any]:
    """PodsReady, which Kueue's waitForPodsReady (when enabled) waits for before it admits the
    next workload, and evicts on timeout: True once every rank Pod is Ready."""
    reason, message = (
        ("PodsReady", "All ranks are ready") if ready else ("PodsNotReady", "Not all ranks are ready")
    )
    generation = (workload.get("metadata") or {}).get("generation")
    conditions = set_condition(
        _conditions(workload), COND_PODS_READY, ready, reason, message, now, generation
    )
    return _status_patch(workload, {"conditions": conditions})


def active_patch(active: bool) -> dict[str, Any]:
    """spec.active: False when the user suspends a queued job (runPolicy.suspend): Kueue then
    evicts it (reason Deactivated) and keeps it out of the queue until it is True again."""
    return {"spec": {"active": active}}
