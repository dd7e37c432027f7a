"""Handles on TrainingJobs and TuningStudies in a cluster: state, watch, wait, logs, results.

Everything polls: a loop in the caller's own thread that a Ctrl-C (KeyboardInterrupt) ends at
once, leaving the object running in the cluster and no thread behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes.client import V1Pod

from dmlt import upstream as up
from dmlt.errors import ConditionUnreachable, DmltError, OperatorNotRunning, WaitTimeout
from dmlt.kube import Kube
from dmlt.logs import LogLine, PodRef, follow_logs
from dmlt.mlflow_runs import MlflowRun, fetch_run
from dmlt.observe import FINISHED, JobState, StudyState, TrialRow, wait_verdict

STATUS_GRACE_S = 60.0
"""How long a new object may go without any status before the operator is declared absent."""
S = TypeVar("S", JobState, StudyState)


def watch_states(
    read: Callable[[], S], *, poll: float, timeout: float | None, what: str, grace: float = STATUS_GRACE_S
) -> Iterator[S]:
    """Yield the first state and every change until a terminal one (or the timeout passes)."""
    start = time.monotonic()
    last: tuple[Any, ...] | None = None
    while True:
        state = read()
        if state.key() != last:
            last = state.key()
            yield state
        if state.terminal:
            return
        elapsed = time.monotonic() - start
        if state.phase is None and elapsed > grace:
            raise OperatorNotRunning(
                f"{what} has no status after {grace:.0f} s: no dmlt operator is acting on namespace "
                f"{state.namespace!r} (is it installed and running?)"
            )
        if timeout is not None and elapsed >= timeout:
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {what} (phase {state.phase or 'none yet'})"
            )
        time.sleep(poll if timeout is None else max(0.0, min(poll, timeout - elapsed)))


def wait_for(states: Iterator[S], until: str, what: str) -> S:
    """The first state in which `until` holds; ConditionUnreachable when it no longer can."""
    state = None
    for state in states:
        verdict = wait_verdict(state.phase, state.conditions, until)
        if verdict:
            return state
        if verdict is False:
            raise ConditionUnreachable(f"{what} is {state.phase}: it will not become {until}")
    assert state is not None
    raise ConditionUnreachable(f"{what} ended {state.phase}: it will not become {until}")


def _pod_ref(pod: V1Pod, prefix: str = "") -> PodRef | None:
    labels = pod.metadata.labels or {}
    try:
        rank, attempt = int(labels[up.LABEL_RANK]), int(labels[up.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    started = any(
        cs.state is not None and (cs.state.running is not None or cs.state.terminated is not None)
        for cs in pod.status.container_statuses or []
    )
    return PodRef(pod.metadata.name, pod.metadata.uid, f"{prefix}rank {rank}", attempt, rank, started)


class _ClusterObject:
    """A dmlt object in the cluster, by kind, namespace and name."""

    kind: str

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.namespace}/{self.name})"

    @property
    def what(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def object(self) -> dict[str, Any]:
        """The object as the apiserver holds it."""
        return self._kube.get(self.kind, self.namespace, self.name)

    def delete(self) -> None:
        """Delete the object (what it owns goes with it: a job's Pods and Service, a study's
        trial jobs)."""
        self._kube.delete(self.kind, self.namespace, self.name)


class Job(_ClusterObject):
    """A TrainingJob in the cluster."""

    kind = up.KIND

    def __init__(self, kube: Kube, namespace: str, name: str, *, tracking_uri: str | None = None) -> None:
        super().__init__(kube, namespace, name)
        self._tracking_uri = tracking_uri

    def state(self) -> JobState:
        return JobState.from_object(self.object())

    def watch(self, poll: float = 2.0, timeout: float | None = None) -> Iterator[JobState]:
        """The job's state now and after every change, until it Succeeds or Fails."""
        return watch_states(self.state, poll=poll, timeout=timeout, what=self.what)

    def wait(self, until: str = FINISHED, timeout: float | None = None, poll: float = 2.0) -> JobState:
        """Block until `until` (a phase, `finished` or `condition=TYPE`) holds.

        Raises WaitTimeout, or ConditionUnreachable when the job ended otherwise. Ctrl-C stops
        waiting and leaves the job running."""
        return wait_for(self.watch(poll, timeout), until, self.what)

    def pods(self, attempt: int | None = None) -> list[PodRef]:
        refs = [_pod_ref(p) for p in self._kube.pods(self.namespace, f"{up.LABEL_JOB}={self.name}")]
        return [r for r in refs if r is not None and (attempt is None or r.attempt == attempt)]

    def logs(self, follow: bool = False, attempt: int | None = None, poll: float = 1.0) -> Iterator[LogLine]:
        """Every rank's lines, merged in time order with a rank prefix.

        Without `attempt`: the current attempt; following, later attempts too (a gang restart
        shows as a marker line, then the new ranks). With `attempt`: that attempt's Pods, as
        long as they exist."""
        state = self.state()
        first = attempt if attempt is not None else state.attempt

        def pods() -> list[PodRef]:
            found = self.pods()
            if attempt is not None:
                return [p for p in found if p.attempt == attempt]
            if not follow:
                newest = max((p.attempt for p in found), default=first)
                return [p for p in found if p.attempt == newest]
            return [p for p in found if p.attempt >= first]

        return follow_logs(
            self._kube, self.namespace, pods, lambda: self.state().terminal, follow=follow, poll=poll
        )

    def finished_event(self) -> dict[str, Any] | None:
        """Rank 0's `finished` line (final status, test metrics), while its Pod exists."""
        rank0 = [p for p in self.pods() if p.rank == 0 and p.started]
        for pod in sorted(rank0, key=lambda p: -p.attempt):
            try:
                text = self._kube.pod_log(self.namespace, pod.name)
            except DmltError:
                continue
            events = [up.parse_event(line.partition(" ")[2]) for line in text.splitlines()]
            finished = [e for e in events if e and e.get("event") == up.EVENT_FINISHED]
            if finished:
                return finished[-1]
        return None

    def metrics(self) -> dict[str, float]:
        """The latest per-epoch metrics; once finished, also the test metrics (`test_auc`, ...)."""
        state = self.state()
        out = dict(state.metrics)
        if state.terminal:
            event = self.finished_event() or {}
            out.update(
                {f"test_{k}": v for k, v in (event.get("test_metrics") or {}).items() if v is not None}
            )
        return out

    def tracking_uri(self) -> str | None:
        """The job's MLflow server: its spec's, else what the operator gave its Pods."""
        if self._tracking_uri:
            return self._tracking_uri
        spec_uri = ((self.object().get("spec") or {}).get("mlflow") or {}).get("trackingUri")
        if spec_uri:
            return spec_uri
        for pod in self._kube.pods(self.namespace, f"{up.LABEL_JOB}={self.name}"):
            for container in pod.spec.containers:
                for env in container.env or []:
                    if env.name == "MLFLOW_TRACKING_URI" and env.value:
                        return env.value
        return self._kube.operator_tracking_uri(self.namespace)

    def mlflow_run(self) -> MlflowRun | None:
        """The job's MLflow run (metrics, params, UI URL, model URI); None before it has one.

        When the server cannot be reached, only the id and the server are known."""
        run_id = self.state().mlflow_run_id
        if not run_id:
            return None
        uri = self.tracking_uri()
        try:
            return fetch_run(uri, run_id, self._kube.proxy_get)
        except (DmltError, OSError, ValueError):
            return MlflowRun(run_id=run_id, tracking_uri=uri or "")


@dataclass(frozen=True, slots=True)
class BestTrial:
    """The study's best completed trial."""

    number: int
    value: float
    params: dict[str, Any]
    training_job: str
    mlflow_run_id: str | None = None

    @classmethod
    def from_status(cls, best: dict[str, Any] | None) -> BestTrial | None:
        if not best or "number" not in best:
            return None
        return cls(
            best["number"],
            best.get("value"),
            dict(best.get("params") or {}),
            best.get("trainingJob", ""),
            best.get("mlflowRunId"),
        )


class Study(_ClusterObject):
    """A TuningStudy in the cluster."""

    kind = up.STUDY_KIND

    def _trial_jobs(self) -> list[dict[str, Any]]:
        return self._kube.list(up.KIND, self.namespace, f"{up.LABEL_STUDY}={self.name}")

    def state(self) -> StudyState:
        return StudyState.from_objects(self.object(), self._trial_jobs())

    def trials(self) -> list[TrialRow]:
        """Every trial that has a TrainingJob: number, state, objective value, epochs, params."""
        return list(self.state().trials)

    @property
    def best_trial(self) -> BestTrial | None:
        return BestTrial.from_status((self.object().get("status") or {}).get("bestTrial"))

    def job(self, number: int) -> Job:
        """Trial `number`'s TrainingJob."""
        return Job(self._kube, self.namespace, up.trial_job_name(self.name, number))

    def watch(self, poll: float = 2.0, timeout: float | None = None) -> Iterator[StudyState]:
        return watch_states(self.state, poll=poll, timeout=timeout, what=self.what)

    def wait(self, until: str = FINISHED, timeout: float | None = None, poll: float = 2.0) -> StudyState:
        """Block until `until` holds (see Job.wait)."""
        return wait_for(self.watch(poll, timeout), until, self.what)

    def logs(self, follow: bool = False, poll: float = 1.0) -> Iterator[LogLine]:
        """Every trial's ranks, prefixed `t<N> rank <R>`."""

        def pods() -> list[PodRef]:
            jobs = {j["metadata"]["name"]: j for j in self._trial_jobs()}
            if not jobs:
                return []
            selector = f"{up.LABEL_JOB} in ({','.join(sorted(jobs))})"
            out = []
            for pod in self._kube.pods(self.namespace, selector):
                job = jobs.get((pod.metadata.labels or {}).get(up.LABEL_JOB, ""), {})
                number = ((job.get("metadata") or {}).get("labels") or {}).get(up.LABEL_TRIAL, "?")
                ref = _pod_ref(pod, prefix=f"t{number} ")
                if ref is not None:
                    out.append(ref)
            return out

        return follow_logs(
            self._kube, self.namespace, pods, lambda: self.state().terminal, follow=follow, poll=poll
        )
