"""TuningStudies in the e2e tests: examples/tuning.yaml as a manifest, the installed chart with
the study's objects and its database (psql in the PostgreSQL Pod), and a watcher that samples a
study's trial jobs and Pods every second while polling `kubectl get ts` (the Table API)."""

from __future__ import annotations

import base64
import copy
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from tests.helpers.chart import Dmlt, release_fullname
from tests.helpers.kube import table_row, try_pod_log
from tests.helpers.names import GROUP, LABEL_JOB, LABEL_STUDY, PLURAL, STUDY_EXAMPLE, STUDY_PLURAL, VERSION
from tests.helpers.waiting import wait_for


def postgres_name(release: str) -> str:
    return f"{release_fullname(release)}-postgresql"


@dataclass
class Tuning:
    """The installed chart plus what the study tests need."""

    dmlt: Dmlt

    @property
    def custom(self) -> client.CustomObjectsApi:
        return self.dmlt.custom

    @property
    def ns(self) -> str:
        return self.dmlt.namespace

    @property
    def postgres_pod(self) -> str:
        return f"{postgres_name(self.dmlt.release)}-0"

    def create_study(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, STUDY_PLURAL, manifest)

    def get_study(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, STUDY_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def study_table(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the `kubectl get ts` columns, the object) in one read."""
        return table_row(
            self.dmlt.api_client, f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{STUDY_PLURAL}/{name}"
        )

    def trial_jobs(self, study: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, label_selector=f"{LABEL_STUDY}={study}"
        )["items"]

    def delete_study(self, name: str, timeout: float = 240) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, STUDY_PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        wait_for(
            lambda: self.get_study(name) is None and not self.trial_jobs(name),
            timeout,
            f"TuningStudy {name} and its trial jobs to be deleted",
        )

    # ---- the database
    def psql(self, sql: str) -> list[list[str]]:
        """Rows of a query run by psql inside the PostgreSQL Pod (local socket: trust auth)."""
        secret = self.dmlt.core.read_namespaced_secret(postgres_name(self.dmlt.release), self.ns)
        user = base64.b64decode(secret.data["username"]).decode()
        database = base64.b64decode(secret.data["database"]).decode()

        def query() -> str:
            out = stream(
                self.dmlt.core.connect_get_namespaced_pod_exec,
                self.postgres_pod,
                self.ns,
                container="postgresql",
                command=[
                    "psql",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-F",
                    "|",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    user,
                    "-d",
                    database,
                    "-c",
                    sql,
                ],  # fmt: skip
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _request_timeout=60,
            )
            if "ERROR" in out or "could not connect" in out:
                raise RuntimeError(out)
            return out or "\n"

        out = wait_for(query, 180, f"psql in {self.postgres_pod}", interval=3)
        return [line.split("|") for line in out.splitlines() if line.strip()]

    def db_trials(self, study_name: str) -> list[tuple[int, str, float | None]]:
        """(number, state, value) of every trial of the Optuna study, from the database."""
        name = study_name.replace("'", "''")
        rows = self.psql(
            "SELECT t.number, t.state, v.value FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
            f"WHERE s.study_name = '{name}' ORDER BY t.number"
        )
        return [(int(n), state, float(v) if v else None) for n, state, v in rows]

    def db_epochs_run(self, study_name: str) -> dict[int, int]:
        name = study_name.replace("'", "''")
        rows = self.psql(
            "SELECT t.number, a.value_json FROM trial_user_attributes a "
            "JOIN trials t ON t.trial_id = a.trial_id JOIN studies s ON s.study_id = t.study_id "
            f"WHERE s.study_name = '{name}' AND a.key = 'dmlt.epochs_run'"
        )
        return {int(n): int(json.loads(v)) for n, v in rows if v not in ("null", "")}


def study_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """examples/tuning.yaml's study renamed, with spec overrides (and DMLT_E2E_STUDY's)."""
    (doc,) = [
        d for d in yaml.safe_load_all(STUDY_EXAMPLE.read_text()) if d and d.get("kind") == "TuningStudy"
    ]
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec)
    doc["spec"].update(json.loads(os.environ.get("DMLT_E2E_STUDY", "{}")))
    image = os.environ.get("DMLT_TRAINER_IMAGE")
    if image:
        doc["spec"]["trialTemplate"]["image"] = image
    return doc


@dataclass
class StudyWatch:
    """Samples a study's trial jobs and their Pods every second in a thread."""

    tuning: Tuning
    study: str
    max_active_jobs: int = 0
    max_running_pods: int = 0
    job_uids: dict[str, set[str]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    """Distinct `kubectl get ts` rows, for failure messages."""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> StudyWatch:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.study}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def sample(self) -> None:
        jobs = self.tuning.trial_jobs(self.study)
        active = 0
        for job in jobs:
            meta = job["metadata"]
            self.job_uids.setdefault(meta["name"], set()).add(meta["uid"])
            if (job.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                active += 1
        names = {j["metadata"]["name"] for j in jobs}
        pods = self.tuning.dmlt.core.list_namespaced_pod(
            self.tuning.ns, label_selector="app.kubernetes.io/component=trainer"
        ).items
        running = sum(
            1
            for p in pods
            if (p.metadata.labels or {}).get(LABEL_JOB) in names
            and p.status.phase == "Running"
            and not p.metadata.deletion_timestamp
        )
        self.max_active_jobs = max(self.max_active_jobs, active)
        self.max_running_pods = max(self.max_running_pods, running)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - transient API errors: keep sampling
                self.errors.append(repr(exc))
            self._stop.wait(1.0)

    def poll(self) -> tuple[dict[str, Any], dict[str, Any]]:
        columns, obj = self.tuning.study_table(self.study)
        row = " ".join(f"{k}={columns.get(k)}" for k in ("Trials", "Running", "Pruned", "Best", "Phase"))
        if not self.seen or self.seen[-1] != row:
            self.seen.append(row)
        return columns, obj

    def until(self, done, timeout: float, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
        def check():
            columns, obj = self.poll()
            status = obj.get("status") or {}
            if status.get("phase") == "Failed" and done(obj) is not True:
                raise AssertionError(
                    f"TuningStudy {self.study} Failed: {status.get('message')}\n{self.diag()}"
                )
            return (columns, obj) if done(obj) else None

        return wait_for(check, timeout, what, interval=2, diag=self.diag)

    def diag(self) -> str:
        obj = self.tuning.get_study(self.study) or {}
        lines = [f"--- TuningStudy {self.study}", "states seen:", *(f"  {s}" for s in self.seen)]
        lines.append("status:\n" + yaml.safe_dump(obj.get("status"), sort_keys=False))
        for job in self.tuning.trial_jobs(self.study):
            s = job.get("status") or {}
            lines.append(
                f"job {job['metadata']['name']}: {s.get('phase')} {s.get('result')} {s.get('message')}"
            )
        for pod in self.tuning.dmlt.operator_pods():
            log = try_pod_log(self.tuning.dmlt.core, self.tuning.ns, pod.metadata.name, container=None,
                                 tail_lines=80)  # fmt: skip
            lines.append(f"operator log:\n{log[-8000:]}")
        return "\n".join(lines)


def phase(name: str):
    return lambda obj: (obj.get("status") or {}).get("phase") == name


def finished_at_least(n: int):
    def check(obj: dict[str, Any]) -> bool:
        trials = (obj.get("status") or {}).get("trials") or {}
        return trials.get("completed", 0) + trials.get("pruned", 0) >= n and trials.get("running", 0) >= 1

    return check
