"""TrainingJobs in the e2e tests: examples/ddp.yaml as a manifest, a poller of `kubectl get tj`
(the Table API), a census of a job's Pods, what the ranks printed, and a diagnosis for failure
messages (status, Pods, Events, the operator's log)."""

from __future__ import annotations

import copy
import os
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.helpers.kube import describe_pod, json_events, pod_log, try_pod_log
from tests.helpers.names import (
    EXAMPLE,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RANK,
)

if TYPE_CHECKING:
    from tests.helpers.chart import Dmlt


SMALL_TRAINER: dict[str, Any] = {
    "dataset": "synthetic",
    "nSamples": 5000,
    "epochs": 2,
    "batchSize": 256,
    "hiddenDims": [16],
    "extraArgs": ["--threads", "1"],
}
"""A trainer block that finishes in seconds on one shared core (e2e jobs whose training is
not what they test)."""


def load_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """examples/ddp.yaml: (its PersistentVolumeClaim, its TrainingJob)."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    claims = [d for d in docs if d.get("kind") == "PersistentVolumeClaim"]
    jobs = [d for d in docs if d.get("kind") == "TrainingJob"]
    assert len(claims) == 1 and len(jobs) == 1, f"{EXAMPLE} should hold one claim and one TrainingJob"
    return claims[0], jobs[0]


def job_manifest(
    name: str,
    *,
    trainer: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    run_policy: Mapping[str, Any] | None = None,
    image: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """examples/ddp.yaml's TrainingJob renamed, with the given parts of its spec replaced."""
    _, job = load_example()
    job = copy.deepcopy(job)
    job["metadata"] = {"name": name}
    s = job["spec"]
    if trainer is not None:
        s["trainer"] = dict(trainer)
    if checkpoint is not None:
        s["checkpoint"] = dict(checkpoint)
    if run_policy is not None:
        s["runPolicy"] = {**s.get("runPolicy", {}), **run_policy}
    s["image"] = image or os.environ.get("DMLT_TRAINER_IMAGE") or s["image"]
    s.update(spec)
    return job


@dataclass(frozen=True, slots=True)
class Seen:
    """One distinct state of a job as `kubectl get tj` would have shown it."""

    t: float
    """Seconds since the poller started."""
    phase: str | None
    ready: str | None
    progress: str | None
    restarts: int | None
    epoch: int | None
    epochs: int | None
    attempt: int | None

    def __str__(self) -> str:
        return (
            f"+{self.t:6.1f}s phase={self.phase} ready={self.ready} progress={self.progress} "
            f"restarts={self.restarts} attempt={self.attempt}"
        )


class JobPoller:
    """Polls one job (printer columns + object) and remembers each distinct state it saw."""

    def __init__(self, dmlt: Dmlt, name: str) -> None:
        self.dmlt = dmlt
        self.name = name
        self.started = time.monotonic()
        self.seen: list[Seen] = []
        self.last: dict[str, Any] | None = None

    def poll(self) -> dict[str, Any]:
        columns, obj = self.dmlt.job_table(self.name)
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        seen = Seen(
            t=round(time.monotonic() - self.started, 1),
            phase=columns.get("Phase") or None,
            ready=columns.get("Ready") or None,
            progress=columns.get("Progress") or None,
            restarts=columns.get("Restarts"),
            epoch=progress.get("epoch"),
            epochs=progress.get("epochs"),
            attempt=status.get("attempt"),
        )
        if not self.seen or _key(self.seen[-1]) != _key(seen):
            self.seen.append(seen)
        self.last = obj
        return obj

    def until(
        self,
        done: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        *,
        interval: float = 1.0,
        fail_on_failed: bool = True,
    ) -> dict[str, Any]:
        """Poll until `done(job)`; fail early when the job turns Failed (unless expected)."""
        deadline = time.monotonic() + timeout
        errors = 0
        while True:
            try:
                obj = self.poll()
                errors = 0
            except ApiException as exc:
                errors += 1
                if errors > 30:
                    raise AssertionError(f"cannot read TrainingJob {self.name}: {exc}") from None
                time.sleep(interval)
                continue
            if done(obj):
                return obj
            phase = (obj.get("status") or {}).get("phase")
            if fail_on_failed and phase == "Failed":
                raise AssertionError(
                    f"TrainingJob {self.name} Failed while waiting for {what}:\n{self.history()}\n"
                    f"{diagnose(self.dmlt, self.name)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}; states seen:\n{self.history()}\n"
                    f"{diagnose(self.dmlt, self.name)}"
                )
            time.sleep(interval)

    def history(self) -> str:
        return "\n".join(f"  {s}" for s in self.seen)


def _key(seen: Seen) -> tuple[Any, ...]:
    return (seen.phase, seen.ready, seen.progress, seen.restarts, seen.attempt)


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda job: (job.get("status") or {}).get("phase") in phases


def running_at_epoch(min_epoch: int) -> Callable[[dict[str, Any]], bool]:
    """Running, with rank 0 having reported at least `min_epoch` epochs (but not all)."""

    def check(job: dict[str, Any]) -> bool:
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        epoch, epochs = progress.get("epoch"), progress.get("epochs")
        if status.get("phase") == "Succeeded" or (
            epoch is not None and epochs is not None and epoch >= epochs
        ):
            raise AssertionError(
                f"TrainingJob {job['metadata']['name']} finished before the test could act mid-training "
                f"(progress {progress}); make the trainer settings bigger (DMLT_E2E_TRAINER)"
            )
        return status.get("phase") == "Running" and epoch is not None and epoch >= min_epoch

    return check


class PodCensus:
    """Watches the Pods of one job; records the most that existed at once and every uid.

    A Pod counts from its creation to its deletion from the API (terminating Pods still count).
    """

    def __init__(self, core: client.CoreV1Api, namespace: str, job: str) -> None:
        self.core = core
        self.namespace = namespace
        self.selector = f"{LABEL_JOB}={job}"
        self.present: dict[str, str] = {}
        self.uids: dict[str, tuple[str, str | None]] = {}
        """uid → (Pod name, attempt label)."""
        self.max_present = 0
        self.max_names: list[str] = []
        self.errors: list[str] = []
        self._started_once = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"census-{job}", daemon=True)

    def __enter__(self) -> PodCensus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._started_once and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _see(self, kind: str, pod: client.V1Pod) -> None:
        uid, name = pod.metadata.uid, pod.metadata.name
        with self._lock:
            if kind == "DELETED":
                self.present.pop(uid, None)
            else:
                self.present[uid] = name
                self.uids.setdefault(uid, (name, (pod.metadata.labels or {}).get(LABEL_ATTEMPT)))
            if len(self.present) > self.max_present:
                self.max_present = len(self.present)
                self.max_names = sorted(self.present.values())

    def _relist(self) -> str:
        """List the Pods (forgetting those gone meanwhile); the list's resourceVersion."""
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        with self._lock:
            live = {p.metadata.uid for p in listed.items}
            for uid in list(self.present):
                if uid not in live:
                    self.present.pop(uid)
        for pod in listed.items:
            self._see("ADDED", pod)
        self._started_once = True
        return listed.metadata.resource_version

    def _watch(self, w: watch.Watch, rv: str) -> str | None:
        """One watch call from `rv`; the resourceVersion to go on from (None: list again)."""
        for event in w.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self.selector,
            resource_version=rv,
            timeout_seconds=10,
            allow_watch_bookmarks=True,
        ):
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                return None
            if kind == "BOOKMARK" or isinstance(obj, dict):
                rv = w.resource_version or rv
            else:
                rv = obj.metadata.resource_version
                self._see(kind, obj)
            if self._stop.is_set():
                w.stop()
                break
        return rv

    def _run(self) -> None:
        rv: str | None = None
        w = watch.Watch()
        while not self._stop.is_set():
            try:
                rv = self._watch(w, rv or self._relist())
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                self.errors.append(f"{exc.status} {exc.reason}")
                time.sleep(1)
            except Exception as exc:  # noqa: BLE001 - connection reset etc.: resume the watch
                self.errors.append(repr(exc))
                time.sleep(1)

    def summary(self) -> str:
        with self._lock:
            pods = ", ".join(f"{n} (attempt {a}, uid {u[:8]})" for u, (n, a) in self.uids.items())
            return f"max {self.max_present} at once ({self.max_names}); all Pods seen: {pods}"


def job_events(dmlt: Dmlt, job: str) -> list[client.CoreV1Event]:
    events = dmlt.core.list_namespaced_event(
        dmlt.namespace, field_selector=f"involvedObject.name={job},involvedObject.kind=TrainingJob"
    ).items
    events.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    return events


def diagnose(dmlt: Dmlt, job: str, operator_log_lines: int = 60) -> str:
    """Everything worth reading when a job did not do what a test expected."""
    out = [f"--- diagnosis of TrainingJob {dmlt.namespace}/{job}"]
    try:
        obj = dmlt.get_job(job)
        out.append(
            "status:\n" + textwrap.indent(yaml.safe_dump((obj or {}).get("status"), sort_keys=False), "  ")
        )
    except Exception as exc:  # noqa: BLE001
        out.append(f"<cannot read the job: {exc}>")
    try:
        for pod in dmlt.pods(job):
            out.append(describe_pod(dmlt.core, dmlt.namespace, pod.metadata.name))
            tail = try_pod_log(dmlt.core, dmlt.namespace, pod.metadata.name, tail_lines=8)
            out.append(textwrap.indent(tail[-3000:], "    | "))
        out += [f"event {e.type} {e.reason}: {e.message}" for e in job_events(dmlt, job)]
        for pod in dmlt.operator_pods():
            out.append(f"operator {pod.metadata.name} log (last {operator_log_lines} lines):")
            log = try_pod_log(
                dmlt.core, dmlt.namespace, pod.metadata.name, container=None, tail_lines=operator_log_lines
            )
            out.append(textwrap.indent(log[-8000:], "    | "))
    except Exception as exc:  # noqa: BLE001
        out.append(f"<diagnosis incomplete: {exc}>")
    return "\n".join(out)


def finished_lines(dmlt: Dmlt, job: str) -> dict[int, dict[str, Any]]:
    """rank → the `finished` JSON line each Pod of the job printed (read from its log)."""
    out: dict[int, dict[str, Any]] = {}
    for pod in dmlt.pods(job):
        for event in json_events(pod_log(dmlt.core, dmlt.namespace, pod.metadata.name), "finished"):
            out[int(event["rank"])] = event
    return out


def epoch_numbers(text: str) -> list[int]:
    return [int(e["epoch"]) for e in json_events(text, "epoch")]


def pods_by_rank(pods: Iterable[client.V1Pod]) -> dict[int, client.V1Pod]:
    return {int((p.metadata.labels or {})[LABEL_RANK]): p for p in pods}
