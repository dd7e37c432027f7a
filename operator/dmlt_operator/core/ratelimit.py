"""A thread-safe token bucket for the operator's own API writes (client-go's `--kube-api-qps` /
`--kube-api-burst`, which client-python lacks), and the pause a 429's Retry-After asks for.

Callers reserve a token and sleep outside the lock until it is theirs, so waiting writers queue
up in arrival order and never hold one another up beyond the rate. An *urgent* write (what users
watch: a job's phase, a study's replacement trial; `URGENT_WRITES`) goes before the plain ones
waiting (new jobs' Pods): it takes the next free slot, and every plain writer asleep then waits
one slot longer when it wakes.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable

URGENT_WRITES: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent_writes", default=False)
"""Do this context's writes go before plain ones? The work queues' workers set it per run from
the lane the key was taken from."""


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `acquire()` blocks until one is
    free. `pause(s)` makes every caller wait at least `s` seconds from now (a 429)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1; got {rate}, {burst}")
        self.rate, self.burst = float(rate), int(burst)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._stamp = clock()
        self._not_before = 0.0
        self._overtakes = 0
        """Urgent writes that went ahead of the plain writers waiting then."""
        self._urgent_free_at = 0.0
        """When the next urgent write that has to wait may go."""

    def reserve(self, urgent: bool = False) -> float:
        """Take a token (possibly one not yet earned); the seconds to wait before using it."""
        return self._reserve(urgent)[0]

    def _reserve(self, urgent: bool) -> tuple[float, int]:
        """(seconds to wait, the overtakes so far)."""
        with self._lock:
            now = self._clock()
            self._tokens, self._stamp = self._refilled(now), now
            self._tokens -= 1.0
            if self._tokens >= 0:
                wait = 0.0
            elif urgent:
                wait = max(self._urgent_free_at - now, 0.0)
                self._urgent_free_at = now + wait + 1.0 / self.rate
                self._overtakes += 1
            else:
                wait = -self._tokens / self.rate
            return max(wait, self._not_before - now), self._overtakes

    def _overtaken(self, seen: int) -> tuple[float, int]:
        """A plain writer woke: the extra wait for the urgent writes that went ahead of it."""
        with self._lock:
            return (self._overtakes - seen) / self.rate, self._overtakes

    def busy(self) -> bool:
        """Would a write now have to wait for its token (writers are queued on the bucket)?"""
        with self._lock:
            now = self._clock()
            return self._refilled(now) < 1.0 or self._not_before > now

    def _refilled(self, now: float) -> float:
        """The tokens there are at `now` (under the lock): those left, plus those earned since."""
        return min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)

    def acquire(self, urgent: bool | None = None) -> float:
        """Block until a token is ours (urgent: before the plain writers waiting; None: as
        URGENT_WRITES says); the seconds waited."""
        urgent = URGENT_WRITES.get() if urgent is None else urgent
        wait, seen = self._reserve(urgent)
        waited = 0.0
        while wait > 0:
            self._sleep(wait)
            waited += wait
            wait, seen = (0.0, seen) if urgent else self._overtaken(seen)
        return waited

    def pause(self, seconds: float) -> None:
        """Nobody gets a token for `seconds` from now (the apiserver said 429, Retry-After)."""
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + max(seconds, 0.0))


def retry_after_seconds(headers: object, default: float = 1.0, cap: float = 60.0) -> float:
    """The Retry-After of a 429 (seconds form), within [0, cap]; `default` when absent or odd."""
    raw = None
    if headers is not None and hasattr(headers, "get"):
        raw = headers.get("Retry-After") or headers.get("retry-after")
    try:
        value = float(raw) if raw is not None else default
    except (TypeError, ValueError):
        value = default
    return min(max(value, 0.0), cap)
