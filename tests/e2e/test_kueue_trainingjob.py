"""TrainingJobs admitted by the real Kueue (`DMLT_KUEUE=1 hack/cluster.sh up`), with the chart's
operator: the queue step of trainingjob/plan.py end to end (docs/operator.md, "Queues").

- **Quota.** A ClusterQueue of 1.5 CPUs and three 1-CPU single-rank jobs: they run one at a
  time, all three Succeed, and the ClusterQueue never has more than one admitted Workload.
- **Gang.** A 2-rank job of 1 CPU per rank does not fit 1.5 CPUs: no rank Pod is ever created,
  the job stays Pending with its queue state and Kueue's reason.
- **Preemption.** A low-priority job with a checkpoint claim runs past its first epoch; a
  high-priority job preempts it (Event `Preempted by <ns>/<workload>`), runs and succeeds; the
  low one is suspended without a restart counted, resumes from its checkpoint (`Resumed at
  epoch e`, its epochs continue) and succeeds with the same weights hash as the same job run
  without interruption.

Each test prints the measured latencies (a monitor polls the Workloads, the jobs and the
ClusterQueue every 0.25 s): admission → all ranks Running, eviction → job Suspended, and
re-admission → the first epoch reported after the resume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dmlt_operator.trainingjob import queueing as q
from kubernetes import client

from tests.helpers.chart import Dmlt, installed_chart
from tests.helpers.jobs import (
    SMALL_TRAINER,
    diagnose,
    epoch_numbers,
    finished_lines,
    job_events,
    job_manifest,
)
from tests.helpers.kube import pod_log
from tests.helpers.kueue import cluster_queue, kueue_api
from tests.helpers.names import GROUP, LABEL_JOB, PLURAL, VERSION
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

RELEASE = "dmlt-kueue"
G, V = q.KUEUE_GROUP, q.KUEUE_VERSION
ONE_CPU = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1536Mi"}}
RESUMABLE: dict[str, Any] = {
    # a few seconds per epoch on one shared core: time to preempt it between epochs
    "dataset": "synthetic",
    "nSamples": 40_000,
    "epochs": 6,
    "batchSize": 64,
    "lr": 0.003,
    "hiddenDims": [32],
    "extraArgs": ["--threads", "1"],
}
JOB_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def kueue(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return kueue_api(api_client)


@pytest.fixture(scope="module")
def dmlt(api_client: client.ApiClient, namespace: str, kueue: Any) -> Iterator[Dmlt]:
    values = {"postgresql": {"enabled": False}, "dashboard": {"enabled": False}}
    with installed_chart(api_client, namespace, release=RELEASE, values=values) as installed:
        yield installed


@pytest.fixture(scope="module")
def queues(kueue: client.CustomObjectsApi, namespace: str, dmlt: Dmlt) -> Iterator[dict[str, str]]:
    with cluster_queue(kueue, namespace, cpu="1500m") as names:
        yield names


# --------------------------------------------------------------------------- the monitor


def _cond(obj: dict[str, Any], type_: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


class Monitor:
    """Polls the namespace's Workloads and TrainingJobs and the ClusterQueue; keeps, per job, the
    times (seconds since start) of each distinct (workload state, phase, epoch, attempt)."""

    def __init__(
        self, kueue: client.CustomObjectsApi, namespace: str, cq: str, interval: float = 0.25
    ) -> None:
        self.kueue, self.namespace, self.cq, self.interval = kueue, namespace, cq, interval
        self.t0 = time.monotonic()
        self.timeline: dict[str, list[tuple[float, str, str, int | None, int | None]]] = {}
        self.max_admitted = 0
        self.positions: dict[str, set[int]] = {}
        """Each job's status.queue.position values seen while it waited."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kueue-monitor")

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    @staticmethod
    def _wl_state(wl: dict[str, Any] | None) -> str:
        if wl is None:
            return "none"
        if _cond(wl, "Finished"):
            return "finished"
        if _cond(wl, "Evicted") and _cond(wl, "QuotaReserved"):
            return "evicted"
        if _cond(wl, "Admitted"):
            return "admitted"
        return "queued"

    def _tick(self) -> None:
        t = self.now()
        cq = self.kueue.get_cluster_custom_object(G, V, "clusterqueues", self.cq)
        self.max_admitted = max(
            self.max_admitted, int((cq.get("status") or {}).get("admittedWorkloads") or 0)
        )
        wls = self.kueue.list_namespaced_custom_object(G, V, self.namespace, q.WORKLOAD_PLURAL)["items"]
        by_job = {(w["metadata"].get("labels") or {}).get(LABEL_JOB): w for w in wls}
        jobs = self.kueue.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
        for job in jobs:
            name, status = job["metadata"]["name"], job.get("status") or {}
            row = (
                t,
                self._wl_state(by_job.get(name)),
                str(status.get("phase")),
                (status.get("progress") or {}).get("epoch"),
                status.get("attempt"),
            )
            position = (status.get("queue") or {}).get("position")
            if position is not None:
                self.positions.setdefault(name, set()).add(int(position))
            rows = self.timeline.setdefault(name, [])
            if not rows or rows[-1][1:] != row[1:]:
                rows.append(row)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - a transient API error: poll again
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)

    def first(self, job: str, pred: Any, after: float = 0.0) -> float | None:
        return next((r[0] for r in self.timeline.get(job, []) if r[0] >= after and pred(r)), None)

    def history(self, job: str) -> str:
        return "\n".join(
            f"  +{t:7.2f}s workload={w} phase={p} epoch={e} attempt={a}"
            for t, w, p, e, a in self.timeline.get(job, [])
        )


def _admitted_to_running(m: Monitor, job: str, after: float = 0.0) -> float:
    admitted = m.first(job, lambda r: r[1] == "admitted", after)
    assert admitted is not None, f"{job}: its Workload was never seen admitted:\n{m.history(job)}"
    running = m.first(job, lambda r: r[2] in ("Running", "Succeeded"), admitted)
    assert running is not None, f"{job}: never Running after its admission:\n{m.history(job)}"
    return running - admitted


def queued_job(
    name: str,
    trainer: dict[str, Any],
    *,
    replicas: int = 1,
    checkpoint: dict[str, Any] | None = None,
    priority: str | None = None,
    queue: str | None = "team",
) -> dict[str, Any]:
    manifest = job_manifest(
        name, trainer=trainer, checkpoint=checkpoint or {"emptyDir": {}}, replicas=replicas, resources=ONE_CPU
    )
    labels = {}
    if queue:
        labels[q.QUEUE_LABEL] = queue
    if priority:
        labels[q.PRIORITY_CLASS_LABEL] = priority
    manifest["metadata"]["labels"] = labels
    return manifest


def _status(dmlt: Dmlt, name: str) -> dict[str, Any]:
    return (dmlt.get_job(name) or {}).get("status") or {}


def _until_phase(dmlt: Dmlt, name: str, phase: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = _status(dmlt, name)
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"{name} Failed:\n{diagnose(dmlt, name)}")
        return status if status.get("phase") == phase else None

    return wait_for(check, timeout, f"{name} to be {phase}", interval=0.5, diag=lambda: diagnose(dmlt, name))


def _weights(dmlt: Dmlt, name: str) -> str:
    status = _status(dmlt, name)
    hashes = {(r.get("result") or {}).get("weightsSha256") for r in status.get("ranks") or []}
    if None in hashes or not hashes:
        hashes = {e["weights_sha256"] for e in finished_lines(dmlt, name).values()}
    assert len(hashes) == 1, f"{name}: ranks reported {hashes}"
    return hashes.pop()


# --------------------------------------------------------------------------- the tests


@pytest.mark.timeout(1500)
def test_quota_runs_the_jobs_one_at_a_time(dmlt: Dmlt, kueue, queues) -> None:
    names = [f"quota-{i}" for i in range(3)]
    with Monitor(kueue, dmlt.namespace, queues["cq"]) as m:
        for name in names:
            dmlt.create_job(queued_job(name, SMALL_TRAINER))
        for name in names:
            _until_phase(dmlt, name, "Succeeded")
        time.sleep(1)
    for name in names:
        print(f"{name}:\n{m.history(name)}")
    assert m.max_admitted == 1, f"the ClusterQueue admitted {m.max_admitted} workloads at once"
    # the jobs that waited showed their place in the LocalQueue (Kueue's visibility API)
    print(f"queue positions seen: {m.positions}")
    assert m.positions, "no waiting job ever showed status.queue.position"
    assert set().union(*m.positions.values()) <= {1, 2}, m.positions
    # never two of them running at once
    running = {n: [r[0] for r in m.timeline[n] if r[2] == "Running"] for n in names}
    spans = sorted(
        (m.first(n, lambda r: r[2] == "Running"), m.first(n, lambda r: r[2] == "Succeeded")) for n in names
    )
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end is not None and start is not None and start >= end - 0.5, (spans, running)
    waits = [_admitted_to_running(m, n) for n in names]
    for name in names:
        status = _status(dmlt, name)
        assert status["queue"]["state"] == "Admitted" and status["queue"]["name"] == "team", status["queue"]
        assert status["restarts"] == 0
        wl = kueue.list_namespaced_custom_object(
            G, V, dmlt.namespace, q.WORKLOAD_PLURAL, label_selector=f"{LABEL_JOB}={name}"
        )["items"]
        assert len(wl) == 1 and _cond(wl[0], "Finished"), wl
    print(f"TIMING admission -> all ranks Running (1 rank): {', '.join(f'{w:.2f}s' for w in waits)}")


@pytest.mark.timeout(600)
def test_a_gang_that_does_not_fit_is_never_started_in_part(dmlt: Dmlt, kueue, queues) -> None:
    name = "gang"
    dmlt.create_job(queued_job(name, SMALL_TRAINER, replicas=2))
    status = wait_for(
        lambda: (s := _status(dmlt, name)).get("queue", {}).get("state") == "Queued" and s,
        120,
        f"{name} to be queued",
        diag=lambda: diagnose(dmlt, name),
    )
    assert status["phase"] == "Pending", status
    assert "cpu" in status["message"] and "team" in status["message"], status["message"]
    for _ in range(20):  # and it stays so: no rank Pod, ever
        assert dmlt.pods(name) == [], [p.metadata.name for p in dmlt.pods(name)]
        assert _status(dmlt, name).get("phase") == "Pending"
        time.sleep(0.5)
    print(f"{name}: {status['message']}")
    # the queue label removed while it waits: its Workload goes and it starts without Kueue
    dmlt.custom.patch_namespaced_custom_object(
        GROUP, VERSION, dmlt.namespace, PLURAL, name, {"metadata": {"labels": {q.QUEUE_LABEL: None}}}
    )
    wait_for(
        lambda: len(dmlt.pods(name)) == 2 and "queue" not in _status(dmlt, name),
        60,
        f"{name} to leave its queue and create its Pods",
        diag=lambda: diagnose(dmlt, name),
    )
    assert _workloads(kueue, dmlt.namespace, name) == []
    reasons = [e.reason for e in job_events(dmlt, name)]
    assert "LeftQueue" in reasons, reasons
    dmlt.delete_job(name)


@pytest.mark.timeout(300)
def test_a_queue_named_after_the_start_is_ignored_while_it_runs(dmlt: Dmlt, kueue, queues) -> None:
    name = "late-queue"
    small = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1536Mi"}}
    trainer = {**SMALL_TRAINER, "epochs": 30}
    dmlt.create_job(
        job_manifest(name, trainer=trainer, checkpoint={"emptyDir": {}}, resources=small, replicas=1)
    )
    _until_phase(dmlt, name, "Running", 180)
    dmlt.custom.patch_namespaced_custom_object(
        GROUP, VERSION, dmlt.namespace, PLURAL, name, {"metadata": {"labels": {q.QUEUE_LABEL: "team"}}}
    )

    def ignored() -> dict[str, Any] | None:
        status = _status(dmlt, name)
        conds = {c["type"]: c for c in status.get("conditions") or []}
        return status if (conds.get("QueueIgnored") or {}).get("status") == "True" else None

    status = wait_for(ignored, 60, f"{name} to ignore its new queue", diag=lambda: diagnose(dmlt, name))
    assert status["phase"] in ("Running", "Succeeded") and "queue" not in status, status
    assert _workloads(kueue, dmlt.namespace, name) == []
    assert [p.metadata.name for p in dmlt.pods(name)] == [f"{name}-0"]
    dmlt.delete_job(name)


def _workloads(kueue: client.CustomObjectsApi, namespace: str, job: str) -> list[dict[str, Any]]:
    return kueue.list_namespaced_custom_object(
        G, V, namespace, q.WORKLOAD_PLURAL, label_selector=f"{LABEL_JOB}={job}"
    )["items"]


@pytest.mark.timeout(2400)
def test_a_preempted_job_resumes_from_its_checkpoint_with_the_same_weights(dmlt: Dmlt, kueue, queues) -> None:
    # the reference: the same job, never interrupted (its own claim, the same settings)
    ref_claim = dmlt.checkpoint_claim("ref-checkpoints")
    dmlt.create_job(
        queued_job("ref", RESUMABLE, checkpoint={"persistentVolumeClaim": {"claimName": ref_claim}})
    )
    _until_phase(dmlt, "ref", "Succeeded")
    reference = _weights(dmlt, "ref")

    low, high = "low", "high"
    claim = dmlt.checkpoint_claim("low-checkpoints")
    with Monitor(kueue, dmlt.namespace, queues["cq"]) as m:
        dmlt.create_job(
            queued_job(
                low,
                RESUMABLE,
                checkpoint={"persistentVolumeClaim": {"claimName": claim}},
                priority=queues["low"],
            )
        )
        reached = wait_for(
            lambda: (
                (e := (_status(dmlt, low).get("progress") or {}).get("epoch")) is not None and e >= 1 and e
            ),
            600,
            f"{low} to report its first epoch",
            interval=0.25,
            diag=lambda: diagnose(dmlt, low),
        )
        assert reached < RESUMABLE["epochs"], f"{low} finished before it could be preempted"
        preempted_at = m.now()
        dmlt.create_job(queued_job(high, SMALL_TRAINER, priority=queues["high"]))
        _until_phase(dmlt, high, "Succeeded")
        _until_phase(dmlt, low, "Succeeded")
        time.sleep(1)
    print(f"{low}:\n{m.history(low)}\n{high}:\n{m.history(high)}")

    status = _status(dmlt, low)
    assert status["restarts"] == 0, status
    reasons = [(e.reason, e.message) for e in job_events(dmlt, low)]
    preempted = [msg for r, msg in reasons if r == "Preempted"]
    assert preempted and preempted[0].startswith(f"Preempted by {dmlt.namespace}/trainingjob-{high}-"), (
        reasons
    )
    resumed = [msg for r, msg in reasons if r == "Resumed"]
    assert resumed and resumed[0].startswith("Resumed at epoch "), reasons
    # the new attempt continued from the checkpoint: its first epoch follows those done before
    epochs = epoch_numbers(pod_log(dmlt.core, dmlt.namespace, f"{low}-0"))
    assert epochs and epochs[0] > 1 and epochs[-1] == RESUMABLE["epochs"], epochs
    assert _weights(dmlt, low) == reference, "the preempted job's weights differ from the uninterrupted run's"

    evicted = m.first(low, lambda r: r[1] == "evicted", preempted_at)
    suspended = m.first(low, lambda r: r[2] == "Suspended", preempted_at)
    released = m.first(low, lambda r: r[1] == "queued", preempted_at)
    readmitted = m.first(low, lambda r: r[1] == "admitted", (released or preempted_at))
    last_epoch = max(
        [r[3] for r in m.timeline[low] if r[0] <= (readmitted or 0) and r[3] is not None], default=0
    )
    first_step = m.first(low, lambda r: r[3] is not None and r[3] > last_epoch, readmitted or 0)
    assert None not in (evicted, suspended, released, readmitted, first_step), m.history(low)
    print(
        f"TIMING preemptor created -> low evicted {evicted - preempted_at:.2f}s; "
        f"eviction -> job Suspended {suspended - evicted:.2f}s; eviction -> quota released (Pods gone) "
        f"{released - evicted:.2f}s; "
        f"re-admission -> all ranks Running {_admitted_to_running(m, low, released):.2f}s; "
        f"re-admission -> first epoch reported after the resume {first_step - readmitted:.2f}s "
        f"(one epoch of training included); high: admission -> Running {_admitted_to_running(m, high):.2f}s"
    )
