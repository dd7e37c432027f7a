"""Leader election: the settings, the pure decisions, and the Elector against a fake Lease store.

The real apiserver, two operator processes, SIGKILL and SIGTERM are in
tests/integration/test_operator_failover_apiserver.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
from dmlt_operator.core.config import LeaderElectionConfig, OperatorConfig
from dmlt_operator.core.leader import (
    Elector,
    LeaseRecord,
    Step,
    claimed,
    lead_while_holding,
    lease_body,
    lease_record,
    lease_seconds,
    micro_time,
    next_step,
    released,
    start_watchdog,
)

pytestmark = pytest.mark.unit

FAST = LeaderElectionConfig(
    enabled=True, lease_namespace="dmlt", lease_duration_s=0.4, renew_deadline_s=0.2, retry_period_s=0.05
)


# --------------------------------------------------------------------------- settings


def test_election_is_off_by_default_and_read_from_the_environment():
    assert OperatorConfig.from_env({}).leader_election == LeaderElectionConfig()
    cfg = LeaderElectionConfig.from_env({
        "DMLT_LEADER_ELECTION": "true", "DMLT_LEASE_NAMESPACE": " dmlt ", "DMLT_LEASE_NAME": "op",
        "DMLT_LEASE_DURATION_SECONDS": "12", "DMLT_LEASE_RENEW_DEADLINE_SECONDS": "9",
        "DMLT_LEASE_RETRY_PERIOD_SECONDS": "3",
    })  # fmt: skip
    assert cfg == LeaderElectionConfig(enabled=True, lease_name="op", lease_namespace="dmlt",
                                       lease_duration_s=12, renew_deadline_s=9, retry_period_s=3)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"DMLT_LEADER_ELECTION": "true"}, "DMLT_LEASE_NAMESPACE"),
        ({"DMLT_LEADER_ELECTION": "maybe"}, "DMLT_LEADER_ELECTION must be true or false"),
        ({"DMLT_LEASE_RENEW_DEADLINE_SECONDS": "9"}, "lease duration > renew deadline"),
        ({"DMLT_LEASE_RETRY_PERIOD_SECONDS": "6"}, "renew deadline > retry period"),
        ({"DMLT_LEASE_DURATION_SECONDS": "soon"}, "DMLT_LEASE_DURATION_SECONDS must be a number"),
    ],
)
def test_bad_election_settings_fail_at_start(env, fragment):
    with pytest.raises(ValueError, match=fragment):
        LeaderElectionConfig.from_env(env)


# --------------------------------------------------------------------------- decisions

HELD = LeaseRecord(holder="b_1", duration_s=8, acquire_time="t0", renew_time="t1", transitions=2,
                   resource_version="7")  # fmt: skip


@pytest.mark.parametrize(
    ("lease", "seen_at", "now", "step"),
    [
        (None, 0, 0, Step.TAKE),
        (dataclasses.replace(HELD, holder=""), 0, 0, Step.TAKE),  # released
        (dataclasses.replace(HELD, holder="a_1"), 0, 0, Step.RENEW),
        (HELD, 100, 107.9, Step.WAIT),
        (HELD, 100, 108, Step.TAKE),  # unchanged for a lease duration: its holder is gone
    ],
)
def test_next_step(lease, seen_at, now, step):
    assert next_step(lease, "a_1", seen_at, now) is step


def test_taking_counts_a_transition_and_renewing_keeps_the_acquire_time():
    taken = claimed(HELD, "a_1", 7.5, 0.0)
    assert (taken.holder, taken.duration_s, taken.transitions) == ("a_1", 8, 3)
    assert taken.acquire_time == taken.renew_time == "1970-01-01T00:00:00.000000Z"
    assert taken.resource_version == "7"  # the write must match what was read
    renewed = claimed(taken, "a_1", 7.5, 1.5)
    assert renewed.acquire_time == taken.acquire_time and renewed.renew_time == micro_time(1.5)
    assert renewed.transitions == 3
    assert claimed(None, "a_1", 8, 0).transitions == 0
    gone = released(renewed, 2.0)
    assert (gone.holder, gone.duration_s, gone.resource_version) == ("", 1, "7")


def test_lease_seconds_round_up():
    assert [lease_seconds(s) for s in (0.2, 1, 7.5, 8)] == [1, 1, 8, 8]


def test_lease_objects_round_trip():
    body = lease_body("dmlt", "dmlt-operator", HELD)
    assert body["metadata"] == {"name": "dmlt-operator", "namespace": "dmlt", "resourceVersion": "7"}
    assert lease_record(body) == HELD
    fresh = lease_body("dmlt", "dmlt-operator", claimed(None, "a_1", 8, 0))
    assert "resourceVersion" not in fresh["metadata"]  # a create
    assert lease_body("dmlt", "x", released(HELD, 0))["spec"]["holderIdentity"] is None
    assert lease_record({"metadata": {}, "spec": None}) == LeaseRecord()


# --------------------------------------------------------------------------- the Elector


class FakeLeases:
    """One Lease with optimistic concurrency, as the apiserver keeps it."""

    def __init__(self) -> None:
        self.lease: LeaseRecord | None = None
        self.version = 0
        self.fail = False
        self.writes: list[LeaseRecord] = []
        self.reads = 0
        self.watched = 0

    def read(self) -> LeaseRecord | None:
        if self.fail:
            raise ConnectionError("apiserver down")
        self.reads += 1
        return self.lease

    def watch(self, resource_version: str, timeout_s: float):
        """The apiserver's watch, by looking every 10 ms."""
        deadline = time.monotonic() + min(timeout_s, 1)
        last = resource_version
        while time.monotonic() < deadline:
            if self.fail:
                raise ConnectionError("apiserver down")
            if self.lease is not None and self.lease.resource_version != last:
                last = self.lease.resource_version
                self.watched += 1
                yield self.lease
            time.sleep(0.01)

    def write(self, lease: LeaseRecord) -> LeaseRecord | None:
        if self.fail:
            raise ConnectionError("apiserver down")
        current = self.lease.resource_version if self.lease else ""
        if lease.resource_version != current:
            return None  # 409
        self.version += 1
        self.lease = dataclasses.replace(lease, resource_version=str(self.version))
        self.writes.append(self.lease)
        return self.lease


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_the_first_replica_takes_a_missing_lease_and_the_second_waits():
    store = FakeLeases()
    a, b = Elector(FAST, "a_1", store), Elector(FAST, "b_1", store)
    assert run(a.try_acquire()) and store.lease.holder == "a_1"
    assert not run(b.try_acquire())
    assert run(a.renew(1.0)) is True and not run(b.try_acquire())  # renewed: still fresh
    assert store.lease.holder == "a_1"


def test_a_standby_takes_over_once_the_lease_stops_changing():
    store = FakeLeases()
    a, b = Elector(FAST, "a_1", store), Elector(FAST, "b_1", store)
    run(a.try_acquire())
    stop = asyncio.Event()

    async def scenario() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        return await b.acquire(stop), loop.time() - started

    took, waited = run(scenario())  # `a` never renews: dead
    assert took and store.lease.holder == "b_1" and store.lease.transitions == 1
    # The Lease's own leaseDurationSeconds counts (whole seconds: 0.4 becomes 1).
    assert 1 <= waited < 1 + 10 * FAST.retry_period_s


def test_a_standby_follows_renewals_through_the_watch_not_by_reading():
    store = FakeLeases()
    a, b = Elector(FAST, "a_1", store), Elector(FAST, "b_1", store)
    run(a.try_acquire())

    async def scenario() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        standby = asyncio.ensure_future(b.acquire(asyncio.Event()))
        for _ in range(15):  # the leader renews every 0.1 s for 1.5 s: longer than the 1 s lease
            await asyncio.sleep(0.1)
            assert not standby.done()
            await a.renew(1.0)
        died = loop.time()
        took = await standby
        return took, loop.time() - died

    took, after = run(scenario())
    assert took and store.lease.holder == "b_1"
    assert after < 1 + 0.5  # a lease duration after the last renewal it saw
    assert store.watched >= 10 and store.reads <= 3  # renewals came as events, not reads


def test_a_released_lease_is_taken_at_the_next_look():
    store = FakeLeases()
    a, b = Elector(FAST, "a_1", store), Elector(FAST, "b_1", store)
    run(a.try_acquire())
    assert not run(b.try_acquire())
    run(a.release())
    assert store.lease.holder == "" and run(b.try_acquire())
    run(a.release())  # no longer ours: nothing written
    assert store.lease.holder == "b_1"


def test_acquire_returns_when_stopped():
    store = FakeLeases()
    run(Elector(FAST, "a_1", store).try_acquire())

    async def scenario() -> bool:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        return await Elector(FAST, "b_1", store).acquire(stop)

    assert run(scenario()) is False


def test_keep_renews_until_the_apiserver_is_gone_for_the_renew_deadline():
    store = FakeLeases()
    a = Elector(FAST, "a_1", store)
    run(a.try_acquire())

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, setattr, store, "fail", True)
        started = loop.time()
        await a.keep()
        return loop.time() - started

    kept = run(scenario())
    assert len(store.writes) >= 4  # renewed every retry period while it could
    # Gave up within the renew deadline of the last renewal: before any standby may take over.
    assert 0.3 + FAST.renew_deadline_s - FAST.retry_period_s <= kept < 0.3 + FAST.lease_duration_s


def test_keep_returns_at_once_when_another_replica_holds_the_lease():
    store = FakeLeases()
    a = Elector(FAST, "a_1", store)
    run(a.try_acquire())
    store.lease = dataclasses.replace(store.lease, holder="b_1", resource_version="99")
    assert run(a.renew(1.0)) is False


def test_leading_ends_with_a_release_or_with_on_lost():
    async def lead_briefly() -> None:
        await asyncio.sleep(0.1)

    async def lead_forever() -> None:
        await asyncio.Event().wait()

    store = FakeLeases()
    a = Elector(FAST, "a_1", store)
    run(a.try_acquire())
    assert run(lead_while_holding(a, lead_briefly, asyncio.Event(), lambda: None)) == 0
    assert store.lease.holder == ""  # released: a standby takes over at once

    run(a.try_acquire())
    lost: list[bool] = []
    store.fail = True
    assert run(lead_while_holding(a, lead_forever, asyncio.Event(), lambda: lost.append(True))) == 1
    assert lost and all(lost)  # keep's return (or the watchdog) called it

    store.fail = False
    b = Elector(FAST, "b_1", FakeLeases())
    run(b.try_acquire())

    async def stopped() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        return await lead_while_holding(b, lead_forever, stop, lambda: None)

    assert run(stopped()) == 0 and b.store.lease.holder == ""


def test_the_watchdog_stops_a_leader_whose_event_loop_is_stuck():
    store = FakeLeases()
    a = Elector(FAST, "a_1", store)
    run(a.try_acquire())
    lost = threading.Event()
    start_watchdog(a, lost.set, threading.Event())
    time.sleep(0.1)  # a blocked loop: nothing renews
    assert not lost.is_set()
    assert lost.wait(FAST.renew_deadline_s + 0.5)
    off = threading.Event()
    off.set()
    lost.clear()
    start_watchdog(a, lost.set, off)  # switched off: never fires
    assert not lost.wait(0.5)
