"""Two replicas, one active: leader election through a coordination.k8s.io/v1 Lease.

The replica that holds the Lease runs kopf; the others wait, live and ready, and take the Lease
over once it has not changed for a lease duration (the holder died) or was released (the holder
stopped cleanly). The leader renews every retry period and exits when it could not renew for the
renew deadline, which is shorter than the lease duration: it has stopped before anyone may take
over. Time is measured on each replica's own monotonic clock from when it *saw* the Lease
change (as client-go does), never by comparing the clocks of two machines.

The decisions are pure functions; `Elector` runs them against a `LeaseStore` (kube.py's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dmlt_operator.core.config import LeaderElectionConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a Lease says: who holds it, for how long, and since when."""

    holder: str = ""
    duration_s: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0
    resource_version: str = ""
    """Empty for a Lease not created yet; the version a write must match otherwise."""


class Step(enum.Enum):
    TAKE = "take"
    RENEW = "renew"
    WAIT = "wait"


def micro_time(wall: float) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def next_step(lease: LeaseRecord | None, identity: str, seen_at: float, now: float) -> Step:
    """Take a missing, released or expired Lease; renew our own; else wait. `seen_at` is when
    this replica last saw the Lease change (its own clock)."""
    if lease is None or not lease.holder:
        return Step.TAKE
    if lease.holder == identity:
        return Step.RENEW
    if now - seen_at >= lease.duration_s:
        return Step.TAKE
    return Step.WAIT


def claimed(lease: LeaseRecord | None, identity: str, duration_s: float, wall: float) -> LeaseRecord:
    """The Lease to write to take it (a new acquire time, one more transition) or renew it."""
    stamp = micro_time(wall)
    base = lease or LeaseRecord()
    if base.holder == identity:
        return dataclasses.replace(base, duration_s=lease_seconds(duration_s), renew_time=stamp)
    return dataclasses.replace(
        base,
        holder=identity,
        duration_s=lease_seconds(duration_s),
        acquire_time=stamp,
        renew_time=stamp,
        transitions=base.transitions + (1 if lease is not None else 0),
    )


def released(lease: LeaseRecord, wall: float) -> LeaseRecord:
    """The Lease to write on a clean shutdown: no holder, so a standby takes it at its next look
    (client-go's ReleaseOnCancel writes the same)."""
    return dataclasses.replace(lease, holder="", duration_s=1, renew_time=micro_time(wall))


def lease_seconds(duration_s: float) -> int:
    """leaseDurationSeconds is an integer; round up so no standby waits less than configured."""
    return max(1, int(-(-duration_s // 1)))


class LeaseStore(Protocol):
    """The Lease calls (kube.py's `LeaseApi`; unit tests fake it)."""

    def read(self) -> LeaseRecord | None:
        """The Lease, or None when there is none."""
        ...

    def write(self, lease: LeaseRecord) -> LeaseRecord | None:
        """Create (no resource version) or replace (that version) the Lease; None when another
        writer got there first."""
        ...

    def watch(self, resource_version: str, timeout_s: float) -> Iterator[LeaseRecord]:
        """The Lease's states after `resource_version` as they happen, for up to `timeout_s`
        (blocking; raises when the watch fails)."""
        ...


WATCH_TIMEOUT_S = 300
"""A standby's watch of the Lease is renewed this often (one request)."""


class Elector:
    """One replica's side of the election."""

    def __init__(
        self,
        cfg: LeaderElectionConfig,
        identity: str,
        store: LeaseStore,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.store = store
        self.clock = clock
        self.wall = wall
        self.seen: LeaseRecord | None = None
        self.seen_at = clock()
        self.renewed_at = float("-inf")

    async def _call(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """A blocking Lease call off the event loop, abandoned after `timeout`. An executor future,
        not a task: kopf takes every task created after its start for one of its own and waits
        for it on shutdown."""
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
        return await asyncio.wait_for(future, timeout)

    def _observe(self, lease: LeaseRecord | None) -> None:
        if lease != self.seen:
            if lease and self.seen and lease.holder != self.seen.holder:
                log.info("The Lease is held by %r now", lease.holder or None)
            self.seen, self.seen_at = lease, self.clock()

    async def try_acquire(self) -> bool:
        """One look at the Lease: take it when it is free or expired. True once we hold it."""
        started = self.clock()
        try:
            self._observe(await self._call(self.store.read, timeout=self.cfg.retry_period_s))
            if next_step(self.seen, self.identity, self.seen_at, self.clock()) is Step.WAIT:
                return False
            record = claimed(self.seen, self.identity, self.cfg.lease_duration_s, self.wall())
            written = await self._call(self.store.write, record, timeout=self.cfg.retry_period_s)
        except Exception as exc:  # noqa: BLE001 -- an apiserver hiccup: look again next period
            log.warning("Could not read or take the Lease: %s", exc)
            return False
        if written is None:
            return False  # another replica took it first
        self.seen, self.seen_at, self.renewed_at = written, started, started
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we hold the Lease (True) or `stop` is set (False). Between looks the standby
        watches the Lease (no polling: the leader's renewals arrive as events) and looks again
        when what it saw expires, when the watch fails, or when the Lease is released."""
        log.info("Standing by for the Lease %s/%s as %s", self.cfg.lease_namespace,
                 self.cfg.lease_name, self.identity)  # fmt: skip
        changes: asyncio.Queue[LeaseRecord | None] = asyncio.Queue()
        done = threading.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._watch, args=(loop, changes, done), name="lease-watch", daemon=True
        ).start()
        try:
            while not stop.is_set():
                if await self.try_acquire():
                    log.info("Leading: holding the Lease %s", self.cfg.lease_name)
                    return True
                await self._wait_for_a_change(changes, stop)
        finally:
            done.set()
        return False

    def _expiry_in(self) -> float:
        """Seconds until what we saw of the Lease expires (a look then may take it over)."""
        if self.seen is None or not self.seen.holder:
            return self.cfg.retry_period_s
        return max(0.05, self.seen_at + self.seen.duration_s - self.clock())

    async def _wait_for_a_change(
        self, changes: asyncio.Queue[LeaseRecord | None], stop: asyncio.Event
    ) -> None:
        """Follow the watched Lease until a look is due: it expired, was released, or the watch
        failed (None). Returns at once when `stop` is set."""
        while not stop.is_set():
            getting = asyncio.ensure_future(changes.get())
            stopping = asyncio.ensure_future(stop.wait())
            done, pending = await asyncio.wait({getting, stopping}, timeout=self._expiry_in(),
                                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            for task in pending:
                task.cancel()
            if getting not in done:
                return  # expired or stopped
            lease = getting.result()
            if lease is None:
                return  # the watch failed: look with a GET
            self._observe(lease)
            if next_step(lease, self.identity, self.seen_at, self.clock()) is not Step.WAIT:
                return

    def _watch(self, loop: asyncio.AbstractEventLoop, changes: asyncio.Queue, done: threading.Event) -> None:
        """A thread: the Lease's changes into `changes` until `done`; None after a failure."""
        while not done.is_set():
            version = self.seen.resource_version if self.seen else ""
            try:
                for lease in self.store.watch(version, WATCH_TIMEOUT_S):
                    if done.is_set():
                        return
                    loop.call_soon_threadsafe(changes.put_nowait, lease)
            except Exception as exc:  # noqa: BLE001 -- watch again after a pause; the loop GETs
                log.warning("The Lease watch failed (looking again): %s", exc)
                loop.call_soon_threadsafe(changes.put_nowait, None)
                done.wait(self.cfg.retry_period_s)

    async def renew(self, timeout: float) -> bool | None:
        """One renewal: True renewed, False lost to another holder, None failed (try again)."""
        started = self.clock()
        record = claimed(self.seen, self.identity, self.cfg.lease_duration_s, self.wall())
        try:
            written = await self._call(self.store.write, record, timeout=timeout)
            if written is None:  # someone wrote the Lease since we did: still ours?
                current = await self._call(self.store.read, timeout=timeout)
                if current is None or current.holder != self.identity:
                    return False
                self.seen = current
                return None
        except Exception as exc:  # noqa: BLE001 -- retried until the renew deadline
            log.warning("Could not renew the Lease: %s", exc)
            return None
        self.seen, self.renewed_at = written, started
        return True

    async def keep(self) -> None:
        """Renew every retry period; return when the Lease is lost or the renew deadline has
        passed without a renewal (the caller must then stop acting at once)."""
        while True:
            remaining = self.renewed_at + self.cfg.renew_deadline_s - self.clock()
            if remaining <= 0:
                log.error("Could not renew the Lease for %ss", self.cfg.renew_deadline_s)
                return
            await asyncio.sleep(min(self.cfg.retry_period_s, remaining))
            remaining = self.renewed_at + self.cfg.renew_deadline_s - self.clock()
            if remaining > 0 and await self.renew(remaining) is False:
                log.error("The Lease was taken by another replica")
                return

    def overdue(self) -> bool:
        """Past the renew deadline of the last renewal: a standby may take over soon."""
        return self.clock() > self.renewed_at + self.cfg.renew_deadline_s

    async def release(self) -> None:
        """Give the Lease up (clean shutdown), so a standby takes over without waiting. A renewal
        still in flight may have moved the Lease on: then read it and try again."""
        lease = self.seen
        for _ in range(3):
            if lease is None or lease.holder != self.identity:
                return
            try:
                written = await self._call(self.store.write, released(lease, self.wall()),
                                           timeout=self.cfg.retry_period_s)  # fmt: skip
                if written is not None:
                    log.info("Released the Lease %s", self.cfg.lease_name)
                    return
                lease = await self._call(self.store.read, timeout=self.cfg.retry_period_s)
            except Exception as exc:  # noqa: BLE001 -- the standby takes over at expiry instead
                log.warning("Could not release the Lease: %s", exc)
                return


def start_watchdog(elector: Elector, on_lost: Callable[[], None], stop: threading.Event) -> None:
    """A thread that calls `on_lost` once the renew deadline has passed, even while the event loop
    is stuck (a handler blocking it would also stop `keep`): the guarantee that only one replica
    acts must not rest on the loop. Checks four times a second until `stop` is set."""

    def watch() -> None:
        while not stop.wait(0.25):
            if elector.overdue():
                on_lost()
                return

    threading.Thread(target=watch, name="lease-watchdog", daemon=True).start()


async def lead_while_holding(
    elector: Elector,
    lead: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    on_lost: Callable[[], None],
) -> int:
    """Run `lead` (kopf) while renewing the Lease. A lost Lease calls `on_lost` (which exits the
    process: nothing may act after that); a stop, or the end of `lead` (kopf stops itself on
    SIGTERM), releases the Lease."""
    # Created before kopf starts: kopf's shutdown waits up to 5 s for any task made after its
    # start (a stop_flag given to kopf would be one, when a signal stops it instead).
    keeping = asyncio.create_task(elector.keep(), name="keep the Lease")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    leading = asyncio.create_task(lead(), name="lead")
    watchdog_off = threading.Event()
    start_watchdog(elector, on_lost, watchdog_off)
    try:
        done, _ = await asyncio.wait({leading, keeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watchdog_off.set()
    if keeping in done:
        on_lost()
        leading.cancel()
        return 1
    if not leading.done():  # stopped before kopf took the signals over
        leading.cancel()
        await asyncio.wait({leading})
    keeping.cancel()
    stopping.cancel()
    await elector.release()
    return 1 if not leading.cancelled() and leading.exception() else 0


def lease_body(namespace: str, name: str, lease: LeaseRecord) -> dict[str, Any]:
    """The Lease object to create or replace."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if lease.resource_version:
        meta["resourceVersion"] = lease.resource_version
    spec = {
        "holderIdentity": lease.holder or None,
        "leaseDurationSeconds": lease.duration_s,
        "acquireTime": lease.acquire_time,
        "renewTime": lease.renew_time,
        "leaseTransitions": lease.transitions,
    }
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def lease_record(obj: dict[str, Any]) -> LeaseRecord:
    """What a Lease object read from the apiserver says."""
    spec = obj.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        duration_s=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=obj["metadata"].get("resourceVersion", ""),
    )
