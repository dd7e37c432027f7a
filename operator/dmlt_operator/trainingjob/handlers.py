"""kopf handlers of TrainingJobs: thin glue between events, the pure planner and the API module.

One timer per TrainingJob reconciles it from the job's status and an index of its Pods (the
index watches Pods without touching them: no finalizers, no annotations). Creation, resume
after an operator restart, failures, suspend and TTL all go through that one level-triggered
path, so there is exactly one place that decides and no two handlers race on a job.
"""

from __future__ import annotations

import time
from typing import Any

import kopf
from dmlt_operator.core import handlers as core
from dmlt_operator.core import metrics
from dmlt_operator.core.conditions import FAILED, now_utc
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.failures import INVALID_SPEC, at_step, classify
from dmlt_operator.core.kube import TrainingJobKube
from dmlt_operator.core.objects import GROUP, JOB_KIND, JOB_PLURAL, VERSION, managed_labels
from dmlt_operator.trainingjob import build as res
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob.pods import PodSummary, summarize_pod
from dmlt_operator.trainingjob.progress import TrainerReport, parse_trainer_log
from dmlt_operator.trainingjob.spec import SpecError, check_job_name, parse_spec

PHASE_TRACKER = metrics.PhaseTracker(metrics.JOBS, rc.PHASES)
RECONCILE_METRICS = core.ReconcileMetrics(metrics.RECONCILE_ERRORS, metrics.RECONCILE_SECONDS)


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig) -> None:
    """Register the TrainingJob handlers; `cfg` gives the timer its interval."""
    kopf.on.startup(registry=registry)(configure)
    pod_labels = managed_labels(res.LABEL_JOB, kopf.PRESENT)
    kopf.index("pods", labels=pod_labels, registry=registry)(trainer_pods)
    kopf.on.create(GROUP, VERSION, JOB_PLURAL, registry=registry)(check_spec)
    kopf.on.resume(GROUP, VERSION, JOB_PLURAL, registry=registry)(check_spec)
    kopf.timer(GROUP, VERSION, JOB_PLURAL, interval=cfg.reconcile_interval_s, registry=registry)(reconcile)
    kopf.on.delete(GROUP, VERSION, JOB_PLURAL, optional=True, registry=registry)(cleanup)


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    core.configure_kopf(settings)
    core.start_memo(memo)
    logger.info("dmlt operator configured: %s", memo.config)


def trainer_pods(namespace: str, labels: Any, body: Any, **_: Any) -> dict[Any, Any]:
    """(namespace, job name) → summaries of that job's Pods."""
    summary = summarize_pod(body)
    if summary is None:
        return {}
    return {(namespace, labels[res.LABEL_JOB]): summary}


def pods_of(index: kopf.Index, namespace: str, name: str) -> list[PodSummary]:
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


def check_spec(name: str, spec: Any, logger: Any, **_: Any) -> None:
    """Reject a bad spec loudly in the operator's log; the timer records it in status."""
    core.accept_spec(JOB_KIND, name, lambda: (check_job_name(name), parse_spec(dict(spec))), logger)


def reconcile(memo: kopf.Memo, trainer_pods: kopf.Index, logger: Any, **kwargs: Any) -> None:
    """The timer: one timed reconcile_job; any error is retried by kopf."""
    job = [kwargs[key] for key in ("body", "spec", "status", "namespace", "name", "patch")]
    core.reconcile_timed(
        lambda: reconcile_job(*job, memo, trainer_pods, logger),
        RECONCILE_METRICS,
        memo.config.reconcile_interval_s,
        core.Subject(JOB_KIND, memo.kube, kwargs["body"], dict(kwargs["status"] or {}), kwargs["patch"]),
    )


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
    kube: TrainingJobKube = memo.kube
    job = res.JobRef.from_body(body)
    old_status = dict(status or {})
    now = now_utc()

    at_step("check spec")
    try:
        check_job_name(name)
        job_spec = parse_spec(dict(spec))
    except SpecError as exc:
        fail_job(kube, body, job, old_status, str(exc), now, patch)
        return

    at_step("read pods")
    pods = pods_of(index, namespace, name)
    at_step("read pod logs")
    logs = rc.logs_to_read(old_status, pods, job.uid, enabled=not cfg.progress.enabled)
    reports = read_reports(kube, cfg, namespace, logs, logger)
    at_step("plan")
    plan = rc.plan(job, job_spec, old_status, pods, reports, now)
    subject = core.Subject(JOB_KIND, kube, body, old_status, patch)
    made = apply_plan(plan, subject, job, job_spec, pods, cfg, logger)
    invalid = made.invalid_message("the job's Service and Pods")
    if invalid is not None:
        fail_job(kube, body, job, old_status, invalid, now, patch, "create pods")
        remove_pods(kube, job, pods_of(index, namespace, name), made.created)
        return
    for key, value in rc.status_delta(old_status, plan.status).items():
        patch.status[key] = value
    PHASE_TRACKER.set(namespace, name, plan.status["phase"])
    if plan.delete_job:
        at_step("delete job")
        kube.delete_trainingjob(namespace, name)


def fail_job(
    kube: TrainingJobKube,
    body: Any,
    job: res.JobRef,
    old: dict[str, Any],
    message: str,
    now: Any,
    patch: kopf.Patch,
    step: str = "check spec",
) -> None:
    """Fail the job for a spec that can never work (reason InvalidSpec)."""
    if core.record_failure(kube, body, job, old, INVALID_SPEC, message, now, patch):
        metrics.RECONCILE_FAILURES.labels(kind=JOB_KIND, step=step, reason=INVALID_SPEC).inc()
        PHASE_TRACKER.set(job.namespace, job.name, FAILED)


def remove_pods(kube: TrainingJobKube, job: res.JobRef, pods: list[PodSummary], created: list[str]) -> None:
    """Leave no Pods behind a job that failed while creating them: those the index knows and
    those this tick created (which the index may not have seen yet)."""
    at_step("delete pods")
    known = {p.name: p.uid for p in pods if p.owner_uid == job.uid and not p.deleting}
    for pod_name in sorted(set(known) | set(created)):
        kube.delete_pod(job.namespace, pod_name, known.get(pod_name))


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
        if not made.invalid:
            made.create(kube.create_pod, res.build_rank_pod(job, job_spec, rank, attempt, cfg))
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
    for event in plan.events:
        kube.post_event(subject.body, event.type, event.reason, event.message)
        if event.reason == "GangRestart":
            metrics.GANG_RESTARTS.inc()
            logger.warning("%s", event.message)
    return made


def cleanup(namespace: str, name: str, uid: str, memo: kopf.Memo, trainer_pods: kopf.Index, **_: Any) -> None:
    """Owner references make the garbage collector delete the Service and Pods; deleting the
    Pods here as well stops training at once rather than when the collector gets to them."""
    kube: TrainingJobKube = memo.kube
    for pod in pods_of(trainer_pods, namespace, name):
        if pod.owner_uid == uid and not pod.deleting:
            kube.delete_pod(namespace, pod.name, pod.uid)
    PHASE_TRACKER.forget(namespace, name)
