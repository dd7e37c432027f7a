"""Rank logs, merged: every rank's lines with a rank prefix, in time order, across attempts.

Followed by polling (no threads, nothing left running when the caller stops iterating): each
round lists the Pods, reads only what is new in each log (a `sinceSeconds` window, then the
kubelet's timestamps drop what was already shown), and yields the round's lines sorted by time.
A gang restart brings Pods of a new attempt; their lines follow under a marker line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from dmlt.errors import DmltError


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a rank printed (or a marker line of the client's own, source `dmlt`)."""

    source: str
    """`rank 0`, or `t3 rank 0` for trial 3 of a study."""
    attempt: int
    text: str
    time_ns: int = 0

    @classmethod
    def marker(cls, attempt: int, text: str) -> LogLine:
        """A line of the client's own between the ranks' lines."""
        return cls("dmlt", attempt, text)

    def __str__(self) -> str:
        return f"[{self.source}] {self.text}"


@dataclass(frozen=True, slots=True)
class PodRef:
    """A rank Pod whose log is read."""

    name: str
    uid: str
    source: str
    attempt: int
    rank: int
    started: bool


def parse_timestamp(stamp: str) -> int | None:
    """RFC 3339 with up to nanoseconds (as the kubelet writes them) → nanoseconds since epoch."""
    stamp = stamp.strip()
    if not stamp.endswith("Z") and "+" not in stamp[10:]:
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    digits = "".join(ch for ch in frac if ch.isdigit())
    try:
        seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + int((digits or "0")[:9].ljust(9, "0"))


@dataclass(slots=True)
class Cursor:
    """How far one Pod's log has been read: the newest timestamp and the lines seen at it."""

    last_ns: int | None = None
    at_last: set[str] = field(default_factory=set)
    read_at: float = 0.0

    def since_seconds(self, now: float) -> int | None:
        """The window to ask for: everything since the last read, plus slack."""
        if self.last_ns is None:
            return None
        return max(1, math.ceil(now - self.read_at) + 2)

    def take(self, raw: str) -> list[tuple[int, str]]:
        """The lines of `raw` (timestamped) not yet taken."""
        out: list[tuple[int, str]] = []
        for line in raw.splitlines():
            stamp, _, text = line.partition(" ")
            ns = parse_timestamp(stamp)
            if ns is None:
                continue
            if self.last_ns is not None and (
                ns < self.last_ns or (ns == self.last_ns and text in self.at_last)
            ):
                continue
            if self.last_ns is None or ns > self.last_ns:
                self.last_ns, self.at_last = ns, set()
            self.at_last.add(text)
            out.append((ns, text))
        return out


class LogReader(Protocol):
    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str: ...


def follow_logs(
    reader: LogReader,
    namespace: str,
    list_pods: Callable[[], Sequence[PodRef]],
    done: Callable[[], bool],
    *,
    follow: bool,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[LogLine]:
    """Merged lines of the Pods `list_pods` names; with `follow`, until `done()` and drained."""
    cursors: dict[str, Cursor] = {}
    attempts_seen: set[int] = set()
    while True:
        finished = done() if follow else True
        pods = sorted(list_pods(), key=lambda p: (p.attempt, p.source))
        batch: list[LogLine] = []
        for attempt in sorted({p.attempt for p in pods} - attempts_seen):
            if attempts_seen:
                batch.append(LogLine.marker(attempt, f"--- gang restart: attempt {attempt} ---"))
            attempts_seen.add(attempt)
        for pod in pods:
            if not pod.started:
                continue
            cursor = cursors.setdefault(pod.uid, Cursor())
            now = clock()
            try:
                raw = reader.pod_log(namespace, pod.name, cursor.since_seconds(now))
            except DmltError:  # a Pod deleted, or not started, between the list and the read
                continue
            cursor.read_at = now
            batch += [LogLine(pod.source, pod.attempt, text, ns) for ns, text in cursor.take(raw)]
        batch.sort(key=lambda line: (line.attempt, line.time_ns))
        yield from batch
        if finished:
            return
        sleep(poll)
