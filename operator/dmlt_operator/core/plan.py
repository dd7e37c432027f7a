"""What every planner builds: the next status, its conditions and the Events that explain it.

A planner is a sequence of pure steps over one `StatusBuilder`; each step either finishes the
plan (returns it) or leaves the builder for the next step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from dmlt_operator.core.conditions import (
    MAX_MESSAGE,
    ManagedStatus,
    clear_condition,
    format_time,
    set_condition,
)
from dmlt_operator.core.objects import ObjectRef


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the object."""

    type: str
    """Normal or Warning."""
    reason: str
    message: str


class HasStatusAndEvents(Protocol):
    status: dict[str, Any]
    events: list[Event]


PlanT = TypeVar("PlanT", bound=HasStatusAndEvents)


class StatusBuilder(Generic[PlanT]):
    """Accumulates the new status, conditions and events while a planner decides."""

    def __init__(
        self,
        ref: ObjectRef,
        old: Mapping[str, Any],
        now: datetime,
        managed: ManagedStatus,
        make_plan: Callable[[dict[str, Any]], PlanT],
    ) -> None:
        self.ref = ref
        self.old = old
        self.now = now
        self.status: dict[str, Any] = managed.carried(old)
        self.status["observedGeneration"] = ref.generation
        self.conditions: list[dict[str, Any]] = [dict(c) for c in old.get("conditions") or []]
        self.plan = make_plan(self.status)

    @property
    def old_phase(self) -> str | None:
        return self.old.get("phase")

    def cond(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions, type_, value, reason, message, self.now, self.ref.generation
        )

    def clear(self, type_: str, reason: str, message: str) -> None:
        self.conditions = clear_condition(
            self.conditions, type_, reason, message, self.now, self.ref.generation
        )

    def ended(self, cond: str, reason: str, message: str, clears: Sequence[str]) -> None:
        """The object ended: its completion time, its terminal condition `cond` set, and the
        conditions `clears` set False."""
        self.status["completionTime"] = format_time(self.now)
        self.cond(cond, True, reason, message)
        for type_ in clears:
            self.clear(type_, reason, message)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def finish(self, phase: str, message: str) -> PlanT:
        self.status["phase"] = phase
        self.status["message"] = message[:MAX_MESSAGE]
        self.status["conditions"] = self.conditions
        return self.plan
