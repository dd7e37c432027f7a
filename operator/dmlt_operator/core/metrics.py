"""Prometheus metrics of the operator, served on their own port (config.metrics_port).

Each resource's handlers keep a `PhaseTracker` over their own gauge and phases."""

from __future__ import annotations

import functools
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
_counter = functools.partial(Counter, registry=REGISTRY)
_gauge = functools.partial(Gauge, registry=REGISTRY)
_histogram = functools.partial(Histogram, registry=REGISTRY)

JOBS = _gauge("dmlt_trainingjobs", "TrainingJobs known to this operator, by phase.", ["phase"])
RECONCILE_ERRORS = _counter(
    "dmlt_reconcile_errors_total", "Reconciles of a TrainingJob that raised an error."
)
RECONCILE_SECONDS = _histogram(
    "dmlt_reconcile_duration_seconds",
    "Wall time of one TrainingJob reconcile, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GANG_RESTARTS = _counter(
    "dmlt_gang_restarts_total", "Gang restarts started (every rank recreated after one failed)."
)
RECONCILE_FAILURES = _counter(
    "dmlt_reconcile_failures_total",
    "Failures reported on an object: failed reconcile steps and refused creations, by the "
    "object's kind, the step and the reason (e.g. InvalidSpec, ExceededQuota, ServerError).",
    ["kind", "step", "reason"],
)
LEADER = _gauge(
    "dmlt_operator_leader", "1 on the replica that holds the Lease and reconciles, 0 on a standby."
)
PODS_CREATED = _counter("dmlt_pods_created_total", "Trainer Pods created.")

STUDIES = _gauge("dmlt_tuningstudies", "TuningStudies known to this operator, by phase.", ["phase"])
STUDY_RECONCILE_ERRORS = _counter(
    "dmlt_study_reconcile_errors_total",
    "Reconciles of a TuningStudy that raised an error (storage and MLflow outages included).",
)
STUDY_RECONCILE_SECONDS = _histogram(
    "dmlt_study_reconcile_duration_seconds",
    "Wall time of one TuningStudy reconcile, database and API calls included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STUDY_STORAGE_ERRORS = _counter(
    "dmlt_study_storage_errors_total",
    "Failed reconciles of a TuningStudy because its Optuna storage was unavailable.",
)
TRIALS_ASKED = _counter(
    "dmlt_study_trials_asked_total", "Trials asked from Optuna (new configurations sampled)."
)
TRIAL_JOBS_CREATED = _counter("dmlt_study_trial_jobs_created_total", "Trial TrainingJobs created.")
TRIALS_TOLD = _counter(
    "dmlt_study_trials_told_total", "Trial results told to Optuna, by the state they finished in.", ["state"]
)
for _state in ("COMPLETE", "PRUNED", "FAIL"):
    TRIALS_TOLD.labels(state=_state)  # exported from the start, at 0


class PhaseTracker:
    """Last seen phase of each object, folded into a gauge by phase (e.g. `dmlt_trainingjobs`)."""

    def __init__(self, gauge: Gauge, phases: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._gauge = gauge
        self._all = phases
        self._phases: dict[tuple[str, str], str] = {}
        self._publish()  # every phase is exported from the start, at 0

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase
            self._publish()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._publish()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._count()

    def _count(self) -> dict[str, int]:
        counts = dict.fromkeys(self._all, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def _publish(self) -> None:
        for phase, count in self._count().items():
            self._gauge.labels(phase=phase).set(count)


def serve(port: int) -> None:
    """Start the /metrics endpoint in a background thread (port 0: don't)."""
    if port:
        start_http_server(port, registry=REGISTRY)
