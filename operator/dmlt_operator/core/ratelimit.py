"""A thread-safe token bucket for the operator's own API writes (client-go's `--kube-api-qps` /
`--kube-api-burst`, which client-python lacks), and the pause a 429's Retry-After asks for.

Callers reserve a token and sleep outside the lock until it is theirs, so waiting writers queue
up in arrival order and never hold one another up beyond the rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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

    def reserve(self) -> float:
        """Take a token (possibly one not yet earned); the seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens, self._stamp = self._refilled(now), now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return max(wait, self._not_before - now)

    def busy(self) -> bool:
        """Would a write now have to wait for its token (writers are queued on the bucket)?"""
        with self._lock:
            now = self._clock()
            return self._refilled(now) < 1.0 or self._not_before > now

    def _refilled(self, now: float) -> float:
        """The tokens there are at `now` (under the lock): those left, plus those earned since."""
        return min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)

    def acquire(self) -> float:
        """Block until a token is ours; the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

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
