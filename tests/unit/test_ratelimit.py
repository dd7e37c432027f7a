"""The client-side limit on the operator's API writes: a token bucket (burst, then the rate),
safe across threads, and the pause a 429's Retry-After asks for."""

from __future__ import annotations

import threading
import time

import pytest
from dmlt_operator.core.kube import Kube, StaleRead
from dmlt_operator.core.ratelimit import URGENT_WRITES, TokenBucket, retry_after_seconds
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(3)] == [0, 0, 0]
    assert bucket.acquire() == pytest.approx(0.1)
    assert bucket.acquire() == pytest.approx(0.1)
    clock.now += 10  # idle: the bucket refills up to its burst, no more
    assert [bucket.acquire() for _ in range(3)] == [0, 0, 0]
    assert bucket.acquire() == pytest.approx(0.1)


def test_reservations_queue_up_in_order():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=1, clock=clock, sleep=clock.sleep)
    waits = [bucket.reserve() for _ in range(4)]  # nobody has slept yet
    assert waits == pytest.approx([0, 0.5, 1.0, 1.5])


def test_busy_while_writers_queue_on_the_bucket():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock, sleep=clock.sleep)
    assert not bucket.busy()
    bucket.reserve(), bucket.reserve()
    assert bucket.busy()  # the next write would wait
    clock.now += 0.5
    assert not bucket.busy()  # one token earned back
    bucket.pause(1)
    assert bucket.busy()


def test_a_pause_holds_everyone_back():
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=100, clock=clock, sleep=clock.sleep)
    bucket.pause(3)
    assert bucket.acquire() == pytest.approx(3)
    assert bucket.acquire() == 0


def test_an_urgent_write_goes_before_the_plain_writers_waiting():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=clock.sleep)
    plain = [bucket.reserve() for _ in range(4)]
    assert plain == pytest.approx([0, 0.1, 0.2, 0.3])
    # Urgent writes take the next free slots, one per 1/rate, whatever the plain queue.
    assert [bucket.reserve(urgent=True) for _ in range(2)] == pytest.approx([0, 0.1])
    # A plain writer reserved now waits behind all six (slots 0 to 0.5).
    assert bucket.reserve() == pytest.approx(0.6)


def test_a_plain_writer_overtaken_while_asleep_waits_one_slot_more_per_urgent_write():
    clock = Clock()
    urgent_waits: list[float] = []

    def two_urgent_writers_arrive(seconds: float) -> None:
        if not urgent_waits:
            urgent_waits.extend(bucket.reserve(urgent=True) for _ in range(2))
        clock.sleep(seconds)

    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=two_urgent_writers_arrive)
    assert bucket.acquire() == 0
    assert bucket.acquire() == pytest.approx(0.1 + 0.2)  # its own slot, then two more
    assert urgent_waits == pytest.approx([0, 0.1])
    assert clock.slept == pytest.approx([0.1, 0.2])


def test_urgency_comes_from_the_context_unless_given():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=clock.sleep)
    [bucket.reserve() for _ in range(3)]
    token = URGENT_WRITES.set(True)
    try:
        assert bucket.acquire() == 0  # ahead of the three plain ones
        assert bucket.acquire(urgent=False) == pytest.approx(0.4)
    finally:
        URGENT_WRITES.reset(token)


def test_threads_together_keep_to_the_rate():
    bucket = TokenBucket(rate=200, burst=10)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [bucket.acquire() for _ in range(15)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 60 tokens: 10 at once, 50 more at 200/s → at least 0.25 s.
    assert time.monotonic() - started >= 0.24


def test_retry_after_header():
    assert retry_after_seconds({"Retry-After": "7"}) == 7
    assert retry_after_seconds({}) == 1
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 1
    assert retry_after_seconds({"Retry-After": "9999"}) == 60
    assert retry_after_seconds(None) == 1


def throttled(retry_after: str = "2") -> ApiException:
    exc = ApiException(status=429, reason="Too Many Requests")
    exc.headers = {"Retry-After": retry_after}
    return exc


class FakeApi:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls: list[tuple] = []

    def create_namespaced_pod(self, namespace, body, **kwargs):
        self.calls.append((namespace, body["metadata"]["name"], kwargs))
        if self.failures:
            raise self.failures.pop(0)
        return self.reply

    reply = None

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.failures:
            raise self.failures.pop(0)
        return {"metadata": {"resourceVersion": "8"}, "status": args[-1]["status"]}


def kube_with(api: FakeApi, clock: Clock) -> Kube:
    kube = Kube(limiter=TokenBucket(rate=5, burst=1, clock=clock, sleep=clock.sleep))
    kube.core = kube.custom = api
    return kube


class RawReply:
    def __init__(self) -> None:
        self.steps: list[str] = []

    def read(self) -> bytes:
        self.steps.append("read")
        return b"{}"

    def release_conn(self) -> None:
        self.steps.append("release")


def test_a_create_reads_its_raw_reply_and_frees_the_connection():
    api = FakeApi([])
    api.reply = RawReply()
    assert kube_with(api, Clock()).create_pod({"metadata": {"name": "p", "namespace": "ns"}})
    assert api.calls[0][2]["_preload_content"] is False  # no model objects built
    assert api.reply.steps == ["read", "release"]


def test_a_429_waits_its_retry_after_and_tries_again():
    clock = Clock()
    api = FakeApi([throttled("2")])
    kube = kube_with(api, clock)
    assert kube.create_pod({"metadata": {"name": "p", "namespace": "ns"}}) is True
    assert len(api.calls) == 2
    assert clock.slept == pytest.approx([2.0])  # the Retry-After (it covers the rate's 0.2 s)


def test_a_429_that_persists_reaches_the_caller():
    clock = Clock()
    api = FakeApi([throttled("1") for _ in range(10)])
    with pytest.raises(ApiException) as err:
        kube_with(api, clock).create_pod({"metadata": {"name": "p", "namespace": "ns"}})
    assert err.value.status == 429 and len(api.calls) == 4


def test_patch_status_is_a_merge_patch_on_the_version_planned_from():
    api = FakeApi([])
    written = kube_with(api, Clock()).patch_status("ns", "ddp", {"phase": "Running"}, "7")
    ((args, kwargs),) = api.calls
    assert args[-1] == {"status": {"phase": "Running"}, "metadata": {"resourceVersion": "7"}}
    assert kwargs["_content_type"] == "application/merge-patch+json"
    assert written["metadata"]["resourceVersion"] == "8"


def test_patch_status_of_a_changed_or_vanished_job():
    kube = kube_with(FakeApi([ApiException(status=409), ApiException(status=404)]), Clock())
    with pytest.raises(StaleRead):
        kube.patch_status("ns", "ddp", {"phase": "Running"}, "7")
    assert kube.patch_status("ns", "ddp", {"phase": "Running"}, "7") is None
