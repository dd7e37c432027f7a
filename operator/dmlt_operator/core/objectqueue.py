"""What the work queues of both resources share: a WorkQueue of object keys, the kopf index its
workers read the objects from, kopf's thread pool, the status each worker wrote last (so that
our own writes neither wake us nor are planned over), and the children a run created that the
watch has not shown yet (the Kubernetes Job controller's "expectations").

Everything here runs on the event loop's thread, like the WorkQueue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from dmlt_operator.core.objects import lean
from dmlt_operator.core.workqueue import Requeue, WorkQueue, start_workers, stop_workers

K = TypeVar("K", bound=Hashable)

URGENT_ONLY_SHARE = 4
"""One worker in this many takes urgent keys only (2 of the default 8)."""


class ReconcileFailed(Exception):
    """A reconcile failed; the failure is already reported on the object (status message,
    Event, metric): the caller only retries it."""


class Wake(NamedTuple):
    """What a reconcile asks of the queue: a wake-up after `after` seconds (a clock deadline;
    None: only the resync), whether to retry with backoff (a child refused for now), and the
    children it created."""

    after: float | None = None
    refused: bool = False
    created: tuple[str, ...] = ()
    """The children (Pods, trial jobs) this run created."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker's reconcile in the thread pool hands back to the event loop."""

    requeue_after: float | None = None
    """Seconds until a clock deadline of the object (None: only the resync)."""
    written: dict[str, Any] | None = None
    """The object as our status write returned it, if we wrote."""
    error: str | None = None
    """Why the reconcile failed (reported on the object already)."""
    refused: bool = False
    """The apiserver refused a child for now (quota, RBAC; reported in status): try again with
    backoff, since no event announces a raised quota."""
    created: tuple[str, ...] = ()
    """The children this run created (the queue waits to see them before the next plan)."""


def resource_version(body: Mapping[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("resourceVersion")


@dataclass(slots=True)
class ObjectQueue(Generic[K]):
    """A work queue of objects' keys and what its workers read: `objects` is kopf's index of the
    objects by key (a live view that kopf keeps on the event loop)."""

    queue: WorkQueue[K]
    objects: Any
    executor: Executor | None
    written: dict[K, tuple[frozenset[str], dict[str, Any]]] = field(default_factory=dict)
    """key → (the resourceVersions our status writes replaced since the index last caught up,
    the object our last write returned, without what only its writers need)."""
    write_times: dict[K, float] = field(default_factory=dict)
    """key → when (loop time) we last wrote about it: its status, or children a run created."""
    tasks: list[asyncio.Task] = field(default_factory=list)
    workers: int = 1
    expected: dict[K, tuple[frozenset[str], float]] = field(default_factory=dict)
    """key → (the children its last run created, until when to wait for them to be seen)."""

    def start(self, run: Callable[[K], Awaitable[float | None]], name: str) -> None:
        """Start the workers, once. Called from a resource handler (a key's first mark), so that
        they inherit kopf's context (its Event poster), which startup handlers lack."""
        if not self.tasks:
            self.tasks = start_workers(self.queue, run, self.workers, name, self.workers // URGENT_ONLY_SHARE)

    async def stop(self) -> None:
        await stop_workers(self.queue, self.tasks)

    def own_write(self, key: K, version: str | None) -> bool:
        """Is this version of the object the one our own status write made?"""
        written = self.written.get(key)
        return written is not None and version == resource_version(written[1])

    def wrote(
        self, key: K, based_on: Mapping[str, Any], returned: dict[str, Any] | None, now: float = 0.0
    ) -> None:
        """A run wrote the status of `based_on` and got `returned` back (None: it wrote nothing).
        When `based_on` was itself our previous write, the index may still show the version
        before it: every version of the chain is older than `returned`."""
        if returned is None:
            return
        replaced = {resource_version(based_on) or ""}
        prior = self.written.get(key)
        if prior is not None and resource_version(prior[1]) == resource_version(based_on):
            replaced |= prior[0]
        self.written[key] = (frozenset(replaced), lean(returned))
        self.write_times[key] = now

    def since_write(self, key: K, now: float, period: float) -> float:
        """Seconds left of `period` since we last wrote about `key` (`write_times`; ≤ 0: none)."""
        last = self.write_times.get(key)
        return -period if last is None else last + period - now

    def current(self, key: K) -> dict[str, Any] | None:
        """The object as of now, None when it is gone. When the index still shows the version our
        last write replaced, the object that write returned is newer: that one."""
        bodies = list(self.objects.get(key, []))
        if not bodies:
            self.written.pop(key, None)
            self.write_times.pop(key, None)
            return None
        body = bodies[-1]
        written = self.written.get(key)
        if written is not None and resource_version(body) in written[0]:
            return written[1]
        if written is not None:
            del self.written[key]
        return body

    def settle(
        self, key: K, body: Mapping[str, Any], outcome: Outcome, now: float, wait_s: float
    ) -> float | None:
        """Take in a run's outcome (what it wrote, what it created: wait up to `wait_s` to see
        those); when to wake the key again. Raises for a retry with backoff: ReconcileFailed
        (reported on the object already), Requeue (a child refused for now)."""
        self.expect(key, outcome.created, now, wait_s)
        if outcome.created:
            self.write_times[key] = now
        self.wrote(key, body, outcome.written, now)
        if outcome.error is not None:
            raise ReconcileFailed(outcome.error)
        if outcome.refused:
            raise Requeue()
        return outcome.requeue_after

    def expect(self, key: K, created: Collection[str], now: float, wait_s: float) -> None:
        """The last run created these children: wait up to `wait_s` to see them before planning
        again."""
        if created:
            self.expected[key] = (frozenset(created), now + wait_s)

    def awaiting(self, key: K, seen: Collection[str], now: float) -> bool:
        """Has the key's last run created children (not in `seen`, the names the watch shows)
        that the watch has not shown yet, and not for too long? Planning from such a view would
        create them again (409s) and write a status that the next event undoes."""
        expected = self.expected.get(key)
        if expected is None:
            return False
        names, deadline = expected
        if now < deadline and not names <= set(seen):
            return True
        del self.expected[key]
        return False
