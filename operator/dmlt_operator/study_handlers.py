"""kopf handlers of TuningStudies: thin glue between the timer, the planner and the I/O modules.

One timer per study, level-triggered like the TrainingJob's: each tick reads the study's
storage URL from its Secret, opens the Optuna study (creating it the first time), makes sure
its MLflow parent run exists, lists the trials in the database and the trial TrainingJobs in
the API, asks the pure planner (study_reconcile.plan) what to do, does it, and writes status.
Nothing is remembered between ticks except in the database, the API and the status, so an
operator restart, a lost database connection or a killed trial Pod is just another tick.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import kopf

from dmlt_operator import GROUP, VERSION, metrics
from dmlt_operator import status as st
from dmlt_operator import study_reconcile as sr
from dmlt_operator import study_resources as res
from dmlt_operator.config import OperatorConfig
from dmlt_operator.kube import ApiError, Kube, describe_error, load_config
from dmlt_operator.mlflow_rest import TAG_STUDY, TAG_STUDY_UID, TAG_TRIAL, MlflowError, MlflowRest
from dmlt_operator.study_spec import (
    STUDY_PLURAL,
    SecretKeyRef,
    StudySpecError,
    TuningStudySpec,
    check_study_name,
    parse_study_spec,
)
from dmlt_operator.study_storage import STORAGE_ERRORS, StudyConflict, StudyStore
from dmlt_operator.study_storage import describe_error as describe_storage_error

STARTUP_CONFIG = OperatorConfig.from_env()
log = logging.getLogger(__name__)
"""Routine progress goes here; kopf's per-object `logger` would also post each line as an Event."""


class StorageUnavailable(Exception):
    """The study's database cannot be used right now (retried on the next tick)."""


@kopf.on.startup()
def configure_studies(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    if "config" not in memo:
        memo.config = STARTUP_CONFIG
    cfg: OperatorConfig = memo.config
    if "kube" not in memo:
        load_config()
        memo.kube = Kube()
    if "study_store" not in memo:
        memo.study_store = StudyStore(cfg.storage_pool_size, cfg.storage_connect_timeout_s)
    if "mlflow_client" not in memo:
        memo.mlflow_client = functools.partial(MlflowRest, timeout_s=cfg.mlflow_timeout_s)
    logger.info(
        "TuningStudy reconciler configured (default storage Secret %r, key %r)",
        cfg.default_storage_secret, cfg.default_storage_secret_key,
    )  # fmt: skip


@kopf.on.cleanup()
def close_storages(memo: kopf.Memo, **_: Any) -> None:
    store = memo.get("study_store")
    if store is not None:
        store.close()


@kopf.on.create(GROUP, VERSION, STUDY_PLURAL)
@kopf.on.resume(GROUP, VERSION, STUDY_PLURAL)
def check_study_spec(name: str, spec: Any, logger: Any, **_: Any) -> None:
    """Reject a bad spec loudly in the operator's log; the timer records it in status."""
    try:
        check_study_name(name)
        parse_study_spec(dict(spec))
    except StudySpecError as exc:
        raise kopf.PermanentError(str(exc)) from None
    logger.info("TuningStudy %s accepted; the reconcile timer takes it from here", name)


@kopf.timer(GROUP, VERSION, STUDY_PLURAL, interval=STARTUP_CONFIG.study_reconcile_interval_s)
def reconcile_study(
    body: Any, spec: Any, status: Any, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    started = time.monotonic()
    try:
        reconcile_study_tick(body, spec, status, patch, memo, logger)
    except StorageUnavailable as exc:
        metrics.STUDY_RECONCILE_ERRORS.inc()
        metrics.STUDY_STORAGE_ERRORS.inc()
        raise kopf.TemporaryError(str(exc), delay=memo.config.study_reconcile_interval_s) from None
    except Exception as exc:
        metrics.STUDY_RECONCILE_ERRORS.inc()
        delay = memo.config.study_reconcile_interval_s
        raise kopf.TemporaryError(f"reconcile failed: {exc}", delay=delay) from exc
    finally:
        metrics.STUDY_RECONCILE_SECONDS.observe(time.monotonic() - started)


def storage_secret(spec: TuningStudySpec, cfg: OperatorConfig) -> SecretKeyRef | None:
    """The Secret holding the study's database URL: its own, else the operator's default."""
    if spec.storage.secret_ref is not None:
        return spec.storage.secret_ref
    if cfg.default_storage_secret:
        return SecretKeyRef(name=cfg.default_storage_secret, key=cfg.default_storage_secret_key)
    return None


def storage_url(
    ref: res.StudyRef, spec: TuningStudySpec, cfg: OperatorConfig, kube: Kube
) -> tuple[SecretKeyRef, str]:
    """(the Secret, the URL in it); StorageUnavailable saying what is missing."""
    secret = storage_secret(spec, cfg)
    if secret is None:
        raise StorageUnavailable(
            "No Optuna storage: set spec.storage.secretRef, or install the chart's PostgreSQL "
            "(the operator's DMLT_DEFAULT_STORAGE_SECRET)"
        )
    url = kube.read_secret_value(ref.namespace, secret.name, secret.key)
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


def reconcile_study_tick(
    body: Any, spec: Any, status: Any, patch: kopf.Patch, memo: kopf.Memo, logger: Any
) -> None:
    cfg: OperatorConfig = memo.config
    kube: Kube = memo.kube
    store: StudyStore = memo.study_store
    ref = res.StudyRef.from_body(body)
    old = dict(status or {})
    now = st.now_utc()

    try:
        check_study_name(ref.name)
        study_spec = parse_study_spec(dict(spec))
    except StudySpecError as exc:
        _record_failed(body, ref, old, "InvalidSpec", str(exc), patch, kube)
        return
    if old.get("phase") in sr.TERMINAL and not sr.needs_finalize(old):
        metrics.STUDY_PHASE_TRACKER.set(ref.namespace, ref.name, old["phase"])
        return

    url = ""
    try:
        secret, url = storage_url(ref, study_spec, cfg, kube)
        res.check_trial_job(ref, study_spec, secret)
        handle = store.open_study(url, ref.optuna_name, study_spec.objective.direction, ref.uid)
    except StudySpecError as exc:
        _record_failed(body, ref, old, "InvalidSpec", str(exc), patch, kube)
        return
    except StudyConflict as exc:
        _record_failed(body, ref, old, "StudyConflict", str(exc), patch, kube)
        return
    except StorageUnavailable as exc:
        _record_storage_down(ref, old, str(exc), now, patch)
        raise
    except STORAGE_ERRORS as exc:
        message = f"Optuna storage unavailable: {describe_storage_error(exc, url)}"
        _record_storage_down(ref, old, message, now, patch)
        raise StorageUnavailable(message) from None

    tracking = res.tracking_uri(study_spec, cfg.default_tracking_uri)
    client: MlflowRest | None = None
    blocked = None
    parent = handle.user_attrs.get(res.ATTR_PARENT_RUN)
    if tracking:
        try:
            client = memo.mlflow_client(tracking)
        except MlflowError as exc:
            blocked = f"MLflow unusable: {exc}"
    if client is not None and not parent and old.get("phase") not in sr.TERMINAL:
        try:
            parent = client.ensure_parent_run(
                res.experiment_name(study_spec),
                ref.name,
                ref.optuna_name,
                ref.uid,
                parent_run_params(study_spec),
            )
            handle = store.set_user_attr(handle, res.ATTR_PARENT_RUN, parent)
        except MlflowError as exc:
            blocked = f"Waiting for MLflow to create the study's parent run ({exc})"
            log.warning("%s: %s", ref.optuna_name, blocked)

    try:
        trials = store.list_trials(handle)
    except STORAGE_ERRORS as exc:
        message = f"Optuna storage unavailable: {describe_storage_error(exc, url)}"
        _record_storage_down(ref, old, message, now, patch)
        raise StorageUnavailable(message) from None
    listed = kube.list_trainingjobs(ref.namespace, res.study_selector(ref.name))
    jobs = [j for j in (sr.summarize_trial_job(b) for b in listed) if j is not None]

    plan = sr.plan(
        ref, study_spec, old, trials, jobs, now,
        tracking=bool(tracking), parent_run_id=parent, blocked=blocked,
        model_name=res.registered_model_name(study_spec, ref),
    )  # fmt: skip
    conditions = st.set_condition(
        plan.status.get("conditions") or [], sr.COND_STORAGE, True, "Connected",
        f"Optuna study {ref.optuna_name} in the database of Secret {secret.name}", now, ref.generation,
    )  # fmt: skip

    try:
        for tell in plan.tells:
            if store.tell(handle, tell.number, tell.state, tell.value):
                metrics.TRIALS_TOLD.labels(state=tell.state).inc()
                log.info("%s: told trial %d %s (%s)", ref.optuna_name, tell.number, tell.state, tell.reason)
        for job_name in plan.delete_jobs:
            kube.delete_trainingjob(ref.namespace, job_name)
        by_number = {t.number: t for t in trials}
        created, refused = [], []
        for number in plan.create_trials:
            _create_trial_job(kube, ref, study_spec, by_number[number], secret, parent, created, refused)
        for _ in range(plan.ask):
            if refused:
                break  # the apiserver refuses trial jobs: asking more would only pile up trials
            trial = store.ask(handle, study_spec)
            metrics.TRIALS_ASKED.inc()
            log.info("%s: asked trial %d: %s", ref.optuna_name, trial.number, res.format_params(trial.params))
            _create_trial_job(kube, ref, study_spec, trial, secret, parent, created, refused)
    except STORAGE_ERRORS as exc:
        message = f"Optuna storage unavailable: {describe_storage_error(exc, url)}"
        _record_storage_down(ref, old, message, now, patch)
        raise StorageUnavailable(message) from None

    if created:
        metrics.TRIAL_JOBS_CREATED.inc(len(created))
        kube.post_event(body, "Normal", "CreatedTrials", "Created trial job(s): " + ", ".join(created))
    if refused:
        message = "Cannot create trial jobs: " + "; ".join(refused)
        if old.get("message") != message:
            kube.post_event(body, "Warning", "FailedCreateTrial", message)
        plan.status["message"] = message[:1024]
    for event in plan.events:
        kube.post_event(body, event.type, event.reason, event.message)

    if plan.finalize is not None:
        conditions = _finalize(plan, conditions, client, parent, ref, body, kube, now, logger)
    plan.status["conditions"] = conditions

    for key, value in sr.status_delta(old, plan.status).items():
        patch.status[key] = value
    metrics.STUDY_PHASE_TRACKER.set(ref.namespace, ref.name, plan.status["phase"])


def _create_trial_job(
    kube: Kube,
    ref: res.StudyRef,
    spec: TuningStudySpec,
    trial: sr.TrialRecord,
    secret: SecretKeyRef,
    parent: str | None,
    created: list[str],
    refused: list[str],
) -> None:
    job = res.build_trial_job(ref, spec, trial.number, trial.params, secret, parent, trial.started)
    name = job["metadata"]["name"]
    try:
        if kube.create_trainingjob(job):
            created.append(name)
    except ApiError as exc:
        if exc.status is not None and exc.status >= 500:
            raise
        # Admission, quota or RBAC refusals: say so in status and events, retry next tick.
        refused.append(f"{name}: {describe_error(exc)}")


def _finalize(
    plan: sr.StudyPlan,
    conditions: list[dict[str, Any]],
    client: MlflowRest | None,
    parent: str | None,
    ref: res.StudyRef,
    body: Any,
    kube: Kube,
    now: Any,
    logger: Any,
) -> list[dict[str, Any]]:
    """End the parent run and register the best model; record the outcome in conditions."""
    final = plan.finalize
    assert final is not None
    if client is not None and parent:
        try:
            client.finish_run(parent, final.run_status, final.metrics, final.tags)
        except MlflowError as exc:  # the run stays open in the UI; nothing depends on it
            logger.warning("Cannot finish the MLflow parent run %s: %s", parent, exc)
    reg = final.register
    if reg is None:
        return conditions
    if client is None:
        message = "MLflow is unusable: the best model is not registered yet"
        return st.set_condition(
            conditions, sr.COND_MODEL, False, sr.MODEL_RETRY_REASON, message, now, ref.generation
        )
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
            return st.set_condition(
                conditions, sr.COND_MODEL, False, "RegistrationRejected", message, now, ref.generation
            )
        message = f"Registering the best model failed (retrying): {exc}"
        log.warning("%s: %s", ref.optuna_name, message)
        return st.set_condition(
            conditions, sr.COND_MODEL, False, sr.MODEL_RETRY_REASON, message, now, ref.generation
        )
    plan.status["registeredModel"] = {"name": reg.name, "version": version, "trial": reg.trial}
    message = f"Trial {reg.trial}'s model is version {version} of registered model {reg.name}"
    kube.post_event(body, "Normal", "ModelRegistered", message)
    return st.set_condition(conditions, sr.COND_MODEL, True, "Registered", message, now, ref.generation)


def _record_storage_down(
    ref: res.StudyRef, old: dict[str, Any], message: str, now: Any, patch: kopf.Patch
) -> None:
    """Say in status that the database is out of reach; the phase stays what it was."""
    conditions = st.set_condition(
        old.get("conditions") or [],
        sr.COND_STORAGE,
        False,
        "StorageUnavailable",
        message,
        now,
        ref.generation,
    )
    if conditions != (old.get("conditions") or []):
        patch.status["conditions"] = conditions
    if old.get("message") != message[:1024]:
        patch.status["message"] = message[:1024]
    if not old.get("phase"):
        patch.status["phase"] = sr.PENDING
        patch.status["studyName"] = ref.optuna_name
    metrics.STUDY_PHASE_TRACKER.set(ref.namespace, ref.name, old.get("phase") or sr.PENDING)


def _record_failed(
    body: Any,
    ref: res.StudyRef,
    old: dict[str, Any],
    reason: str,
    message: str,
    patch: kopf.Patch,
    kube: Kube,
) -> None:
    """Fail the study for a reason no retry fixes (a bad spec, a study of another owner)."""
    if old.get("phase") == sr.FAILED:
        return
    now = st.now_utc()
    conditions = old.get("conditions") or []
    conditions = st.set_condition(conditions, sr.COND_FAILED, True, reason, message, now, ref.generation)
    # Nothing ran, so there is nothing to wrap up in MLflow either.
    conditions = st.set_condition(
        conditions, sr.COND_MODEL, False, "StudyFailed", "The study failed: no model is registered", now,
        ref.generation,
    )  # fmt: skip
    patch.status["phase"] = sr.FAILED
    patch.status["message"] = message[:1024]
    patch.status["conditions"] = conditions
    patch.status["completionTime"] = st.format_time(now)
    patch.status["observedGeneration"] = ref.generation
    patch.status["studyName"] = ref.optuna_name
    kube.post_event(body, "Warning", reason, message)
    metrics.STUDY_PHASE_TRACKER.set(ref.namespace, ref.name, sr.FAILED)


@kopf.on.delete(GROUP, VERSION, STUDY_PLURAL, optional=True)
def delete_study(body: Any, spec: Any, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Stop the trial jobs at once and drop the Optuna study (unless storage.retainStudy).

    Best effort and never retried: a deletion must not hang on an unreachable database. The
    garbage collector deletes the trial jobs anyway (owner references)."""
    kube: Kube = memo.kube
    ref = res.StudyRef.from_body(body)
    metrics.STUDY_PHASE_TRACKER.forget(ref.namespace, ref.name)
    try:
        for job in kube.list_trainingjobs(ref.namespace, res.study_selector(ref.name)):
            summary = sr.summarize_trial_job(job)
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
        _, url = storage_url(ref, study_spec, memo.config, kube)
        if memo.study_store.delete_study(url, ref.optuna_name, ref.uid):
            log.info("Deleted Optuna study %s", ref.optuna_name)
    except Exception as exc:  # noqa: BLE001
        logger.warning("Cannot delete Optuna study %s: %s", ref.optuna_name, describe_storage_error(exc, url))
