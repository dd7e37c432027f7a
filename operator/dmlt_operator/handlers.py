"""kopf handlers: thin glue between events, the pure planner and the API module.

One timer per TrainingJob reconciles it from the job's status and an index of its Pods (the
index watches Pods without touching them: no finalizers, no annotations). Creation, resume
after an operator restart, failures, suspend and TTL all go through that one level-triggered
path, so there is exactly one place that decides and no two handlers race on a job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from dmlt_operator import GROUP, PLURAL, VERSION, metrics
from dmlt_operator import reconcile as rc
from dmlt_operator import resources as res
from dmlt_operator import status as st
from dmlt_operator.config import OperatorConfig
from dmlt_operator.kube import ApiError, Kube, describe_error, load_config
from dmlt_operator.spec import SpecError, check_job_name, parse_spec

# Only the timer interval must be known when the decorators run; everything else reaches the
# handlers through kopf.Memo (see configure()).
STARTUP_CONFIG = OperatorConfig.from_env()
FINALIZER = "dmlt.io/finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only our explicit events become Kubernetes Events, not every log line.
    settings.posting.level = logging.INFO
    # Re-establish watches regularly: a silently dead watch would stall the index.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # A job deleted while its timer runs (always the case for TTL deletion, which the timer
    # itself requests) keeps its finalizer until kopf sees the timer exit: poll every 2 s,
    # not kopf's default minute.
    settings.background.cancellation_polling = 2
    if "config" not in memo:
        memo.config = STARTUP_CONFIG
    if "kube" not in memo:
        load_config()
        memo.kube = Kube()
    if not memo.get("metrics_served"):
        metrics.serve(memo.config.metrics_port)
        memo.metrics_served = True
    logger.info("dmlt operator configured: %s", memo.config)


@kopf.index(
    "pods",
    labels={res.LABEL_MANAGED_BY: res.MANAGED_BY, res.LABEL_JOB: kopf.PRESENT},
)
def trainer_pods(namespace: str, labels: Any, body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, job name) → summaries of that job's Pods."""
    summary = st.summarize_pod(body)
    if summary is None:
        return {}
    return {(namespace, labels[res.LABEL_JOB]): summary}


def pods_of(index: kopf.Index, namespace: str, name: str) -> list[st.PodSummary]:
    """A snapshot of one job's Pods from the index.

    Sync handlers run in threads while the event loop keeps updating the index, so copying it
    can meet "dictionary changed size during iteration": copy again (it is small and quick).
    """
    for _ in range(100):
        try:
            return list(index.get((namespace, name), []))
        except RuntimeError:
            time.sleep(0.01)
    return list(index.get((namespace, name), []))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def check_spec(name: str, spec: Any, logger: Any, **_: Any) -> None:
    """Reject a bad spec loudly in the operator's log; the timer records it in status."""
    try:
        check_job_name(name)
        parse_spec(dict(spec))
    except SpecError as exc:
        raise kopf.PermanentError(str(exc)) from None
    logger.info("TrainingJob %s accepted; the reconcile timer takes it from here", name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=STARTUP_CONFIG.reconcile_interval_s)
def reconcile(
    body: Any,
    spec: Any,
    status: Any,
    namespace: str,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: Any,
    trainer_pods: kopf.Index,
    **_: Any,
) -> None:
    started = time.monotonic()
    try:
        reconcile_job(body, spec, status, namespace, name, patch, memo, trainer_pods, logger)
    except Exception as exc:
        metrics.RECONCILE_ERRORS.inc()
        delay = memo.config.reconcile_interval_s
        raise kopf.TemporaryError(f"reconcile failed: {exc}", delay=delay) from exc
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


def reconcile_job(
    body: Any,
    spec: Any,
    status: Any,
    namespace: str,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    index: kopf.Index,
    logger: Any,
) -> None:
    cfg: OperatorConfig = memo.config
    kube: Kube = memo.kube
    job = res.JobRef.from_body(body)
    old_status = dict(status or {})
    now = st.now_utc()

    try:
        check_job_name(name)
        job_spec = parse_spec(dict(spec))
    except SpecError as exc:
        _record_invalid(body, job, old_status, str(exc), now, patch, kube)
        return

    pods = pods_of(index, namespace, name)
    reports: dict[str, st.TrainerReport] = {}
    for pod in rc.logs_to_read(old_status, pods, job.uid):
        try:
            text = kube.read_pod_log(
                namespace, pod, res.TRAINER_CONTAINER, cfg.log_tail_lines, cfg.log_limit_bytes
            )
        except Exception as exc:  # progress is best effort: never let it stall the job
            logger.warning("Cannot read the log of %s: %s", pod, exc)
            continue
        if text:
            reports[pod] = st.parse_trainer_log(text)

    plan = rc.plan(job, job_spec, old_status, pods, reports, now)
    attempt = plan.status["attempt"]

    if plan.ensure_service:
        kube.create_service(res.build_service(job, job_spec))
    uids = {p.name: p.uid for p in pods}
    for pod_name in plan.delete_pods:
        kube.delete_pod(namespace, pod_name, uids.get(pod_name))
    created, refused = [], []
    for rank in plan.create_ranks:
        try:
            if kube.create_pod(res.build_rank_pod(job, job_spec, rank, attempt, cfg)):
                created.append(rank)
        except ApiError as exc:
            if exc.status is not None and exc.status >= 500:
                raise
            # Admission, quota or RBAC refusals: say so in status and events, retry next tick.
            refused.append(f"{res.pod_name(name, rank)}: {describe_error(exc)}")
    if refused:
        metrics.RECONCILE_ERRORS.inc()
        message = "Cannot create Pods: " + "; ".join(refused)
        if old_status.get("message") != message:
            kube.post_event(body, "Warning", "FailedCreatePod", message)
        plan.status["message"] = message[:1024]
    if created:
        metrics.PODS_CREATED.inc(len(created))
        kube.post_event(
            body, "Normal", "CreatedPods",
            f"Created {len(created)} Pod(s) of attempt {attempt}: "
            + ", ".join(res.pod_name(name, r) for r in created),
        )  # fmt: skip
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)
        if event.reason == "GangRestart":
            metrics.GANG_RESTARTS.inc()
            logger.warning("%s", event.message)

    for key, value in st.status_delta(old_status, plan.status).items():
        patch.status[key] = value
    metrics.PHASE_TRACKER.set(namespace, name, plan.status["phase"])

    if plan.delete_job:
        kube.delete_trainingjob(namespace, name)


def _record_invalid(
    body: Any,
    job: res.JobRef,
    old_status: dict[str, Any],
    message: str,
    now: Any,
    patch: kopf.Patch,
    kube: Kube,
) -> None:
    if old_status.get("phase") == rc.FAILED:
        return
    conditions = st.set_condition(
        old_status.get("conditions") or [], rc.COND_FAILED, True, "InvalidSpec", message, now,
        job.generation,
    )  # fmt: skip
    patch.status["phase"] = rc.FAILED
    patch.status["message"] = message[:1024]
    patch.status["conditions"] = conditions
    patch.status["completionTime"] = st.format_time(now)
    patch.status["observedGeneration"] = job.generation
    kube.post_event(body, "Warning", "InvalidSpec", message)
    metrics.PHASE_TRACKER.set(job.namespace, job.name, rc.FAILED)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def cleanup(namespace: str, name: str, uid: str, memo: kopf.Memo, trainer_pods: kopf.Index, **_: Any) -> None:
    """Owner references make the garbage collector delete the Service and Pods; deleting the
    Pods here as well stops training at once rather than when the collector gets to them."""
    kube: Kube = memo.kube
    for pod in pods_of(trainer_pods, namespace, name):
        if pod.owner_uid == uid and not pod.deleting:
            kube.delete_pod(namespace, pod.name, pod.uid)
    metrics.PHASE_TRACKER.forget(namespace, name)
