"""kopf handlers of TuningStudies: thin glue between watch events, the work queue, the planner
and the I/O modules.

Watch events of a study and of its trial jobs mark the study in a coalescing work queue
(tuningstudy/studyqueue.py). A worker's reconcile (`sync_study`), level-triggered like the
TrainingJob's: it reads the study's storage URL from its Secret (cached), opens the Optuna study
(creating it the first time), makes sure its MLflow parent run exists, lists the trials in the
database, takes the trial TrainingJobs from kopf's index (no LIST), asks the pure planner
(tuningstudy.plan) what to do, does it, and merge-patches the status if, and only if, it
changed. Nothing is remembered between reconciles except in the database, the API and the
status, so an operator restart, a lost database connection or a killed trial Pod is just another
reconcile. Deleting a study stays a kopf handler (with its finalizer): it drops the Optuna study.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kopf
from dmlt_operator.core import handlers as core
from dmlt_operator.core import metrics
from dmlt_operator.core.conditions import FAILED, MAX_MESSAGE, PENDING, TERMINAL, now_utc, set_condition
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.failures import INVALID_SPEC, at_step, current_step
from dmlt_operator.core.kopf_setup import watch_hook
from dmlt_operator.core.kube import TuningStudyKube
from dmlt_operator.core.objectqueue import Outcome, Wake
from dmlt_operator.core.objects import GROUP, JOB_PLURAL, STUDY_KIND, STUDY_PLURAL, VERSION, managed_labels
from dmlt_operator.core.workqueue import Backoff, WorkQueue
from dmlt_operator.tuningstudy import build as res
from dmlt_operator.tuningstudy import plan as sp
from dmlt_operator.tuningstudy import studyqueue as sq
from dmlt_operator.tuningstudy.build import StudyRef
from dmlt_operator.tuningstudy.mlflow_rest import (
    TAG_STUDY,
    TAG_STUDY_UID,
    TAG_TRIAL,
    MlflowError,
    MlflowRest,
    MlflowTracking,
)
from dmlt_operator.tuningstudy.spec import (
    SecretKeyRef,
    StudySpecError,
    TuningStudySpec,
    check_study_name,
    parse_study_spec,
)
from dmlt_operator.tuningstudy.store import (
    ATTR_PARENT_RUN,
    STORAGE_ERRORS,
    StudyConflict,
    StudyHandle,
    StudyStore,
)
from dmlt_operator.tuningstudy.store import describe_error as describe_storage_error
from dmlt_operator.tuningstudy.trials import TrialJob, TrialRecord, summarize_trial_job

log = logging.getLogger(__name__)
"""Routine progress goes here; kopf's per-object `logger` would also post each line as an Event."""

PHASE_TRACKER = metrics.PhaseTracker(metrics.STUDIES, sp.PHASES)
RECONCILE_METRICS = core.ReconcileMetrics(metrics.STUDY_RECONCILE_ERRORS, metrics.STUDY_RECONCILE_SECONDS)


SECRET_TTL_S = 600.0
"""How long a storage URL read from a Secret is used before the Secret is read again."""


class StorageUnavailable(Exception):
    """The study's database cannot be used right now (retried with backoff)."""


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig) -> None:
    """Register the TuningStudy handlers: two indexes, two wake-up hooks, the workers' start and
    stop, the spec check on create, and the deletion (which keeps kopf's finalizer on studies).
    No timer."""
    kopf.on.startup(registry=registry)(configure_studies)
    kopf.on.cleanup(registry=registry)(close_storages)
    kopf.on.create(GROUP, VERSION, STUDY_PLURAL, registry=registry)(check_study_spec)
    kopf.on.resume(GROUP, VERSION, STUDY_PLURAL, registry=registry)(check_study_spec)
    trial_labels = managed_labels(res.LABEL_STUDY, kopf.PRESENT)
    kopf.index(GROUP, VERSION, STUDY_PLURAL, registry=registry)(sq.tuningstudies)
    kopf.index(GROUP, VERSION, JOB_PLURAL, labels=trial_labels, registry=registry)(sq.study_trials)
    watch_hook(registry, GROUP, VERSION, STUDY_PLURAL)(sq.study_event)
    watch_hook(registry, GROUP, VERSION, JOB_PLURAL, labels=trial_labels)(sq.trial_job_event)
    # Not optional: with no timer left, this handler is what keeps kopf's finalizer on studies,
    # so that a deleted study's Optuna study is dropped (an optional one runs only if something
    # else holds a finalizer).
    kopf.on.delete(GROUP, VERSION, STUDY_PLURAL, registry=registry)(delete_study)


class SecretCache:
    """Storage URLs read from Secrets, kept `ttl_s`: a study's tick reads its Secret only when
    the URL is unknown, older than that, or was forgotten after a storage error (so a fixed or
    rotated Secret is read again). Thread-safe: study reconciles run in kopf's thread pool."""

    def __init__(self, ttl_s: float = SECRET_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self._clock = ttl_s, clock
        self._urls: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            entry = self._urls.get(key)
            if entry is None or self._clock() - entry[0] > self.ttl_s:
                return None
            return entry[1]

    def put(self, key: tuple[str, str, str], url: str) -> None:
        with self._lock:
            self._urls[key] = (self._clock(), url)

    def forget(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._urls.pop(key, None)


async def configure_studies(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: Any,
    tuningstudies: kopf.Index,
    study_trials: kopf.Index,
    **_: Any,
) -> None:
    """The clients of studies (storage, MLflow), the Secret cache and the study work queue.

    A study that something outside the watch holds up (its database or Secret, a trial job the
    apiserver refuses) is retried with backoff up to the study retry interval
    (DMLT_STUDY_RECONCILE_INTERVAL_SECONDS)."""
    cfg = core.start_memo(memo)
    retry_s = cfg.study_reconcile_interval_s
    queue: WorkQueue[sq.StudyKey] = WorkQueue(cfg.reconcile_interval_s, Backoff(min(1.0, retry_s), retry_s))
    memo.study_queue = sq.StudyQueue(
        queue, tuningstudies, settings.execution.executor,
        workers=sq.STUDY_WORKERS, trials=study_trials, sync=sync_study,
    )  # fmt: skip
    if "secret_cache" not in memo:
        memo.secret_cache = SecretCache()
    if "study_store" not in memo:
        memo.study_store = StudyStore(cfg.storage_pool_size, cfg.storage_connect_timeout_s)
    if "mlflow_client" not in memo:
        memo.mlflow_client = functools.partial(MlflowRest, timeout_s=cfg.mlflow_timeout_s)
    logger.info(
        "TuningStudy reconciler configured (default storage Secret %r, key %r)",
        cfg.default_storage_secret, cfg.default_storage_secret_key,
    )  # fmt: skip


async def close_storages(memo: kopf.Memo, **_: Any) -> None:
    queue: sq.StudyQueue | None = memo.get("study_queue")
    if queue is not None:
        await queue.stop()
    store = memo.get("study_store")
    if store is not None:
        store.close()


def check_study_spec(name: str, spec: Any, logger: Any, **_: Any) -> None:
    """Reject a bad spec loudly in the operator's log; the reconcile records it in status."""
    core.accept_spec(STUDY_KIND, name, lambda: (check_study_name(name), parse_study_spec(dict(spec))), logger)


def sync_study(body: dict[str, Any], jobs: list[TrialJob], memo: kopf.Memo, logger: Any = log) -> Outcome:
    """One reconcile of one study (in a worker thread): plan and act, then write the status if
    it changed. A failure is reported on the study (status message, Event, metric), not raised."""
    status, spec = dict(body.get("status") or {}), body.get("spec") or {}
    subject = core.Subject(STUDY_KIND, memo.kube, body, status, {})
    return core.sync_and_write(
        lambda status_patch: reconcile_study_tick(body, spec, status, status_patch, memo, logger, jobs),
        RECONCILE_METRICS, subject, memo.kube.patch_study_status, sq.STALE_RETRY_S, logger,
        outage=(StorageUnavailable, metrics.STUDY_STORAGE_ERRORS),
    )  # fmt: skip


def storage_secret(spec: TuningStudySpec, cfg: OperatorConfig) -> SecretKeyRef | None:
    """The Secret holding the study's database URL: its own, else the operator's default."""
    if spec.storage.secret_ref is not None:
        return spec.storage.secret_ref
    if cfg.default_storage_secret:
        return SecretKeyRef(name=cfg.default_storage_secret, key=cfg.default_storage_secret_key)
    return None


def storage_url(
    ref: StudyRef, secret: SecretKeyRef | None, kube: TuningStudyKube, cache: SecretCache | None = None
) -> tuple[SecretKeyRef, str]:
    """(the Secret, the URL in it, from `cache` while it knows it); StorageUnavailable saying
    what is missing."""
    if secret is None:
        raise StorageUnavailable(
            "No Optuna storage: set spec.storage.secretRef, or install the chart's PostgreSQL "
            "(the operator's DMLT_DEFAULT_STORAGE_SECRET)"
        )
    key = (ref.namespace, secret.name, secret.key)
    url = cache.get(key) if cache is not None else None
    if url:
        return secret, url
    url = kube.read_secret_value(*key)
    if url and cache is not None:
        cache.put(key, url)
    if not url:
        raise StorageUnavailable(
            f"Secret {ref.namespace}/{secret.name} with key {secret.key!r} (the Optuna storage URL) "
            "was not found; trial Pods read it from the study's namespace"
        )
    return secret, url


def parent_run_params(spec: TuningStudySpec) -> dict[str, Any]:
    return {
        "algorithm": spec.algorithm.name,
        "seed": spec.algorithm.seed,
        "max_trials": spec.max_trials,
        "parallelism": spec.parallelism,
        "max_failed_trials": spec.max_failed_trials,
        "objective": spec.objective.metric,
        "direction": spec.objective.direction,
        "pruner": spec.pruner.name,
        "search_space": json.dumps(
            [p.model_dump(by_alias=True, exclude_none=True) for p in spec.parameters], sort_keys=True
        ),
    }


@dataclass(slots=True)
class StorageGuard:
    """Turns a database that is out of reach into a status report and StorageUnavailable."""

    ref: StudyRef
    old: dict[str, Any]
    now: Any
    status_patch: MutableMapping[str, Any]
    url: str = ""

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except StorageUnavailable as exc:
            self.record(str(exc))
            raise
        except STORAGE_ERRORS as exc:
            message = f"Optuna storage unavailable: {describe_storage_error(exc, self.url)}"
            self.record(message)
            raise StorageUnavailable(message) from None

    def record(self, message: str) -> None:
        """Say in status that the database is out of reach; the phase stays what it was."""
        ref, old, status_patch = self.ref, self.old, self.status_patch
        conditions = set_condition(
            old.get("conditions") or [], sp.COND_STORAGE, False, "StorageUnavailable", message, self.now,
            ref.generation,
        )  # fmt: skip
        if conditions != (old.get("conditions") or []):
            status_patch["conditions"] = conditions
        if old.get("message") != message[:MAX_MESSAGE]:
            status_patch["message"] = message[:MAX_MESSAGE]
        if not old.get("phase"):
            status_patch["phase"] = PENDING
            status_patch["studyName"] = ref.optuna_name
        PHASE_TRACKER.set(ref.namespace, ref.name, old.get("phase") or PENDING)


def _open_storage(
    guard: StorageGuard, ref: StudyRef, spec: TuningStudySpec, memo: kopf.Memo
) -> tuple[SecretKeyRef, Any]:
    """The study's Secret and its open Optuna study. After a storage error the cached URL is
    forgotten, so the next reconcile reads the Secret again."""
    cache: SecretCache | None = memo.get("secret_cache")
    wanted = storage_secret(spec, memo.config)
    try:
        with guard.errors():
            secret, guard.url = storage_url(ref, wanted, memo.kube, cache)
            return secret, memo.study_store.open_study(
                guard.url, ref.optuna_name, spec.objective.direction, ref.uid
            )
    except StorageUnavailable:
        if cache is not None and wanted is not None:
            cache.forget((ref.namespace, wanted.name, wanted.key))
        raise


@dataclass(frozen=True, slots=True)
class Tracking:
    """The study's MLflow side this reconcile: its client, parent run, and why trials must wait."""

    uri: str
    client: MlflowTracking | None
    parent: str | None
    blocked: str | None


def reconcile_study_tick(
    body: Any,
    spec: Any,
    status: Any,
    status_patch: MutableMapping[str, Any],
    memo: kopf.Memo,
    logger: Any,
    jobs: Sequence[TrialJob],
) -> Wake:
    """Plan the study from its last status, its trials in the database and its trial jobs
    (`jobs`, from the index), make the plan happen, and put the status changes in
    `status_patch`; when to look at the study again."""
    cfg: OperatorConfig = memo.config
    kube: TuningStudyKube = memo.kube
    store: StudyStore = memo.study_store
    ref = StudyRef.from_body(body)
    old = dict(status or {})
    now = now_utc()

    at_step("check spec")
    try:
        check_study_name(ref.name)
        study_spec = parse_study_spec(dict(spec))
        # The trial template first: its errors must not hide behind the storage's.
        res.check_trial_job(ref, study_spec, storage_secret(study_spec, cfg))
    except StudySpecError as exc:
        _record_failed(body, ref, old, "InvalidSpec", str(exc), status_patch, kube)
        return Wake()
    if old.get("phase") in TERMINAL and not sp.needs_finalize(old):
        PHASE_TRACKER.set(ref.namespace, ref.name, old["phase"])
        return Wake()

    guard = StorageGuard(ref, old, now, status_patch)
    at_step("open storage")
    try:
        secret, handle = _open_storage(guard, ref, study_spec, memo)
    except StudyConflict as exc:
        _record_failed(body, ref, old, "StudyConflict", str(exc), status_patch, kube)
        return Wake()

    at_step("connect to MLflow")
    tracking, handle = _tracking(memo, store, handle, ref, study_spec, old, cfg)
    at_step("list trials")
    with guard.errors():
        trials = store.list_trials(handle)

    at_step("plan")
    plan = sp.plan(
        ref, study_spec, old, trials, jobs, now,
        tracking=bool(tracking.uri), parent_run_id=tracking.parent, blocked=tracking.blocked,
        model_name=res.registered_model_name(study_spec, ref),
    )  # fmt: skip
    conditions = set_condition(
        plan.status.get("conditions") or [], sp.COND_STORAGE, True, "Connected",
        f"Optuna study {ref.optuna_name} in the database of Secret {secret.name}", now, ref.generation,
    )  # fmt: skip
    at_step("act on the plan")
    with guard.errors():
        made = _act(plan, kube, store, handle, ref, study_spec, trials, secret, tracking.parent)
    if not _announce(made, plan, core.Subject(STUDY_KIND, kube, body, old, status_patch), ref):
        return Wake()
    if plan.finalize is not None:
        at_step("finalize")
        conditions = _finalize(plan, conditions, tracking, ref, body, kube, now, logger)
    plan.status["conditions"] = conditions

    status_patch.update(sp.status_delta(old, plan.status))
    PHASE_TRACKER.set(ref.namespace, ref.name, plan.status["phase"])
    after = sp.requeue_after(plan.status, tracking.blocked, cfg.study_reconcile_interval_s)
    return Wake(after, bool(made.refused), tuple(made.created))


def _announce(made: core.Creations, plan: sp.StudyPlan, subject: core.Subject, ref: StudyRef) -> bool:
    """Report the trial jobs made and refused, and the plan's events; False when a trial job was
    refused as invalid, which fails the study."""
    kube: TuningStudyKube = subject.kube
    invalid = made.invalid_message("trial jobs")
    if invalid is not None:
        _record_failed(
            subject.body, ref, dict(subject.status), INVALID_SPEC, invalid, subject.status_patch, kube
        )
        return False
    if made.created:
        metrics.TRIAL_JOBS_CREATED.inc(len(made.created))
        kube.post_event(
            subject.body, "Normal", "CreatedTrials", "Created trial job(s): " + ", ".join(made.created)
        )
    made.report_refused(subject, plan.status, "trial jobs", "FailedCreateTrial")
    at_step("post events")
    for event in plan.events:
        kube.post_event(subject.body, event.type, event.reason, event.message)
    return True


def _tracking(
    memo: kopf.Memo,
    store: StudyStore,
    handle: StudyHandle,
    ref: StudyRef,
    spec: TuningStudySpec,
    old: dict[str, Any],
    cfg: OperatorConfig,
) -> tuple[Tracking, StudyHandle]:
    """The MLflow client and the study's parent run, created (and kept in the study) once."""
    uri = res.tracking_uri(spec, cfg.default_tracking_uri)
    client: MlflowTracking | None = None
    blocked = None
    parent = handle.user_attrs.get(ATTR_PARENT_RUN)
    if uri:
        try:
            client = memo.mlflow_client(uri)
        except MlflowError as exc:
            blocked = f"MLflow unusable: {exc}"
    if client is not None and not parent and old.get("phase") not in TERMINAL:
        try:
            parent = client.ensure_parent_run(
                res.experiment_name(spec), ref.name, ref.optuna_name, ref.uid, parent_run_params(spec)
            )
            handle = store.set_user_attr(handle, ATTR_PARENT_RUN, parent)
        except MlflowError as exc:
            blocked = f"Waiting for MLflow to create the study's parent run ({exc})"
            log.warning("%s: %s", ref.optuna_name, blocked)
    return Tracking(uri, client, parent, blocked), handle


def _act(
    plan: sp.StudyPlan,
    kube: TuningStudyKube,
    store: StudyStore,
    handle: StudyHandle,
    ref: StudyRef,
    spec: TuningStudySpec,
    trials: list[TrialRecord],
    secret: SecretKeyRef,
    parent: str | None,
) -> core.Creations:
    """Tell, delete, create and ask as the plan says; the trial jobs made and refused."""
    for tell in plan.tells:
        if store.tell(handle, tell.number, tell.state, tell.value):
            metrics.TRIALS_TOLD.labels(state=tell.state).inc()
            log.info("%s: told trial %d %s (%s)", ref.optuna_name, tell.number, tell.state, tell.reason)
    for job_name in plan.delete_jobs:
        kube.delete_trainingjob(ref.namespace, job_name)
    by_number = {t.number: t for t in trials}
    made = core.Creations()

    def create(trial: TrialRecord) -> None:
        job = res.build_trial_job(ref, spec, trial.number, trial.params, secret, parent, trial.started)
        made.create(kube.create_trainingjob, job)

    for number in plan.create_trials:
        create(by_number[number])
    ask = store.asker(handle, spec, len(trials))
    for _ in range(plan.ask):
        if made.refused or made.invalid:
            break  # the apiserver refuses trial jobs: asking more would only pile up trials
        trial = ask()
        metrics.TRIALS_ASKED.inc()
        log.info("%s: asked trial %d: %s", ref.optuna_name, trial.number, res.format_params(trial.params))
        create(trial)
    return made


def _finalize(
    plan: sp.StudyPlan,
    conditions: list[dict[str, Any]],
    tracking: Tracking,
    ref: StudyRef,
    body: Any,
    kube: TuningStudyKube,
    now: Any,
    logger: Any,
) -> list[dict[str, Any]]:
    """End the parent run and register the best model; record the outcome in conditions."""
    final = plan.finalize
    assert final is not None
    client, parent = tracking.client, tracking.parent
    if client is not None and parent:
        try:
            client.finish_run(parent, final.run_status, final.metrics, final.tags)
        except MlflowError as exc:  # the run stays open in the UI; nothing depends on it
            logger.warning("Cannot finish the MLflow parent run %s: %s", parent, exc)
    if final.register is None:
        return conditions
    if client is None:
        message = "MLflow is unusable: the best model is not registered yet"
        return set_condition(
            conditions, sp.COND_MODEL, False, sp.MODEL_RETRY_REASON, message, now, ref.generation
        )
    return _register_best_model(plan, final.register, conditions, client, ref, body, kube, now)


def _register_best_model(
    plan: sp.StudyPlan,
    reg: sp.RegisterModel,
    conditions: list[dict[str, Any]],
    client: MlflowTracking,
    ref: StudyRef,
    body: Any,
    kube: TuningStudyKube,
    now: Any,
) -> list[dict[str, Any]]:
    tags = {TAG_STUDY: ref.optuna_name, TAG_STUDY_UID: ref.uid, TAG_TRIAL: str(reg.trial)}
    try:
        version = client.register_model(
            reg.name, reg.source, reg.run_id, tags,
            description=f"Best trial ({reg.trial}) of TuningStudy {ref.namespace}/{ref.name}",
        )  # fmt: skip
    except MlflowError as exc:
        metrics.STUDY_RECONCILE_ERRORS.inc()
        if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
            # MLflow refuses this registration (e.g. the model URI is not a model): no retry.
            message = f"MLflow refused to register the best model: {exc}"
            kube.post_event(body, "Warning", "RegistrationRejected", message)
            return set_condition(
                conditions, sp.COND_MODEL, False, "RegistrationRejected", message, now, ref.generation
            )
        message = f"Registering the best model failed (retrying): {exc}"
        log.warning("%s: %s", ref.optuna_name, message)
        return set_condition(
            conditions, sp.COND_MODEL, False, sp.MODEL_RETRY_REASON, message, now, ref.generation
        )
    plan.status["registeredModel"] = {"name": reg.name, "version": version, "trial": reg.trial}
    message = f"Trial {reg.trial}'s model is version {version} of registered model {reg.name}"
    kube.post_event(body, "Normal", "ModelRegistered", message)
    return set_condition(conditions, sp.COND_MODEL, True, "Registered", message, now, ref.generation)


def _record_failed(
    body: Any,
    ref: StudyRef,
    old: dict[str, Any],
    reason: str,
    message: str,
    status_patch: MutableMapping[str, Any],
    kube: TuningStudyKube,
) -> None:
    """Fail the study for a reason no retry fixes (a bad spec, a study of another owner).
    Nothing ran, so there is nothing to wrap up in MLflow either."""
    no_model = (sp.COND_MODEL, False, "StudyFailed", "The study failed: no model is registered")
    if core.record_failure(kube, body, ref, old, reason, message, now_utc(), status_patch, (no_model,)):
        metrics.RECONCILE_FAILURES.labels(kind=STUDY_KIND, step=current_step(), reason=reason).inc()
        status_patch["studyName"] = ref.optuna_name
        PHASE_TRACKER.set(ref.namespace, ref.name, FAILED)


def delete_study(body: Any, spec: Any, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Stop the trial jobs at once and drop the Optuna study (unless storage.retainStudy).

    Best effort and never retried: a deletion must not hang on an unreachable database. The
    garbage collector deletes the trial jobs anyway (owner references)."""
    kube: TuningStudyKube = memo.kube
    ref = StudyRef.from_body(body)
    PHASE_TRACKER.forget(ref.namespace, ref.name)
    try:
        for job in kube.list_trainingjobs(ref.namespace, res.study_selector(ref.name)):
            summary = summarize_trial_job(job)
            if summary is not None and summary.owner_uid == ref.uid and not summary.deleting:
                kube.delete_trainingjob(ref.namespace, summary.name)
    except Exception as exc:  # noqa: BLE001
        logger.warning("Cannot delete the trial jobs of %s: %s", ref.name, exc)
    try:
        study_spec = parse_study_spec(dict(spec))
    except StudySpecError:
        return
    if study_spec.storage.retain_study:
        log.info("Keeping Optuna study %s (storage.retainStudy)", ref.optuna_name)
        return
    url = ""
    try:
        _, url = storage_url(ref, storage_secret(study_spec, memo.config), kube)
        if memo.study_store.delete_study(url, ref.optuna_name, ref.uid):
            log.info("Deleted Optuna study %s", ref.optuna_name)
    except Exception as exc:  # noqa: BLE001
        logger.warning("Cannot delete Optuna study %s: %s", ref.optuna_name, describe_storage_error(exc, url))
