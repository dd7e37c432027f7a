"""In-memory fakes of the operator's I/O, for unit tests of its handlers. Each implements the
Protocol its handlers are written against, as the real class does (tests/unit/test_fakes.py)."""

from __future__ import annotations

import copy
from typing import Any

from dmlt_operator.core.kube import StaleRead
from dmlt_operator.tuningstudy.mlflow_rest import MlflowError
from kubernetes.client.exceptions import ApiException


class FakeJobKube:
    """The API as the TrainingJob handlers see it (TrainingJobKube), in memory."""

    def __init__(self, logs: dict[str, str] | None = None, existing: set[str] | None = None):
        self.logs = logs or {}
        self.existing = set(existing or ())
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str | None]] = []
        self.events: list[tuple[str, str, str]] = []
        self.jobs_deleted: list[str] = []
        self.status_patches: list[tuple[str, dict[str, Any], str | None]] = []
        self.stale = False
        self.studies: dict[str, dict[str, Any]] = {}
        """name → a study whose status writes land on it (the rest only record them)."""
        """Refuse status writes as made from a stale read (409)."""
        self.workloads: list[dict[str, Any]] = []
        self.workload_patches: list[tuple[str, dict[str, Any], bool]] = []
        self.cluster_objects: dict[tuple[str, str], dict[str, Any]] = {}
        """(plural, name) → a ResourceFlavor or WorkloadPriorityClass."""
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.reads: list[tuple[str, str]] = []
        self.workloads_deleted: list[tuple[str, str | None]] = []
        self.pending: dict[str, dict[str, Any]] = {}
        """visibility API path (without the query) → PendingWorkloadsSummary."""
        self.pending_error: Exception | None = None
        self.pending_reads: list[str] = []

    def create_pod(self, pod):
        if pod["metadata"]["name"] in self.existing:
            return False
        self.existing.add(pod["metadata"]["name"])
        self.created.append(pod)
        return True

    def create_service(self, service):
        self.created.append(service)
        return True

    def delete_pod(self, namespace, name, uid=None):
        self.deleted.append((name, uid))
        return True

    def read_pod_log(self, namespace, name, container, tail_lines, limit_bytes):
        return self.logs.get(name)

    def delete_trainingjob(self, namespace, name):
        self.jobs_deleted.append(name)
        return True

    def patch_status(self, namespace, name, status, resource_version=None):
        if self.stale:
            raise StaleRead(f"TrainingJob {namespace}/{name} changed since version {resource_version}")
        self.status_patches.append((name, dict(status), resource_version))
        version = str(len(self.status_patches) + 1000)
        return {
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
            "status": status,
        }

    def post_event(self, body, type_, reason, message):
        self.events.append((type_, reason, message))

    def create_workload(self, workload):
        if any(w["metadata"]["name"] == workload["metadata"]["name"] for w in self.workloads):
            return False
        self.workloads.append(workload)
        return True

    def patch_workload(self, namespace, name, patch, status=False):
        self.workload_patches.append((name, patch, status))
        return True

    def read_cluster_object(self, group, version, plural, name):
        self.reads.append((plural, name))
        return self.cluster_objects.get((plural, name))

    def read_namespace_labels(self, name):
        return dict(self.namespace_labels.get(name, {}))

    def delete_workload(self, namespace, name, uid=None):
        self.workloads_deleted.append((name, uid))
        before = len(self.workloads)
        self.workloads = [w for w in self.workloads if w["metadata"]["name"] != name]
        return len(self.workloads) < before

    def read_pending_workloads(self, path):
        self.pending_reads.append(path)
        if self.pending_error is not None:
            raise self.pending_error
        return self.pending.get(path.partition("?")[0], {"items": []})


class FakeStudyKube:
    """The API as the TuningStudy handlers see it (TuningStudyKube): TrainingJobs, one Secret,
    events."""

    def __init__(self, url: str | None) -> None:
        self.secrets = {("ns", "dmlt-postgresql", "url"): url} if url else {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse: ApiException | None = None
        self.max_active = 0
        self.status_patches: list[tuple[str, dict[str, Any], str | None]] = []
        self.stale = False
        self.studies: dict[str, dict[str, Any]] = {}
        """name → a study whose status writes land on it (the rest only record them)."""

    def read_secret_value(self, namespace, name, key):
        return self.secrets.get((namespace, name, key))

    def create_trainingjob(self, job):
        if self.refuse is not None:
            raise self.refuse
        name = job["metadata"]["name"]
        if name in self.jobs:
            return False
        self.jobs[name] = {**job, "status": {}}
        self.created.append(name)
        self.max_active = max(self.max_active, self.active())
        return True

    def list_trainingjobs(self, namespace, label_selector):
        wanted = dict(kv.split("=") for kv in label_selector.split(","))
        return [j for j in self.jobs.values() if wanted.items() <= j["metadata"]["labels"].items()]

    def delete_trainingjob(self, namespace, name):
        self.deleted.append(name)
        return self.jobs.pop(name, None) is not None

    def patch_study_status(self, namespace, name, status, resource_version=None):
        """Merge `status` into the study in `studies` (in place, as the apiserver and the watch
        together would), or into nothing; the study as written."""
        self.status_patches.append((name, status, resource_version))
        study = self.studies.get(name)
        current = (study or {}).get("metadata", {}).get("resourceVersion")
        if self.stale or (study is not None and resource_version and resource_version != current):
            raise StaleRead(f"tuningstudies {namespace}/{name} changed since version {resource_version}")
        version = str(int(resource_version or "0") + 1)
        if study is None:
            return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": version}, "status": status}
        merged = {**(study.get("status") or {}), **status}
        study["status"] = {k: v for k, v in merged.items() if v is not None}
        study["metadata"]["resourceVersion"] = version
        return copy.deepcopy(study)

    def post_event(self, body, type_, reason, message):
        self.events.append((type_, reason, message))

    def active(self) -> int:
        return sum(1 for j in self.jobs.values() if j["status"].get("phase") not in ("Succeeded", "Failed"))


class FakeMlflow:
    """MLflow as the TuningStudy handlers see it (MlflowTracking), with switchable outages;
    called with a tracking URI, it is its own client."""

    def __init__(self) -> None:
        self.parent_runs: list[str] = []
        self.finished: list[tuple[str, str, dict]] = []
        self.registered: list[tuple[str, str, str | None, dict]] = []
        self.down = False
        self.registry_down = False
        self.registry_refuses = False

    def __call__(self, uri: str) -> FakeMlflow:
        return self

    def ensure_parent_run(self, experiment, run_name, study, study_uid, params=None):
        if self.down:
            raise MlflowError("MLflow runs/search: cannot reach http://m:5000: refused")
        self.parent_runs.append(study_uid)
        return "parent-1"

    def finish_run(self, run_id, status, metrics=None, tags=None):
        self.finished.append((run_id, status, dict(metrics or {})))

    def register_model(self, name, source, run_id, tags, description=""):
        if self.registry_down:
            raise MlflowError("MLflow registered-models/create: 503", status=503)
        if self.registry_refuses:
            raise MlflowError("MLflow model-versions/create: 400 INVALID_PARAMETER_VALUE bad source", 400)
        self.registered.append((name, source, run_id, dict(tags)))
        return "1"
