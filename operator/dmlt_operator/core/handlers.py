"""Scaffolding the kopf handlers of both resources share: the
clients kept in kopf.Memo, spec checks on create/resume, a reconcile run timed with its failure
reported on the object, writing only the status that changed, creating children whose refusals
are reported rather than raised, and recording a permanent failure."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import Counter, Histogram

from dmlt_operator.core import metrics
from dmlt_operator.core.conditions import COND_FAILED, FAILED, MAX_MESSAGE, format_time, set_condition
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.failures import (
    RECONCILE_ERROR,
    Failure,
    at_step,
    classify,
    classify_creation,
    current_step,
)
from dmlt_operator.core.kube import EventSink, Kube, StaleRead, load_config
from dmlt_operator.core.objectqueue import Outcome, ReconcileFailed, Wake
from dmlt_operator.core.objects import ObjectRef
from dmlt_operator.core.ratelimit import TokenBucket
from dmlt_operator.core.spec import SpecError


def start_memo(memo: kopf.Memo) -> OperatorConfig:
    """What every handler finds in kopf.Memo: the settings (main read them once and put them
    there), the API client, metrics served. Entries already there (tests put fakes in) are kept."""
    if "config" not in memo:
        raise RuntimeError("no operator settings in kopf.Memo: start the operator with dmlt-operator")
    if "kube" not in memo:
        cfg: OperatorConfig = memo.config
        # A connection per thread that may call the API (kopf's pool), and some to spare.
        load_config(pool_maxsize=cfg.workers + 4 + 8)
        memo.kube = Kube(limiter=TokenBucket(cfg.api_qps, cfg.api_burst))
    if not memo.get("metrics_served"):
        metrics.serve(memo.config.metrics_port)
        memo.metrics_served = True
    return memo.config


def accept_spec(kind: str, name: str, check: Callable[[], object], logger: Any) -> None:
    """on.create/on.resume: reject a bad spec loudly in the operator's log (the reconcile
    records it in status)."""
    try:
        check()
    except SpecError as exc:
        raise kopf.PermanentError(str(exc)) from None
    logger.info("%s %s accepted; the reconcile workers take it from here", kind, name)


@dataclass(frozen=True, slots=True)
class ReconcileMetrics:
    errors: Counter
    seconds: Histogram


@dataclass(frozen=True, slots=True)
class Subject:
    """The object a reconcile tick is about: where a failure of the tick is reported."""

    kind: str
    kube: EventSink
    body: Any
    status: Mapping[str, Any]
    status_patch: MutableMapping[str, Any]
    """Where the tick's status changes go: a plain dict written by the caller, or a kopf.Patch's
    `.status`."""


def report_failure(subject: Subject, step: str, failure: Failure) -> str:
    """Put a failure in `status.message`, a Warning Event (when the message is new) and the
    failures metric; the message."""
    metrics.RECONCILE_FAILURES.labels(kind=subject.kind, step=step, reason=failure.reason).inc()
    message = f"Waiting (retrying): {step} failed: {failure.message}"[:MAX_MESSAGE]
    if subject.status.get("message") != message:
        subject.kube.post_event(subject.body, "Warning", failure.reason, message)
    subject.status_patch["message"] = message
    return message


def run_reported(
    tick: Callable[[], Any],
    observed: ReconcileMetrics,
    subject: Subject,
    outage: tuple[type[Exception], Counter] | None = None,
) -> Any:
    """Run one reconcile tick, timed; its result. Any error is reported on the object (status,
    event, metric) and raised as ReconcileFailed. An `outage` (an expected unavailability the
    tick has already put in status) is counted under its own metric instead."""
    started = time.monotonic()
    at_step("start")
    try:
        return tick()
    except Exception as exc:
        observed.errors.inc()
        step = current_step()
        if outage is not None and isinstance(exc, outage[0]):
            outage[1].inc()
            metrics.RECONCILE_FAILURES.labels(kind=subject.kind, step=step, reason=type(exc).__name__).inc()
            raise ReconcileFailed(str(exc)) from None
        raise ReconcileFailed(report_failure(subject, step, classify(exc))) from exc
    finally:
        observed.seconds.observe(time.monotonic() - started)


def sync_and_write(
    reconcile: Callable[[MutableMapping[str, Any]], Wake],
    observed: ReconcileMetrics,
    subject: Subject,
    write: StatusWriter,
    stale_retry_s: float,
    logger: Any,
    outage: tuple[type[Exception], Counter] | None = None,
    hold: Callable[[Mapping[str, Any], Wake], float] | None = None,
) -> Outcome:
    """A worker's reconcile of one object (in a thread): `reconcile` plans and acts, putting the
    status changes in the mapping it is given; then the status is written if it changed. A
    failure is reported on the object (status message, Event, metric), not raised. A write
    refused because the object changed since it was read means: plan again in `stale_retry_s`.
    `hold(changed keys, the run's wake)`: seconds to put the write off (0: write now); the object
    is looked at again then, and the changes are planned anew. A child refused is reported at
    once, never held."""
    status_patch = subject.status_patch
    try:
        wake = run_reported(lambda: reconcile(status_patch), observed, subject, outage)
        error = None
    except ReconcileFailed as exc:
        wake, error = Wake(), str(exc)
    changed = changed_status(subject.body.get("status") or {}, status_patch)
    wait = hold(changed, wake) if hold and changed and error is None and not wake.refused else 0.0
    if wait > 0:
        after = wait if wake.after is None else min(wake.after, wait)
        return Outcome(after, None, None, wake.refused, wake.created)
    try:
        written = write_status(write, subject.body, changed)
    except StaleRead as exc:
        logger.debug("%s: planning again", exc)
        return Outcome(stale_retry_s, None, error, created=wake.created)
    return Outcome(wake.after, written, error, wake.refused, wake.created)


StatusWriter = Callable[[str, str, dict[str, Any], "str | None"], "dict[str, Any] | None"]
"""(namespace, name, status changes, resourceVersion) → the object as written (kube.patch_status)."""


def changed_status(old: Mapping[str, Any], status_patch: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `status_patch` whose value differs from the old status."""
    return {key: value for key, value in status_patch.items() if old.get(key) != value}


def write_status(
    patch: StatusWriter, body: Mapping[str, Any], changed: dict[str, Any]
) -> dict[str, Any] | None:
    """Merge-patch the `changed` status keys (changed_status), only if there are any, and only
    onto the version of the object they were planned from (else StaleRead); the object as
    written."""
    if not changed:
        return None
    meta = body["metadata"]
    at_step("write status")
    return patch(meta.get("namespace") or "default", meta["name"], changed, meta.get("resourceVersion"))


@dataclass(slots=True)
class Creations:
    """Children created this tick, those the apiserver refused for now (quota, RBAC: reported
    in status and events, retried next tick) and those it can never accept (invalid: the object
    fails). 5xx errors and timeouts raise, for the tick to be retried with backoff."""

    created: list[str] = field(default_factory=list)
    refused: list[tuple[str, Failure]] = field(default_factory=list)
    invalid: list[tuple[str, Failure]] = field(default_factory=list)

    def create(self, create: Callable[[dict[str, Any]], bool], obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        try:
            if create(obj):
                self.created.append(name)
        except Exception as exc:
            failure = classify_creation(exc)
            if failure.permanent:
                self.invalid.append((name, failure))
            elif failure.reason in ("ServerError", "Timeout", RECONCILE_ERROR):
                raise
            else:
                self.refused.append((name, failure))

    def invalid_message(self, what: str) -> str | None:
        """Why the spec can never work, naming the refused objects and fields; None if it can."""
        if not self.invalid:
            return None
        return f"Cannot create {what}: " + "; ".join(f"{name}: {f.message}" for name, f in self.invalid)

    def report_refused(self, subject: Subject, status: dict[str, Any], what: str, reason: str) -> bool:
        """Put the refusals in `status.message` (and an Event when that message is new)."""
        if not self.refused:
            return False
        for _, failure in self.refused:
            metrics.RECONCILE_FAILURES.labels(
                kind=subject.kind, step=f"create {what}", reason=failure.reason
            ).inc()
        message = f"Waiting (retrying): cannot create {what}: " + "; ".join(
            f"{name}: {f.message}" for name, f in self.refused
        )
        if subject.status.get("message") != message[:MAX_MESSAGE]:
            subject.kube.post_event(subject.body, "Warning", reason, message)
        status["message"] = message[:MAX_MESSAGE]
        return True


def record_failure(
    kube: EventSink,
    body: Any,
    ref: ObjectRef,
    old: Mapping[str, Any],
    reason: str,
    message: str,
    now: Any,
    status_patch: MutableMapping[str, Any],
    more_conditions: tuple[tuple[str, bool, str, str], ...] = (),
) -> bool:
    """Fail the object for a reason no retry fixes (e.g. an invalid spec), once; False when it
    had already failed. `more_conditions`: (type, status, reason, message) to set as well."""
    if old.get("phase") == FAILED:
        return False
    conditions = set_condition(
        old.get("conditions") or [], COND_FAILED, True, reason, message, now, ref.generation
    )
    for type_, value, why, text in more_conditions:
        conditions = set_condition(conditions, type_, value, why, text, now, ref.generation)
    status_patch["phase"] = FAILED
    status_patch["message"] = message[:MAX_MESSAGE]
    status_patch["conditions"] = conditions
    status_patch["completionTime"] = format_time(now)
    status_patch["observedGeneration"] = ref.generation
    kube.post_event(body, "Warning", reason, message)
    return True
