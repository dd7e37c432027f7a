"""The coalescing work queue: one reconcile per key per burst, never two at once for a key,
delayed wake-ups, per-key backoff and the jittered resync."""

from __future__ import annotations

import asyncio

import pytest
from dmlt_operator.core.ratelimit import URGENT_WRITES
from dmlt_operator.core.workqueue import GONE, Backoff, WorkQueue, start_workers, stop_workers

pytestmark = pytest.mark.unit


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_burst_of_marks_makes_one_entry():
    async def scenario():
        q = WorkQueue(resync_s=300)
        for _ in range(1000):
            q.add("a")
        q.add("b")
        assert len(q) == 2
        assert [await q.get(), await q.get()] == ["a", "b"]
        assert len(q) == 0

    run(scenario())


def test_urgent_marks_are_served_before_plain_ones_and_a_promoted_key_runs_once():
    async def scenario():
        q = WorkQueue(resync_s=300)
        for key in ("new-1", "new-2", "new-3"):
            q.add(key)
        q.add("running", urgent=True)
        q.add("new-2", urgent=True)  # promoted: its plain entry is skipped
        q.add("new-2")  # a later plain mark does not demote it
        assert len(q) == 4
        order = [await q.get() for _ in range(4)]
        assert order == ["running", "new-2", "new-1", "new-3"]
        assert len(q) == 0
        for key in order:
            q.done(key)
        assert len(q) == 0

    run(scenario())


def test_an_urgent_mark_while_processing_requeues_in_the_urgent_lane():
    async def scenario():
        q = WorkQueue(resync_s=300)
        q.add("a")
        key = await q.get()
        q.add("b")
        q.add("a", urgent=True)
        q.done(key)
        assert [await q.get(), await q.get()] == ["a", "b"]

    run(scenario())


def test_a_key_marked_while_processing_is_queued_again_once_after_done():
    async def scenario():
        q = WorkQueue(resync_s=300)
        q.add("a")
        key = await q.get()
        for _ in range(5):
            q.add("a")
        assert len(q) == 0  # not handed to a second worker while the first holds it
        q.done(key)
        assert len(q) == 1
        assert await q.get() == "a"
        q.done("a")
        assert len(q) == 0

    run(scenario())


def test_workers_never_run_one_key_twice_at_once_and_coalesce():
    async def scenario():
        q = WorkQueue(resync_s=300)
        running: set[str] = set()
        runs: list[str] = []
        overlap = []

        async def reconcile(key):
            if key in running:
                overlap.append(key)
            running.add(key)
            runs.append(key)
            await asyncio.sleep(0.05)
            running.discard(key)
            return None

        tasks = start_workers(q, reconcile, 4, "test")
        for _ in range(50):
            q.add("a")
            q.add("b")
        await asyncio.sleep(0.01)
        for _ in range(50):  # marked while running: one more run each
            q.add("a")
            q.add("b")
        await asyncio.sleep(0.3)
        await stop_workers(q, tasks)
        assert overlap == []
        assert sorted(runs) == ["a", "a", "b", "b"]

    run(scenario())


def test_add_after_keeps_the_earliest_wake_up():
    async def scenario():
        q = WorkQueue(resync_s=300)
        q.add_after("a", 0.2)
        q.add_after("a", 5)  # later: ignored
        assert q.delayed("a") == pytest.approx(0.2, abs=0.05)
        q.add_after("a", 0.05)  # earlier: replaces
        assert q.delayed("a") == pytest.approx(0.05, abs=0.03)
        assert len(q) == 0
        assert await q.get() == "a"
        assert q.delayed("a") is None
        q.add_after("b", 0)
        assert len(q) == 1
        q.close()

    run(scenario())


def test_failures_back_off_doubling_to_the_cap_and_success_resets():
    assert [Backoff(1, 60).delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]

    async def scenario():
        q = WorkQueue(resync_s=300, backoff=Backoff(1, 60))
        assert [q.retry("a") for _ in range(3)] == [1, 2, 4]
        assert q.delayed("a") == pytest.approx(1, abs=0.05)  # the earliest wake-up stands
        q.forget("a")
        assert q.failures("a") == 0 and q.retry("a") == 1
        q.close()

    run(scenario())


def test_the_resync_is_jittered_around_its_period():
    async def scenario():
        low = WorkQueue(resync_s=100, jitter=0.1, rng=lambda: 0.0)
        high = WorkQueue(resync_s=100, jitter=0.1, rng=lambda: 0.999)
        low.resync("a")
        high.resync("a")
        assert low.delayed("a") == pytest.approx(90, abs=0.1)
        assert high.delayed("a") == pytest.approx(110, abs=0.1)
        low.close()
        high.close()

    run(scenario())


def test_a_worker_schedules_deadline_resync_and_backoff():
    async def scenario():
        q = WorkQueue(resync_s=300, jitter=0.0)
        results = {"deadline": 2.0, "quiet": None, "gone": GONE}

        async def reconcile(key):
            if key == "broken":
                raise RuntimeError("boom")
            return results[key]

        tasks = start_workers(q, reconcile, 2, "test")
        for key in ("deadline", "quiet", "gone", "broken"):
            q.add(key)
        await asyncio.sleep(0.1)
        assert q.delayed("deadline") == pytest.approx(2.0, abs=0.2)
        assert q.delayed("quiet") == pytest.approx(300, abs=0.5)
        assert q.delayed("gone") is None  # neither resync nor retry
        assert q.delayed("broken") == pytest.approx(1.0, abs=0.2) and q.failures("broken") == 1
        await stop_workers(q, tasks)
        q.add("quiet")
        assert len(q) == 0  # closed

    run(scenario())


def test_an_urgent_only_worker_takes_urgent_keys_and_skips_what_others_took():
    async def scenario():
        q = WorkQueue(resync_s=300)
        q.urgent_only_workers = True
        q.add("new")
        q.add("running", urgent=True)
        q.add("ended", urgent=True)
        assert await q.get() == "running"  # a general worker took it first
        assert await q.get(urgent_only=True) == "ended"  # its entry there is skipped
        assert q.taken_urgent("ended") and q.taken_urgent("running")
        waiting = asyncio.ensure_future(q.get(urgent_only=True))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # "new" is not for it
        assert await q.get() == "new"
        assert not q.taken_urgent("new")
        q.add("later", urgent=True)
        assert await waiting == "later"

    run(scenario())


def test_a_run_writes_as_urgently_as_its_key_was_marked():
    async def scenario():
        q = WorkQueue(resync_s=300)
        seen: dict[str, bool] = {}

        async def reconcile(key):
            seen[key] = URGENT_WRITES.get()
            return None

        q.add("new")
        q.add("running", urgent=True)
        tasks = start_workers(q, reconcile, 2, "test", urgent_only=1)
        await asyncio.sleep(0.1)
        await stop_workers(q, tasks)
        assert seen == {"new": False, "running": True}

    run(scenario())


def test_without_urgent_only_workers_nothing_piles_up_for_them():
    async def scenario():
        q = WorkQueue(resync_s=300)
        tasks = start_workers(q, lambda key: asyncio.sleep(0), 2, "test")
        for i in range(100):
            q.add(i, urgent=True)
        await asyncio.sleep(0.1)
        await stop_workers(q, tasks)
        assert not q.urgent_only_workers and q._urgent_ready.qsize() == 0

    run(scenario())
