"""A coalescing work queue on the event loop, in the manner of client-go's workqueue, and the
workers that drain it.

Watch events only *mark* a key (a job's (namespace, name)) as dirty; workers reconcile keys.

- A key is queued at most once, however many events mark it: a burst of 1,000 Pod events
  makes one reconcile per job.
- A key marked while a worker reconciles it is queued again, once, after that run ends; two
  workers never hold the same key.
- Two lanes: an *urgent* mark (a change that only needs the status brought up to date, such
  as a Pod going Running) is served before the plain marks (new jobs, whose Pods are still to
  be created), so that a burst of new jobs does not hold back what users watch. A key marked
  both ways is queued once, in the urgent lane. Some workers take urgent keys only, so that one
  is never left waiting for a worker while all of them create Pods; a run of an urgent key
  makes urgent writes (core/ratelimit.py's URGENT_WRITES), ahead of the plain runs' writes.
- `add_after` wakes a key later (deadlines, a resync); a key keeps only its earliest wake-up.
- A failed run is retried with a per-key backoff, `base` doubling up to `cap`; a successful
  run resets it.
- After every run the key gets a jittered resync, the safety net for a missed event.

Everything here runs on the event loop's thread (kopf's handlers and our workers are `async`),
so it needs no locks; the reconcile itself may go to a thread pool.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dmlt_operator.core.ratelimit import URGENT_WRITES

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds before retry number `failures` (1, 2, …)."""
        return min(self.cap_s, self.base_s * 2 ** max(failures - 1, 0))


URGENT, PLAIN = 0, 1
"""The lanes: the lower is served first."""


class WorkQueue(Generic[K]):
    """Dirty keys (with their lane) + processing set + ready keys in lane, then FIFO, order +
    delayed wake-ups."""

    def __init__(
        self,
        resync_s: float,
        backoff: Backoff = Backoff(),
        jitter: float = 0.1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.resync_s, self.backoff, self.jitter, self._rng = resync_s, backoff, jitter, rng
        self._ready: asyncio.PriorityQueue[tuple[int, int, K]] = asyncio.PriorityQueue()
        self._urgent_ready: asyncio.Queue[K] = asyncio.Queue()
        """The urgent keys again, for the workers that take only those (when there are any)."""
        self.urgent_only_workers = False
        self._order = itertools.count()
        self._dirty: dict[K, int] = {}
        """Marked keys → their lane; those not being processed are in `_ready` in that lane."""
        self._processing: dict[K, int] = {}
        """Keys being run → the lane each was taken from."""
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._failures: dict[K, int] = {}
        self._closed = False

    # ---- marking

    def add(self, key: K, urgent: bool = False) -> None:
        """Mark `key` for a reconcile as soon as a worker is free (and it is not being run);
        `urgent` keys go before plain ones."""
        lane = URGENT if urgent else PLAIN
        if self._closed or self._dirty.get(key, PLAIN + 1) <= lane:
            return
        self._dirty[key] = lane
        if key not in self._processing:
            self._push(key, lane)

    def _push(self, key: K, lane: int) -> None:
        # A key promoted to the urgent lane leaves its plain entry behind, and a key one kind of
        # worker took leaves its entry in the other's queue: `get` skips those.
        self._ready.put_nowait((lane, next(self._order), key))
        if lane == URGENT and self.urgent_only_workers:
            self._urgent_ready.put_nowait(key)

    def add_after(self, key: K, delay: float, urgent: bool = False) -> None:
        """Mark `key` in `delay` seconds (in the urgent lane if `urgent`), unless it already
        has an earlier wake-up."""
        if self._closed:
            return
        if delay <= 0:
            self.add(key, urgent)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending.when() <= when:
                return
            pending.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key, urgent)

    def _fire(self, key: K, urgent: bool) -> None:
        self._timers.pop(key, None)
        self.add(key, urgent)

    def retry(self, key: K) -> float:
        """A run of `key` failed: wake it after its backoff; the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = self.backoff.delay(failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """A run of `key` succeeded: its next failure starts the backoff afresh."""
        self._failures.pop(key, None)

    def drop(self, key: K) -> None:
        """`key` is gone for good (its object was deleted): no retry, no resync."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def resync(self, key: K) -> None:
        """The safety net: wake `key` after the resync period, jittered by ±jitter."""
        spread = 1.0 + self.jitter * (2.0 * self._rng() - 1.0)
        self.add_after(key, self.resync_s * spread)

    # ---- taking

    async def get(self, urgent_only: bool = False) -> K:
        """The next key to reconcile (`urgent_only`: the next urgent one); the caller owns it
        until `done(key)`."""
        while True:
            if urgent_only:
                lane, key = URGENT, await self._urgent_ready.get()
            else:
                lane, _, key = await self._ready.get()
            if self._dirty.get(key) == lane and key not in self._processing:
                break
        del self._dirty[key]
        self._processing[key] = lane
        return key

    def taken_urgent(self, key: K) -> bool:
        """Was `key`, being run, taken from the urgent lane?"""
        return self._processing.get(key) == URGENT

    def done(self, key: K) -> None:
        """The run of `key` ended; if it was marked meanwhile, queue it again (once)."""
        self._processing.pop(key, None)
        if key in self._dirty and not self._closed:
            self._push(key, self._dirty[key])

    # ---- state

    def __len__(self) -> int:
        """Keys waiting for a worker (not those being run, nor delayed ones)."""
        return sum(1 for key in self._dirty if key not in self._processing)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def delayed(self, key: K) -> float | None:
        """Seconds until `key`'s wake-up, None if it has none."""
        timer = self._timers.get(key)
        return None if timer is None else timer.when() - asyncio.get_running_loop().time()

    def close(self) -> None:
        """Mark nothing more; cancel every pending wake-up."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class Requeue(Exception):
    """Raised by a run that did its part but wants to be tried again with backoff, with
    nothing to log (say the apiserver refused a child for a quota: reported on the object)."""


GONE = math.inf
"""What a run returns when its object no longer exists: no resync, no retry."""

Reconcile = Callable[[K], Awaitable[float | None]]
"""One run for a key: the seconds after which it wants to run again (a deadline), None for
only the resync, or GONE. Raising means the run failed (it has reported why): the key is
retried with backoff."""


async def work(queue: WorkQueue[K], reconcile: Reconcile[K], urgent_only: bool = False) -> None:
    """One worker: take a key, reconcile it (its writes as urgent as its lane), schedule its
    next wake-up; forever."""
    while True:
        key = await queue.get(urgent_only)
        URGENT_WRITES.set(queue.taken_urgent(key))
        try:
            again = await reconcile(key)
        except asyncio.CancelledError:
            queue.done(key)
            raise
        except Requeue:
            queue.retry(key)
        except Exception as exc:
            delay = queue.retry(key)
            log.warning(
                "Reconcile of %s failed (retry in %.0fs): %s: %s", key, delay, type(exc).__name__, exc
            )
        else:
            queue.forget(key)
            if again == GONE:
                queue.drop(key)
                queue.done(key)
                continue
            if again is not None:
                queue.add_after(key, again)
        queue.resync(key)
        queue.done(key)


def start_workers(
    queue: WorkQueue[K], reconcile: Reconcile[K], count: int, name: str, urgent_only: int = 0
) -> list[asyncio.Task]:
    """`count` workers as tasks of the running loop (cancel them to stop), the first
    `urgent_only` of them for urgent keys only."""
    queue.urgent_only_workers = queue.urgent_only_workers or urgent_only > 0
    return [
        asyncio.create_task(work(queue, reconcile, i < urgent_only), name=f"{name}-worker-{i}")
        for i in range(count)
    ]


async def stop_workers(queue: WorkQueue[K], tasks: list[asyncio.Task]) -> None:
    queue.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
