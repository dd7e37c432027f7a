"""What a failure means for the object it happened to: permanent (the spec can never work, so
the object fails with reason InvalidSpec) or transient (it waits, and the next tick retries)."""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

INVALID_SPEC = "InvalidSpec"
RECONCILE_ERROR = "ReconcileError"

PERMANENT_STATUSES = frozenset({400, 422})
"""The apiserver refuses the object itself (malformed, or invalid): sending it again cannot help."""

TIMEOUTS = (TimeoutError, urllib3.exceptions.TimeoutError, urllib3.exceptions.MaxRetryError, ConnectionError)

_STEP: contextvars.ContextVar[str] = contextvars.ContextVar("dmlt_reconcile_step", default="start")


@dataclass(frozen=True, slots=True)
class Failure:
    permanent: bool
    reason: str
    """CamelCase: an Event's and a condition's reason, and the metric's label."""
    message: str


def at_step(step: str) -> None:
    """Name the reconcile step now running (this thread's context), for the failure report."""
    _STEP.set(step)


def current_step() -> str:
    return _STEP.get()


def apiserver_message(exc: ApiException) -> str:
    """The apiserver's own words: its message, or the field causes of a 422 when it has them."""
    try:
        status = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    causes = (status.get("details") or {}).get("causes") or []
    fields = "; ".join(_describe_cause(c) for c in causes if isinstance(c, dict))
    return fields or status.get("message") or str(exc.reason or exc.status)


def _describe_cause(cause: dict[str, Any]) -> str:
    field = cause.get("field")
    message = cause.get("message") or cause.get("reason") or "invalid"
    return f"{field}: {message}" if field else str(message)


def classify_api_error(exc: ApiException) -> Failure:
    message = apiserver_message(exc)
    status = exc.status or 0
    if status in PERMANENT_STATUSES:
        return Failure(True, INVALID_SPEC, f"the apiserver refused it: {message}")
    if status == 403 and "exceeded quota" in (exc.body or ""):
        return Failure(False, "ExceededQuota", message)
    reasons = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 429: "TooManyRequests"}
    reason = "ServerError" if status >= 500 else reasons.get(status, "Refused")
    return Failure(False, reason, f"{status} {exc.reason}: {message}")


def classify(exc: BaseException) -> Failure:
    """Permanent or transient, with a reason; anything unknown is transient (retrying is safe:
    every write is idempotent)."""
    if isinstance(exc, ApiException):
        return classify_api_error(exc)
    if isinstance(exc, TIMEOUTS):
        return Failure(False, "Timeout", f"the apiserver did not answer: {exc}")
    return Failure(False, RECONCILE_ERROR, f"{type(exc).__name__}: {exc}")


def classify_creation(exc: Exception) -> Failure:
    """A create call's failure. The Kubernetes client validates an object before sending it
    (ValueError/TypeError): that object can never be created, like a 422."""
    if isinstance(exc, (ValueError, TypeError)):
        return Failure(True, INVALID_SPEC, f"the Kubernetes client refused it: {exc}")
    return classify(exc)
