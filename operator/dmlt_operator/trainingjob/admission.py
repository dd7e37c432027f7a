"""Pure reading of a Kueue Workload's status for a TrainingJob: admitted or not, where Kueue
placed the gang (flavors → node selector and tolerations for the rank Pods), whether and why it
was evicted (and by which workload), what it waits for, its place in the queue, and what the
operator should do next (`next_step`).

queueing.py builds the Workload and the status patches; this module only reads. Nothing here
talks to Kubernetes: the planner passes in the Workload, the ResourceFlavors its admission names,
and the visibility API's answer, as read.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dmlt_operator.trainingjob.queueing import (
    COND_ADMITTED,
    COND_EVICTED,
    COND_FINISHED,
    COND_PREEMPTED,
    COND_QUOTA_RESERVED,
    KUEUE_GROUP,
    KUEUE_VERSION,
    POD_SET,
)

REASON_PODS_READY_TIMEOUT = "PodsReadyTimeout"
REASON_PREEMPTED = "Preempted"
REASON_DEACTIVATED = "Deactivated"

_PREEMPTOR = re.compile(r"\(UID: (?P<uid>[^,]*), JobUID: (?P<job_uid>[^)]*)\)")
_UNKNOWN = "UNKNOWN"


def _condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def _is_true(cond: Mapping[str, Any] | None) -> bool:
    return cond is not None and cond.get("status") == "True"


@dataclass(frozen=True, slots=True)
class Eviction:
    """Kueue evicted the Workload (condition Evicted=True): the gang must stop."""

    reason: str
    """Preempted, PodsReadyTimeout, Deactivated, ClusterQueueStopped, NodeFailures, …"""
    message: str
    preemptor_uid: str | None = None
    """The preempting Workload's uid, from Kueue's message "Preempted to accommodate a workload
    (UID: …, JobUID: …)"; None when not a preemption or Kueue did not know it."""
    preemptor_job_uid: str | None = None
    """The preempting job's uid (its Workload's kueue.x-k8s.io/job-uid label)."""
    preemption_reason: str | None = None
    """Condition Preempted's reason: InClusterQueue, InCohortReclamation, InCohortFairSharing, …"""

    @property
    def preempted(self) -> bool:
        return self.reason == REASON_PREEMPTED

    @property
    def counts_as_failure(self) -> bool:
        """Never: an eviction is Kueue taking the quota back, not the job failing. The job is
        suspended (Pods deleted, checkpoint kept) without a restart counted against
        runPolicy.backoffLimit."""
        return False


def _preemptor(message: str) -> tuple[str | None, str | None]:
    match = _PREEMPTOR.search(message or "")
    if not match:
        return None, None
    uid, job_uid = match["uid"].strip(), match["job_uid"].strip()
    return (uid if uid and uid != _UNKNOWN else None), (job_uid if job_uid and job_uid != _UNKNOWN else None)


def parse_eviction(conditions: Sequence[Mapping[str, Any]]) -> Eviction | None:
    evicted = _condition(conditions, COND_EVICTED)
    if evicted is None or not _is_true(evicted):
        return None
    message = str(evicted.get("message") or "")
    preempted = _condition(conditions, COND_PREEMPTED) or {}
    uid, job_uid = _preemptor(message)
    if uid is None and _is_true(preempted):
        uid, job_uid = _preemptor(str(preempted.get("message") or ""))
    return Eviction(
        reason=str(evicted.get("reason") or ""),
        message=message,
        preemptor_uid=uid,
        preemptor_job_uid=job_uid,
        preemption_reason=str(preempted.get("reason") or "") or None if _is_true(preempted) else None,
    )


@dataclass(frozen=True, slots=True)
class AdmissionCheck:
    """One of the ClusterQueue's admission checks (status.admissionChecks[])."""

    name: str
    state: str
    """Pending, Ready, Retry or Rejected."""
    message: str = ""


@dataclass(frozen=True, slots=True)
class WorkloadView:
    """What the operator needs from a Workload's status."""

    name: str
    queue: str
    active: bool = True
    quota_reserved: bool = False
    admitted: bool = False
    """QuotaReserved and every admission check Ready: the gang may start."""
    cluster_queue: str | None = None
    flavors: dict[str, str] = field(default_factory=dict)
    """resource name → ResourceFlavor, for the trainer podSet."""
    pod_set_updates: tuple[Mapping[str, Any], ...] = ()
    """The admission checks' podSetUpdates for the trainer podSet (labels, annotations,
    nodeSelector, tolerations), applied to the Pods as the flavors are."""
    topology_assigned: bool = False
    """Kueue assigned a topology (TAS): not supported by the operator yet."""
    eviction: Eviction | None = None
    finished: bool = False
    pending_reason: str = ""
    """QuotaReserved=False's reason (Pending, Inadmissible, …) while not admitted."""
    pending_message: str = ""
    """Kueue's explanation, e.g. "couldn't assign flavors to pod set trainer: insufficient
    unused quota for cpu in flavor default, 1 more needed"."""
    checks: tuple[AdmissionCheck, ...] = ()
    requeue_at: str | None = None
    """When Kueue queues the Workload again after a backoff (status.requeueState.requeueAt)."""

    @property
    def waiting_checks(self) -> tuple[AdmissionCheck, ...]:
        """The admission checks that hold the admission back (quota reserved, not all Ready)."""
        return tuple(c for c in self.checks if c.state != "Ready")


def _pod_set_assignment(admission: Mapping[str, Any]) -> Mapping[str, Any]:
    for assignment in admission.get("podSetAssignments") or []:
        if assignment.get("name") == POD_SET:
            return assignment
    return {}


def _checks(status: Mapping[str, Any]) -> tuple[tuple[AdmissionCheck, ...], tuple[Mapping[str, Any], ...]]:
    checks, updates = [], []
    for raw in status.get("admissionChecks") or []:
        checks.append(
            AdmissionCheck(
                str(raw.get("name") or ""), str(raw.get("state") or ""), str(raw.get("message") or "")
            )
        )
        updates += [u for u in raw.get("podSetUpdates") or [] if u.get("name") == POD_SET]
    return tuple(checks), tuple(updates)


def parse_workload(workload: Mapping[str, Any]) -> WorkloadView:
    """The view of a Workload as read from the API (any of our Workloads)."""
    status = workload.get("status") or {}
    conditions = status.get("conditions") or []
    reserved = _condition(conditions, COND_QUOTA_RESERVED)
    admission = status.get("admission") or {}
    assignment = _pod_set_assignment(admission) if _is_true(reserved) else {}
    checks, updates = _checks(status)
    return WorkloadView(
        name=(workload.get("metadata") or {}).get("name", ""),
        queue=(workload.get("spec") or {}).get("queueName", ""),
        active=(workload.get("spec") or {}).get("active", True) is not False,
        quota_reserved=_is_true(reserved),
        admitted=_is_true(_condition(conditions, COND_ADMITTED)),
        cluster_queue=admission.get("clusterQueue") if _is_true(reserved) else None,
        flavors=dict(assignment.get("flavors") or {}),
        pod_set_updates=updates,
        topology_assigned=bool(assignment.get("topologyAssignment")),
        eviction=parse_eviction(conditions),
        finished=_is_true(_condition(conditions, COND_FINISHED)),
        pending_reason="" if _is_true(reserved) else str((reserved or {}).get("reason") or ""),
        pending_message="" if _is_true(reserved) else str((reserved or {}).get("message") or ""),
        checks=checks,
        requeue_at=(status.get("requeueState") or {}).get("requeueAt"),
    )


# --------------------------------------------------------------------------- placement


class PlacementConflict(ValueError):
    """Kueue's assignment contradicts the job (or itself): the same node label with two values.
    Kueue fails its own Jobs permanently in this case (podset.ErrInvalidPodSetUpdate)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """What Kueue's admission adds to every rank Pod."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def flavor_names(view: WorkloadView) -> list[str]:
    """The ResourceFlavors the planner must read (once each) to place the Pods."""
    return sorted(set(view.flavors.values()))


def _merge_map(into: dict[str, str], extra: Mapping[str, str] | None, what: str) -> None:
    for key, value in (extra or {}).items():
        if into.get(key, value) != value:
            raise PlacementConflict(f"{what} {key!r}: {into[key]!r} and {value!r}")
        into[key] = value


def _merge_tolerations(into: list[dict[str, Any]], extra: Sequence[Mapping[str, Any]] | None) -> None:
    for toleration in extra or []:
        if dict(toleration) not in into:
            into.append(dict(toleration))


def placement(
    view: WorkloadView,
    flavors: Mapping[str, Mapping[str, Any]],
    node_selector: Mapping[str, str] | None = None,
) -> Placement:
    """The flavors' node labels and tolerations, then the admission checks' podSetUpdates, as
    Kueue's podset.FromAssignment and Merge do for its Jobs. `flavors`: ResourceFlavor objects
    by name (every name of flavor_names); `node_selector`: the job's own (spec.nodeSelector),
    which a flavor may not contradict."""
    selector = dict(node_selector or {})
    out = Placement()
    for name in flavor_names(view):
        if name not in flavors:
            raise KeyError(f"ResourceFlavor {name!r} was not read")
        flavor_spec = flavors[name].get("spec") or {}
        _merge_map(selector, flavor_spec.get("nodeLabels"), f"ResourceFlavor {name}: nodeSelector")
        _merge_map(out.node_selector, flavor_spec.get("nodeLabels"), f"ResourceFlavor {name}: nodeSelector")
        _merge_tolerations(out.tolerations, flavor_spec.get("tolerations"))
    for update in view.pod_set_updates:
        _merge_map(selector, update.get("nodeSelector"), "admission check: nodeSelector")
        _merge_map(out.node_selector, update.get("nodeSelector"), "admission check: nodeSelector")
        _merge_map(out.labels, update.get("labels"), "admission check: label")
        _merge_map(out.annotations, update.get("annotations"), "admission check: annotation")
        _merge_tolerations(out.tolerations, update.get("tolerations"))
    return out


def apply_placement(pod: Mapping[str, Any], where: Placement) -> dict[str, Any]:
    """A copy of a rank Pod (as trainingjob/build.py makes it) with the placement merged in:
    node selector and tolerations added to the job's own, labels and annotations added to the
    operator's (which win: they identify the Pod)."""
    meta = dict(pod.get("metadata") or {})
    spec = dict(pod.get("spec") or {})
    if where.node_selector:
        spec["nodeSelector"] = {**where.node_selector, **(spec.get("nodeSelector") or {})}
    if where.tolerations:
        own = [dict(t) for t in spec.get("tolerations") or []]
        spec["tolerations"] = own + [t for t in where.tolerations if t not in own]
    if where.labels:
        meta["labels"] = {**where.labels, **(meta.get("labels") or {})}
    if where.annotations:
        meta["annotations"] = {**where.annotations, **(meta.get("annotations") or {})}
    return {**pod, "metadata": meta, "spec": spec}


# --------------------------------------------------------------------------- queue position


VISIBILITY_API = f"/apis/visibility.{KUEUE_GROUP}/{KUEUE_VERSION}"


def pending_workloads_path(namespace: str, local_queue: str, limit: int = 1000) -> str:
    """The visibility API's pending workloads of one LocalQueue, in queue order (Kueue's
    VisibilityOnDemand, on by default; the operator needs `get` on
    visibility.kueue.x-k8s.io localqueues/pendingworkloads)."""
    return f"{VISIBILITY_API}/namespaces/{namespace}/localqueues/{local_queue}/pendingworkloads?limit={limit}"


@dataclass(frozen=True, slots=True)
class QueuePosition:
    """0 is the head of the queue."""

    in_local_queue: int
    in_cluster_queue: int


def parse_position(summary: Mapping[str, Any], workload: str) -> QueuePosition | None:
    """The Workload's place in a PendingWorkloadsSummary; None when it is not pending there
    (admitted already, or in backoff: Kueue lists only the workloads it would admit next)."""
    for item in summary.get("items") or []:
        if (item.get("metadata") or {}).get("name") == workload:
            return QueuePosition(
                in_local_queue=int(item.get("positionInLocalQueue", 0)),
                in_cluster_queue=int(item.get("positionInClusterQueue", 0)),
            )
    return None


# --------------------------------------------------------------------------- what to do next


class Step(enum.Enum):
    """What the planner does with a queued job, given its Workload and its Pods."""

    CREATE_WORKLOAD = "CreateWorkload"
    """No Workload yet: create it (build_workload); no Pods."""
    WAIT = "Wait"
    """Not admitted: no Pods; the status says queued and why."""
    RUN = "Run"
    """Admitted: create the missing rank Pods with the placement; follow them as without Kueue."""
    SUSPEND = "Suspend"
    """Evicted, or no longer admitted, while Pods exist: delete them (checkpoint kept, no
    restart counted); the next step is RELEASE."""
    RELEASE = "Release"
    """Evicted, Pods gone, quota still reserved: send release_quota_status."""
    DONE = "Done"
    """The Workload is finished: nothing to do with the queue."""


def next_step(view: WorkloadView | None, pods_exist: bool) -> Step:
    """The queue's part of one reconcile of a job that names a queue."""
    if view is None:
        return Step.SUSPEND if pods_exist else Step.CREATE_WORKLOAD
    if view.finished:
        return Step.DONE
    if view.eviction is not None:
        if pods_exist:
            return Step.SUSPEND
        return Step.RELEASE if view.quota_reserved else Step.WAIT
    if view.admitted:
        return Step.RUN
    return Step.SUSPEND if pods_exist else Step.WAIT


# --------------------------------------------------------------------------- status text


def queued_message(view: WorkloadView, position: QueuePosition | None = None) -> str:
    """One line for the job's status while it waits: the queue, the place, what it waits for."""
    where = f"queued in LocalQueue {view.queue}"
    if position is not None:
        where += f" at position {position.in_local_queue + 1}"
    if not view.active:
        return f"{where}: deactivated (spec.active is false)"
    if view.quota_reserved and view.waiting_checks:
        names = ", ".join(f"{c.name} ({c.state})" for c in view.waiting_checks)
        cq = view.cluster_queue
        return f"{where}: quota reserved in ClusterQueue {cq}, waiting for admission checks {names}"
    if view.requeue_at:
        return f"{where}: requeued at {view.requeue_at} after {view.pending_reason or 'an eviction'}"
    return f"{where}: {view.pending_message}" if view.pending_message else where


def eviction_event(eviction: Eviction, preemptor_name: str | None = None) -> str:
    """The Event's message when the operator suspends an evicted job: "Preempted by <workload>"
    (the preemptor's namespace/name when the planner resolved its uid, else its uid)."""
    if eviction.preempted:
        who = preemptor_name or eviction.preemptor_uid or "another workload"
        why = f" ({eviction.preemption_reason})" if eviction.preemption_reason else ""
        return f"Preempted by {who}{why}; Pods deleted, checkpoint kept"
    if eviction.reason == REASON_PODS_READY_TIMEOUT:
        return (
            f"Evicted: not every rank was ready in time ({eviction.message}); Pods deleted, checkpoint kept"
        )
    return f"Evicted ({eviction.reason}): {eviction.message}; Pods deleted, checkpoint kept"


def preemptor_name(eviction: Eviction, workloads: Sequence[Mapping[str, Any]]) -> str | None:
    """`namespace/name` of the preempting Workload among `workloads` (as listed), by uid."""
    for wl in workloads:
        meta = wl.get("metadata") or {}
        if eviction.preemptor_uid and meta.get("uid") == eviction.preemptor_uid:
            return f"{meta.get('namespace')}/{meta.get('name')}"
    return None


def queue_status(
    view: WorkloadView | None, queue: str, position: QueuePosition | None = None
) -> dict[str, Any]:
    """`status.queue` of a queued TrainingJob (what `kubectl get tj` and describe can show)."""
    out: dict[str, Any] = {"name": queue}
    if view is None:
        return {**out, "state": "Pending", "message": f"creating its Workload in LocalQueue {queue}"}
    out["workload"] = view.name
    if view.cluster_queue:
        out["clusterQueue"] = view.cluster_queue
    if view.eviction is not None and view.quota_reserved:
        # evicted, the gang stopping: the quota goes back once its Pods are gone
        return {**out, "state": "Evicted", "reason": view.eviction.reason, "message": view.eviction.message}
    if view.admitted:
        return {**out, "state": "Admitted"}
    out["state"] = "Queued"
    if view.eviction is not None:
        out["lastEviction"] = view.eviction.reason  # queued again after it
    if position is not None:
        out["position"] = position.in_local_queue + 1
    if view.waiting_checks:
        out["waitingFor"] = [c.name for c in view.waiting_checks]
    return {**out, "message": queued_message(view, position)}
