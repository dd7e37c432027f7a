"""Status vocabulary both resources share: phases, metav1.Condition semantics, times, and the
merge-patch that turns one status into the next. Pure: nothing here talks to Kubernetes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL = (SUCCEEDED, FAILED)

# Condition types (metav1.Condition form) both resources use.
COND_CREATED = "Created"
COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"

MAX_MESSAGE = 1024


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _condition(type_: str, wanted: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    return {
        "type": type_,
        "status": wanted,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": format_time(now),
    }


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    wanted = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        cond = dict(cond)
        if cond.get("type") == type_:
            found = True
            if cond.get("status") != wanted or not cond.get("lastTransitionTime"):
                cond["lastTransitionTime"] = format_time(now)
            cond.update(status=wanted, reason=reason, message=message[:MAX_MESSAGE])
            if observed_generation is not None:
                cond["observedGeneration"] = observed_generation
        out.append(cond)
    if not found:
        cond = _condition(type_, wanted, reason, message, now)
        if observed_generation is not None:
            cond["observedGeneration"] = observed_generation
        out.append(cond)
    return out


def clear_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Set `type_` to False only if it is present (absent conditions stay absent)."""
    conditions = list(conditions)
    if not any(c.get("type") == type_ for c in conditions):
        return [dict(c) for c in conditions]
    return set_condition(conditions, type_, False, reason, message, now, observed_generation)


def condition_is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True, slots=True)
class ManagedStatus:
    """The status keys a resource's operator owns (kopf and users may add others)."""

    keys: frozenset[str]

    def carried(self, old: Mapping[str, Any]) -> dict[str, Any]:
        """The owned keys of `old` that hold a value: where the next status starts from."""
        return {k: v for k, v in old.items() if k in self.keys and v is not None}

    def delta(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
        """The merge-patch that turns `old` into `new` (None removes an owned key); {} when equal."""
        old = old or {}
        delta = {k: v for k, v in new.items() if old.get(k) != v}
        for key in old:
            if key not in new and key in self.keys:
                delta[key] = None
        return delta
