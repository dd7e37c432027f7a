"""The I/O around a queued TrainingJob's admission (docs/operator.md, "Queues"): what the
planner's queue step reads (the job's Workload from the index, the ResourceFlavors its admission
names, the priority class the job names), and the Workload writes its plan asks for.

The planner (trainingjob/plan.py) stays pure; this module only reads and writes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.kube import TrainingJobKube
from dmlt_operator.core.spec import SpecError
from dmlt_operator.trainingjob import admission as ad
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import queueing as qu
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import TrainingJobSpec
from kubernetes.client.exceptions import ApiException

FLAVOR_TTL_S = 60.0
"""How long a ResourceFlavor read stays good: flavors change rarely, and only new Pods read them."""
PENDING_TTL_S = 5.0
"""How long one LocalQueue's pending list from the visibility API stays good: a hundred jobs
waiting in one LocalQueue cost one request per this many seconds, not one each."""
UNAVAILABLE_RETRY_S = 300.0
"""After the visibility API answered 404 (not installed) or 403 (no RBAC): ask again this late."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkloadSeen:
    """The job's Workload as the index holds it, and the preemptor's namespace/name when
    Kueue named one that the index knows."""

    workload: dict[str, Any] | None = None
    preemptor: str | None = None


def workload_of(
    job_uid: str, workloads: Iterable[Mapping[str, Any]], everyone: Iterable[Any]
) -> WorkloadSeen:
    """The job's own Workload among those indexed under its name (an old job of the same name
    may still have one), and who preempted it. `everyone`: the index's stores, searched only
    when Kueue names a preemptor."""
    own = [
        w
        for w in workloads
        if ((w.get("metadata") or {}).get("labels") or {}).get(qu.JOB_UID_LABEL) == job_uid
    ]
    if not own:
        return WorkloadSeen()
    workload = dict(own[-1])
    eviction = ad.parse_eviction((workload.get("status") or {}).get("conditions") or [])
    if eviction is None or not eviction.preemptor_uid:
        return WorkloadSeen(workload)
    listed = [w for store in everyone for w in store]
    return WorkloadSeen(workload, ad.preemptor_name(eviction, listed))


@dataclass(slots=True)
class FlavorCache:
    """ResourceFlavors by name, read at most once a minute (shared by the workers)."""

    ttl_s: float = FLAVOR_TTL_S
    entries: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, kube: TrainingJobKube, name: str) -> dict[str, Any]:
        """The flavor; an empty one (no node labels, no tolerations) when it does not exist."""
        now = time.monotonic()
        with self.lock:
            hit = self.entries.get(name)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        obj = kube.read_cluster_object(qu.KUEUE_GROUP, qu.KUEUE_VERSION, qu.RESOURCE_FLAVOR_PLURAL, name)
        obj = obj or {"metadata": {"name": name}, "spec": {}}
        with self.lock:
            self.entries[name] = (now, obj)
        return obj


@dataclass(slots=True)
class PendingCache:
    """Kueue's visibility API: the pending Workloads of each LocalQueue, in queue order, read at
    most once per `ttl_s` per LocalQueue (shared by the workers). Positions are best effort: an
    API that is absent, forbidden or failing means no position, logged once, never an error."""

    ttl_s: float = PENDING_TTL_S
    entries: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    unavailable_until: float = 0.0
    """While the API is known absent or forbidden (monotonic time): no request at all."""
    logged: set[str] = field(default_factory=set)
    """What was logged already (each kind of failure once)."""

    @property
    def available(self) -> bool:
        """Worth asking (the planner refreshes a queued job's position only then)."""
        return time.monotonic() >= self.unavailable_until

    def position(
        self, kube: TrainingJobKube, namespace: str, queue: str, workload: str
    ) -> ad.QueuePosition | None:
        """`workload`'s place in LocalQueue `queue`; None when not listed or not known."""
        summary = self.summary(kube, namespace, queue)
        return ad.parse_position(summary, workload) if summary is not None else None

    def summary(self, kube: TrainingJobKube, namespace: str, queue: str) -> dict[str, Any] | None:
        """The LocalQueue's PendingWorkloadsSummary, from the cache or read (under the lock, so
        workers asking for the same queue at once make one request)."""
        key = (namespace, queue)
        with self.lock:
            now = time.monotonic()
            if now < self.unavailable_until:
                return None
            hit = self.entries.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1]
            summary = self._read(kube, namespace, queue, now)
            self.entries[key] = (now, summary)
            return summary

    def _read(self, kube: TrainingJobKube, namespace: str, queue: str, now: float) -> dict[str, Any] | None:
        try:
            return kube.read_pending_workloads(ad.pending_workloads_path(namespace, queue))
        except ApiException as exc:
            if exc.status == 404 and _no_such_queue(exc):
                return None  # this LocalQueue does not exist (yet): Kueue says so in its status
            if exc.status in (403, 404):
                self.unavailable_until = now + UNAVAILABLE_RETRY_S
                what = "not served" if exc.status == 404 else "forbidden"
            else:
                what = f"failing ({exc.status} {exc.reason})"
        except Exception as exc:  # noqa: BLE001 - a timeout, a refused connection: no position
            what = f"failing ({type(exc).__name__})"
        self._log_once(what)
        return None

    def _log_once(self, what: str) -> None:
        if what not in self.logged:
            self.logged.add(what)
            log.warning(
                "Kueue's visibility API (%s) is %s: queued jobs show no queue position",
                ad.VISIBILITY_API, what,
            )  # fmt: skip


def _no_such_queue(exc: ApiException) -> bool:
    """A 404 of the visibility API itself about the LocalQueue (it is served, the queue is
    not there), not the apiserver's 404 for an API that is not served at all."""
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return details.get("kind") == "localqueue"


def read_priority(kube: TrainingJobKube, metadata: Mapping[str, Any]) -> qu.Priority | None:
    """The WorkloadPriorityClass the job's label names; SpecError when it does not exist."""
    name = qu.priority_class_name(metadata)
    if name is None:
        return None
    obj = kube.read_cluster_object(qu.KUEUE_GROUP, qu.KUEUE_VERSION, qu.WORKLOAD_PRIORITY_CLASS_PLURAL, name)
    if obj is None:
        raise SpecError(f"WorkloadPriorityClass {name!r} (label {qu.PRIORITY_CLASS_LABEL}) does not exist")
    return qu.Priority.from_object({"kind": "WorkloadPriorityClass", **obj})


def require_queue(kube: TrainingJobKube, cfg: OperatorConfig, namespace: str) -> None:
    """SpecError when this namespace requires every job to name a queue (requireQueueName)."""
    if not cfg.require_queue_name:
        return
    key, _, value = cfg.queue_namespace_label.partition("=")
    if key and kube.read_namespace_labels(namespace).get(key) != value:
        return
    raise SpecError(
        f"namespace {namespace} requires a Kueue LocalQueue: set the label {qu.QUEUE_LABEL} "
        "or spec.queueName (the operator's requireQueueName)"
    )


def queue_input(
    kube: TrainingJobKube,
    cfg: OperatorConfig,
    flavors: FlavorCache,
    pending: PendingCache | None,
    body: Mapping[str, Any],
    spec: TrainingJobSpec,
    seen: WorkloadSeen | None,
) -> rc.QueueInput | None:
    """What the planner's queue step needs; None for a job that names no queue and has no
    Workload. A job that names no queue any more but still has one gets a QueueInput without a
    name (the planner lets it leave the queue). Raises SpecError (or QueueError) for a job that
    can never be queued as written."""
    metadata = body.get("metadata") or {}
    name = qu.queue_name(metadata, spec)
    seen = seen or WorkloadSeen()
    if name is None:
        if seen.workload is None:
            if not (body.get("status") or {}).get("phase"):
                require_queue(kube, cfg, metadata.get("namespace") or "default")
            return None
        return rc.QueueInput(None, seen.workload, preemptor=seen.preemptor)
    view = ad.parse_workload(seen.workload) if seen.workload is not None else None
    replaced = (
        view is not None and not view.quota_reserved and qu.workload_outdated(seen.workload, spec, name)
    )
    priority = read_priority(kube, metadata) if view is None or replaced else None
    read = (
        {n: flavors.get(kube, n) for n in ad.flavor_names(view)} if view is not None and view.admitted else {}
    )
    position, tracked = None, False
    waiting = view is not None and not (view.quota_reserved or view.finished or replaced)
    if view is not None and waiting and pending is not None:
        position = pending.position(kube, metadata.get("namespace") or "default", name, view.name)
        tracked = pending.available
    return rc.QueueInput(name, seen.workload, read, priority, seen.preemptor, position, tracked)


def apply_workload_plan(kube: TrainingJobKube, job: JobRef, plan: rc.Plan) -> None:
    """The Workload writes of a plan: delete an outdated one (by uid), create it, patch its
    spec, patch its status (a 409 is left to the Workload's next watch event, which plans
    again)."""
    if plan.delete_workload is not None:
        kube.delete_workload(job.namespace, *plan.delete_workload)
    if plan.create_workload is not None:
        kube.create_workload(plan.create_workload)
    name = qu.workload_name(job)
    if plan.workload_patch is not None:
        kube.patch_workload(job.namespace, name, plan.workload_patch)
    if plan.workload_status is not None:
        kube.patch_workload(job.namespace, name, plan.workload_status, status=True)
