"""kopf handlers of TrainingJobs: thin glue between watch events, a work queue, the pure
planner and the API module.

Nothing here runs per job on a clock. kopf keeps two indexes (the jobs, and the Pods of each
job; the Pod watch is filtered server-side to the Pods this operator made). Every watch event
of a job or of one of its Pods only marks the job's key in a coalescing work queue
(core/workqueue.py). A few workers take keys from the queue, snapshot the job and its Pods from
the indexes on the event loop, and reconcile in kopf's thread pool: plan (a pure function),
act (create, delete, Events), then merge-patch `/status` if, and only if, it changed. Clock
deadlines (TTL, activeDeadlineSeconds, progress while rank 0 runs) come back as a wake-up time;
a long jittered resync is the safety net. Jobs carry no finalizer: their Service and Pods go
with them through owner references and the garbage collector.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from dmlt_operator.core import handlers as core
from dmlt_operator.core import metrics
from dmlt_operator.core.conditions import FAILED, now_utc
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.failures import INVALID_SPEC, at_step, classify
from dmlt_operator.core.kopf_setup import configure_kopf, watch_hook
from dmlt_operator.core.kube import TrainingJobKube
from dmlt_operator.core.objectqueue import ObjectQueue, Outcome, Wake
from dmlt_operator.core.objects import GROUP, JOB_KIND, JOB_PLURAL, VERSION, lean, managed_labels
from dmlt_operator.core.workqueue import GONE, WorkQueue
from dmlt_operator.trainingjob import admission as ad
from dmlt_operator.trainingjob import build as res
from dmlt_operator.trainingjob import kueue_io as kq
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import queueing as qu
from dmlt_operator.trainingjob.pods import PodSummary, summarize_pod
from dmlt_operator.trainingjob.progress import TrainerReport, parse_trainer_log
from dmlt_operator.trainingjob.spec import SpecError, TrainingJobSpec, check_job_name, parse_spec

PHASE_TRACKER = metrics.PhaseTracker(metrics.JOBS, rc.PHASES)
RECONCILE_METRICS = core.ReconcileMetrics(metrics.RECONCILE_ERRORS, metrics.RECONCILE_SECONDS)
STALE_RETRY_S = 1.0
"""A status write refused because the job changed since it was read: plan again this soon (the
change's own event normally wakes the job first)."""
POD_EVENTS_WINDOW_S = 0.2
"""A Pod's change wakes its job this much later, so that the few events of one transition (a
Pod created, scheduled, started; its sibling rank alike) make one reconcile and one status
write, not one each."""
STATUS_BATCH_S = 10.0
"""A status change that only details the ranks (a Pod scheduled, its container waiting, one
rank of several running) is written at most this often per job, and not while writers queue on
the rate limit; a new phase, condition or progress is written at once, with the details. Like
the Job controller's batching of Pod events, this makes a starting job's status two writes
(Pending, then Running; under a burst one, see first_pending), not one per step of its Pods,
and under a burst leaves the write rate to creating Pods. Long enough to cover a Pod's start
on simulated nodes (measured 2-16 s in a burst), short enough that a rank stuck in Pending
shows why within seconds."""
DETAIL_KEYS = frozenset({"ranks", "ready", "message"})
EXPECTED_PODS_S = 5.0
"""How long a job waits for the Pods it created to show in the Pod watch before it plans
without them (as the Kubernetes Job controller's expectations do)."""

JobKey = tuple[str, str]
log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig) -> None:
    """Register the TrainingJob handlers: two indexes, two wake-up hooks, the workers' start and
    stop. No timer, no create/resume/delete handler, hence no finalizer on jobs."""
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(shutdown)
    pod_labels = managed_labels(res.LABEL_JOB, kopf.PRESENT)
    kopf.index("v1", "pods", labels=pod_labels, registry=registry)(trainer_pods)
    kopf.index(GROUP, VERSION, JOB_PLURAL, registry=registry)(trainingjobs)
    watch_hook(registry, "v1", "pods", labels=pod_labels)(pod_event)
    watch_hook(registry, GROUP, VERSION, JOB_PLURAL)(job_event)
    # Kueue's Workloads of queued jobs. Without Kueue (no such CRD) kopf only warns that the
    # resource is unresolved and serves the rest; it starts watching if the CRD appears later.
    kopf.index(qu.KUEUE_GROUP, qu.KUEUE_VERSION, qu.WORKLOAD_PLURAL, labels=pod_labels, registry=registry)(
        kueue_workloads
    )
    watch_hook(registry, qu.KUEUE_GROUP, qu.KUEUE_VERSION, qu.WORKLOAD_PLURAL, labels=pod_labels)(
        workload_event
    )


@dataclass(slots=True, kw_only=True)
class JobQueue(ObjectQueue[JobKey]):
    """The TrainingJob work queue (its `objects`: the jobs index) and what else its workers
    read: the Pods index, Kueue's Workloads."""

    pods: Any = field(default_factory=dict)
    """The Pods index: (namespace, job name) → summaries of the job's Pods."""
    workloads: Any = field(default_factory=dict)
    """The Kueue Workloads index (empty without Kueue)."""
    flavors: kq.FlavorCache = field(default_factory=kq.FlavorCache)
    pending: kq.PendingCache = field(default_factory=kq.PendingCache)
    """Kueue's visibility API per LocalQueue (queue positions), shared by the workers."""

    def mark(self, key: JobKey, memo: kopf.Memo, urgent: bool = False, after: float = 0.0) -> None:
        """Queue `key` in `after` seconds (`urgent`: before the plain marks); the first mark
        starts the workers."""
        self.start(functools.partial(run_job, self, memo), "trainingjob")
        self.queue.add_after(key, after, urgent)

    def awaiting_pods(self, key: JobKey, now: float) -> bool:
        """Has the job created Pods that the Pod watch has not shown yet (and not for too long)?"""
        return self.awaiting(key, [p.name for p in self.pods.get(key, [])], now)

    def snapshot(self, key: JobKey) -> tuple[dict[str, Any], list[PodSummary]] | None:
        """The job (None when gone) and its Pods, as of now. Called on the event loop, so the
        indexes do not change under it."""
        body = self.current(key)
        if body is None:
            return None
        return body, list(self.pods.get(key, []))

    def workload(self, key: JobKey, body: Mapping[str, Any]) -> kq.WorkloadSeen:
        """The job's Kueue Workload as of now (on the event loop, like snapshot)."""
        uid = (body.get("metadata") or {}).get("uid") or ""
        return kq.workload_of(uid, list(self.workloads.get(key, [])), self.workloads.values())


async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: Any,
    trainingjobs: kopf.Index,
    trainer_pods: kopf.Index,
    kueue_workloads: kopf.Index,
    **_: Any,
) -> None:
    """Operator settings, the clients, and the TrainingJob workers."""
    cfg = core.start_memo(memo)
    configure_kopf(settings, cfg)
    memo.job_queue = JobQueue(
        WorkQueue(cfg.reconcile_interval_s), trainingjobs, settings.execution.executor,
        workers=cfg.workers, pods=trainer_pods, workloads=kueue_workloads,
    )  # fmt: skip
    logger.info("dmlt operator configured: %s", cfg)


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    jq: JobQueue | None = memo.get("job_queue")
    if jq is not None:
        await jq.stop()


async def trainer_pods(namespace: str, labels: Any, body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, job name) → summaries of that job's Pods. `async`: it runs on the event
    loop, so a worker's snapshot never meets the index half-updated."""
    summary = summarize_pod(body)
    if summary is None:
        return {}
    return {(namespace, labels[res.LABEL_JOB]): summary}


async def trainingjobs(namespace: str, name: str, body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, name) → the job as last seen (a plain dict of the watch event's object)."""
    return {(namespace, name): lean(body)}


async def kueue_workloads(namespace: str, labels: Any, body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, job name) → that job's Workloads (a plain dict of each)."""
    return {(namespace, labels[res.LABEL_JOB]): lean(body)}


async def workload_event(namespace: str, labels: Any, memo: kopf.Memo, **_: Any) -> None:
    """Any change of a job's Workload (admitted, evicted, …) wakes the job."""
    jq: JobQueue | None = memo.get("job_queue")
    if jq is not None:
        jq.mark((namespace, labels[res.LABEL_JOB]), memo)


async def job_event(namespace: str, name: str, body: Any, memo: kopf.Memo, **_: Any) -> None:
    """Any change of a job wakes it, except the change our own status write made."""
    jq: JobQueue | None = memo.get("job_queue")
    key = (namespace, name)
    if jq is not None and not jq.own_write(key, body.get("metadata", {}).get("resourceVersion")):
        jq.mark(key, memo)


async def pod_event(namespace: str, labels: Any, memo: kopf.Memo, **_: Any) -> None:
    """Any change of one of a job's Pods wakes the job, before jobs not yet started: what it
    needs is mostly its status brought up to date (a rank Running, a rank failed)."""
    jq: JobQueue | None = memo.get("job_queue")
    if jq is not None:
        jq.mark((namespace, labels[res.LABEL_JOB]), memo, urgent=True, after=POD_EVENTS_WINDOW_S)


async def run_job(jq: JobQueue, memo: kopf.Memo, key: JobKey) -> float | None:
    """A worker's run for one key: snapshot on the loop, reconcile in the thread pool; when to
    wake the key again. Raises (for a backoff) when the reconcile failed."""
    loop = asyncio.get_running_loop()
    if jq.awaiting_pods(key, loop.time()):
        return STALE_RETRY_S  # their watch events wake it sooner
    seen = jq.snapshot(key)
    if seen is None:
        PHASE_TRACKER.forget(*key)
        return GONE
    body, pods = seen
    workload = jq.workload(key, body)
    hold = max(jq.since_write(key, loop.time(), STATUS_BATCH_S), 0.0)
    context = contextvars.copy_context()  # kopf's event poster and our step marker
    call = functools.partial(sync_job, body, pods, memo, log, workload, hold)
    outcome = await loop.run_in_executor(jq.executor, context.run, call)
    return jq.settle(key, body, outcome, loop.time(), EXPECTED_PODS_S)


def sync_job(
    body: dict[str, Any],
    pods: list[PodSummary],
    memo: kopf.Memo,
    logger: Any,
    workload: kq.WorkloadSeen | None = None,
    hold: float = 0.0,
) -> Outcome:
    """One reconcile of one job (in a worker thread): plan and act, then write the status if
    it changed. A failure is reported on the job (status message, Event, metric), not raised.
    `hold`: seconds until a change of rank details alone may be written (STATUS_BATCH_S)."""
    subject = core.Subject(JOB_KIND, memo.kube, body, dict(body.get("status") or {}), {})
    limiter = getattr(memo.kube, "limiter", None)

    def status_wait(changed: Mapping[str, Any], wake: Wake) -> float:
        busy = limiter is not None and limiter.busy()
        if only_details(changed):
            return max(hold, STATUS_BATCH_S if busy else 0.0)
        if not (busy and first_pending(body, changed)):
            return 0.0
        if wake.created:
            # Its first Pods: hold. A Pod made again while held (one vanished): write now, so
            # that from here on a vanished rank counts against the job as usual.
            return 0.0 if pods else STATUS_BATCH_S
        return hold

    return core.sync_and_write(
        lambda status_patch: reconcile_job(body, pods, status_patch, memo, logger, workload),
        RECONCILE_METRICS, subject, memo.kube.patch_status, STALE_RETRY_S, logger,
        hold=status_wait,
    )  # fmt: skip


def first_pending(body: Mapping[str, Any], changed: Mapping[str, Any]) -> bool:
    """Is this the job's first status, phase Pending? Written while the writers queue on the rate
    limit, it is most often followed within seconds by Running: under a burst it waits up to
    STATUS_BATCH_S after the job's Pods were created (docs/operator.md, "Reconciling"), so
    that a starting job costs one status write, not two. Meanwhile its startTime (and the
    activeDeadlineSeconds clock) is when its first Pod was created (plan.gang_created)."""
    return not (body.get("status") or {}).get("phase") and changed.get("phase") == rc.PENDING


def only_details(changed: Mapping[str, Any]) -> bool:
    """Do the changed status keys (core.changed_status) touch only the ranks' details
    (DETAIL_KEYS), and something at all?"""
    return bool(changed) and changed.keys() <= DETAIL_KEYS


def read_reports(
    kube: TrainingJobKube, cfg: OperatorConfig, namespace: str, names: list[str], logger: Any
) -> dict[str, TrainerReport]:
    """The progress each named Pod's log tail reports; progress is best effort: a log that
    cannot be read is skipped, never a reason to stall the job."""
    reports: dict[str, TrainerReport] = {}
    for pod in names:
        try:
            text = kube.read_pod_log(
                namespace, pod, res.TRAINER_CONTAINER, cfg.log_tail_lines, cfg.log_limit_bytes
            )
        except Exception as exc:
            reason = classify(exc).reason
            metrics.RECONCILE_FAILURES.labels(kind=JOB_KIND, step="read pod logs", reason=reason).inc()
            logger.warning("Cannot read the log of %s: %s", pod, exc)
            continue
        if text:
            reports[pod] = parse_trainer_log(text)
    return reports


def reconcile_job(
    body: Mapping[str, Any],
    pods: list[PodSummary],
    status_patch: dict[str, Any],
    memo: kopf.Memo,
    logger: Any,
    workload: kq.WorkloadSeen | None = None,
) -> Wake:
    """Plan the job from its last status and its Pods, make the plan happen, and put the status
    changes in `status_patch`; when to look at the job again."""
    cfg: OperatorConfig = memo.config
    kube: TrainingJobKube = memo.kube
    job = res.JobRef.from_body(body)
    old_status = dict(body.get("status") or {})
    now = now_utc()

    at_step("check spec")
    try:
        check_job_name(job.name)
        job_spec = parse_spec(dict(body.get("spec") or {}))
        at_step("check queue")
        queue = kq.queue_input(kube, cfg, *_kueue_caches(memo), body, job_spec, workload)
    except (SpecError, qu.QueueError) as exc:
        fail_job(kube, body, job, old_status, str(exc), now, status_patch)
        return Wake()

    at_step("read pod logs")
    logs = rc.logs_to_read(old_status, pods, job.uid, enabled=not cfg.progress.enabled)
    reports = read_reports(kube, cfg, job.namespace, logs, logger)
    at_step("plan")
    plan = rc.plan(job, job_spec, old_status, pods, reports, now, queue)
    if queue is not None:
        at_step("write workload")
        kq.apply_workload_plan(kube, job, plan)
    subject = core.Subject(JOB_KIND, kube, body, old_status, status_patch)
    made = apply_plan(plan, subject, job, job_spec, pods, cfg, logger)
    invalid = made.invalid_message("the job's Service and Pods")
    if invalid is not None:
        fail_job(kube, body, job, old_status, invalid, now, status_patch, "create pods")
        remove_pods(kube, job, pods, made.created)
        return Wake()
    status_patch.update(rc.status_delta(old_status, plan.status))
    PHASE_TRACKER.set(job.namespace, job.name, plan.status["phase"])
    if plan.delete_job:
        at_step("delete job")
        kube.delete_trainingjob(job.namespace, job.name)
        return Wake()
    after = next_wake(cfg, job, job_spec, plan.status, pods, now)
    refresh = rc.position_refresh_after(plan.status, queue)
    after = refresh if after is None or (refresh is not None and refresh < after) else after
    return Wake(after, bool(made.refused), tuple(made.created))


def next_wake(
    cfg: OperatorConfig,
    job: res.JobRef,
    spec: TrainingJobSpec,
    status: Mapping[str, Any],
    pods: list[PodSummary],
    now: datetime,
) -> float | None:
    """When the job must be looked at again though no event may come: its next clock deadline,
    or, without a progress receiver, the next read of rank 0's log while it runs."""
    wake = rc.requeue_after(spec, status, now)
    if rc.logs_to_read(status, pods, job.uid, enabled=not cfg.progress.enabled):
        wake = cfg.log_poll_s if wake is None else min(wake, cfg.log_poll_s)
    return wake


def fail_job(
    kube: TrainingJobKube,
    body: Any,
    job: res.JobRef,
    old: dict[str, Any],
    message: str,
    now: Any,
    status_patch: dict[str, Any],
    step: str = "check spec",
) -> None:
    """Fail the job for a spec that can never work (reason InvalidSpec)."""
    if core.record_failure(kube, body, job, old, INVALID_SPEC, message, now, status_patch):
        log.warning("TrainingJob %s/%s failed: %s", job.namespace, job.name, message)
        metrics.RECONCILE_FAILURES.labels(kind=JOB_KIND, step=step, reason=INVALID_SPEC).inc()
        PHASE_TRACKER.set(job.namespace, job.name, FAILED)


def remove_pods(kube: TrainingJobKube, job: res.JobRef, pods: list[PodSummary], created: list[str]) -> None:
    """Leave no Pods behind a job that failed while creating them: those the index knows and
    those this run created (which the index may not have seen yet)."""
    at_step("delete pods")
    known = {p.name: p.uid for p in pods if p.owner_uid == job.uid and not p.deleting}
    for pod_name in sorted(set(known) | set(created)):
        kube.delete_pod(job.namespace, pod_name, known.get(pod_name))


def _kueue_caches(memo: kopf.Memo) -> tuple[kq.FlavorCache, kq.PendingCache | None]:
    jq: JobQueue | None = memo.get("job_queue")
    return (jq.flavors, jq.pending) if jq is not None else (kq.FlavorCache(), None)


def rank_pod(plan: rc.Plan, job: res.JobRef, job_spec: Any, rank: int, cfg: OperatorConfig) -> dict[str, Any]:
    """A rank's Pod, with Kueue's placement when the job was admitted through a queue."""
    pod = res.build_rank_pod(job, job_spec, rank, plan.status["attempt"], cfg)
    return ad.apply_placement(pod, plan.placement) if plan.placement is not None else pod


def apply_plan(
    plan: rc.Plan,
    subject: core.Subject,
    job: res.JobRef,
    job_spec: Any,
    pods: list[PodSummary],
    cfg: OperatorConfig,
    logger: Any,
) -> core.Creations:
    """Make the plan's Service, deletions, Pods and Events happen; the Pods made, and the
    children refused (the Service's refusals included)."""
    kube: TrainingJobKube = subject.kube
    attempt = plan.status["attempt"]
    service = core.Creations()
    if plan.ensure_service:
        at_step("create service")
        service.create(kube.create_service, res.build_service(job, job_spec))
    uids = {p.name: p.uid for p in pods}
    at_step("delete pods")
    for pod_name in plan.delete_pods:
        kube.delete_pod(job.namespace, pod_name, uids.get(pod_name))
    at_step("create pods")
    made = core.Creations(refused=service.refused, invalid=service.invalid)
    for rank in plan.create_ranks:
        # No Pods without their Service: a job whose Pods exist has its Service (plan_progress).
        if not (made.invalid or service.refused):
            made.create(kube.create_pod, rank_pod(plan, job, job_spec, rank, cfg))
    if made.invalid:
        return made
    made.report_refused(subject, plan.status, "Pods", "FailedCreatePod")
    if made.created:
        metrics.PODS_CREATED.inc(len(made.created))
        kube.post_event(
            subject.body, "Normal", "CreatedPods",
            f"Created {len(made.created)} Pod(s) of attempt {attempt}: " + ", ".join(made.created),
        )  # fmt: skip
    at_step("post events")
    unwritten = not subject.status.get("phase")
    announced = bool(made.created) or (unwritten and any(p.owner_uid == job.uid for p in pods))
    for event in plan.events:
        if event.reason == rc.PENDING and announced:
            continue  # the CreatedPods event announced the same moment (its status write held)
        kube.post_event(subject.body, event.type, event.reason, event.message)
        if event.reason == "GangRestart":
            metrics.GANG_RESTARTS.inc()
            logger.warning("%s", event.message)
    return made
