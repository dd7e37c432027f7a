"""TuningStudy end to end on a real cluster (KUBECONFIG): the chart with its PostgreSQL installed
into a fresh namespace, examples/tuning.yaml run to the end, and the two disruptions the
issue names (the operator Pod killed, the PostgreSQL Pod killed) in the middle of a study.

What is checked, and where the truth comes from:
- the study's status and `kubectl get ts` columns (the Table API);
- the trials in the database itself (`psql` in the PostgreSQL Pod): exactly maxTrials finished,
  nothing left RUNNING, pruned trials that ran fewer epochs, the best value status reports;
- the trial TrainingJobs and their Pods, sampled every second by a watcher thread: never more
  than `parallelism` at once, and each trial's job created once (one uid per name);
- MLflow (through the apiserver's service proxy): the parent run, the best trial's child run,
  the registered model version.

Sizes can be changed without editing: DMLT_E2E_STUDY (JSON merged into every study's spec) and
DMLT_E2E_STUDY_TIMEOUT (seconds per study, default 2400).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from tests.e2e import operator_fixtures as of
from tests.helpers.helm_binary import require_helm

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STUDY_CRD_FILE = ROOT / "helm" / "dmlt" / "crds" / "tuningstudies.dmlt.io.yaml"
EXAMPLE = ROOT / "examples" / "tuning.yaml"
PLURAL = "tuningstudies"
STUDY_CRD_NAME = f"{PLURAL}.{of.GROUP}"
LABEL_STUDY = "dmlt.io/study"
LABEL_TRIAL = "dmlt.io/trial"
POSTGRES_UID = 999
STUDY_TIMEOUT = float(os.environ.get("DMLT_E2E_STUDY_TIMEOUT", "2400"))
FINISHED = ("COMPLETE", "PRUNED")


# --------------------------------------------------------------------------- set-up


def apply_study_crd(api_client: client.ApiClient, timeout: float = 60) -> None:
    """Create or replace the TuningStudy CRD from the working tree (Helm never upgrades CRDs)."""
    body = yaml.safe_load(STUDY_CRD_FILE.read_text())
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        current = json.loads(of.raw_get(api_client, f"{path}/{STUDY_CRD_NAME}"))
    except ApiException as exc:
        if exc.status != 404:
            raise
        of.raw_request(api_client, "POST", path, body=body)
    else:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        of.raw_request(api_client, "PUT", f"{path}/{STUDY_CRD_NAME}", body=body)

    def established() -> bool:
        crd = json.loads(of.raw_get(api_client, f"{path}/{STUDY_CRD_NAME}"))
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (crd.get("status") or {}).get("conditions") or []
        )

    of.wait_for(established, timeout, f"CRD {STUDY_CRD_NAME} to be Established")


def postgres_name(release: str) -> str:
    return f"{of.release_fullname(release)}-postgresql"


def prepare_postgres_volume(api_client: client.ApiClient, namespace: str, release: str) -> str:
    """No default StorageClass: a hostPath volume pre-bound to the claim the StatefulSet will
    use (data-<sts>-0), made writable for the postgres user. Returns the PersistentVolume."""
    core = client.CoreV1Api(api_client)
    node = of.ready_node(api_client)
    hostname = (core.read_node(node).metadata.labels or {}).get("kubernetes.io/hostname", node)
    claim = f"data-{postgres_name(release)}-0"
    pv = f"{namespace}-{claim}"[:253]
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"dmlt-e2e": "true"}},
            "spec": {
                "capacity": {"storage": "2Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
                "hostPath": {"path": f"/tmp/dmlt-e2e/{namespace}/{claim}", "type": "DirectoryOrCreate"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}
                                ]
                            }
                        ]
                    }
                },
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "labels": {"dmlt-e2e": "true"}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "2Gi"}},
            },
        },
    )
    of.wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound",
        60,
        f"claim {claim} to bind to {pv}",
    )
    # hostPath ignores fsGroup: a root Pod hands the folder to the postgres user first.
    pod = f"chown-pg-{uuid.uuid4().hex[:8]}"
    script = f"import os; os.chown('/data', {POSTGRES_UID}, {POSTGRES_UID}); os.chmod('/data', 0o700)"
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": {"dmlt-e2e": "true"}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "chown",
                        "image": os.environ.get("DMLT_TRAINER_IMAGE", "dmlt-trainer:dev"),
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-c", script],
                        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            },
        },
    )
    phase = of.wait_for(
        lambda: (p := core.read_namespaced_pod(pod, namespace).status.phase) in ("Succeeded", "Failed") and p,
        240,
        f"Pod {pod} that makes {claim} writable for uid {POSTGRES_UID}",
        diag=lambda: of.describe_pod(core, namespace, pod),
    )
    assert phase == "Succeeded", of.try_pod_log(core, namespace, pod, container="chown")
    core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
    return pv


@dataclass
class Tuning:
    """The installed chart plus what the study tests need."""

    dmlt: of.Dmlt

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
        return self.custom.create_namespaced_custom_object(of.GROUP, of.VERSION, self.ns, PLURAL, manifest)

    def get_study(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(of.GROUP, of.VERSION, self.ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def study_table(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the `kubectl get ts` columns, the object) in one read."""
        data = of.raw_get(
            self.dmlt.api_client,
            f"/apis/{of.GROUP}/{of.VERSION}/namespaces/{self.ns}/{PLURAL}/{name}",
            {"includeObject": "Object"},
            accept=of.TABLE_ACCEPT,
        )
        table = json.loads(data)
        names = [c["name"] for c in table["columnDefinitions"]]
        row = table["rows"][0]
        return dict(zip(names, row["cells"], strict=False)), row["object"]

    def trial_jobs(self, study: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(
            of.GROUP, of.VERSION, self.ns, of.PLURAL, label_selector=f"{LABEL_STUDY}={study}"
        )["items"]

    def delete_study(self, name: str, timeout: float = 240) -> None:
        try:
            self.custom.delete_namespaced_custom_object(of.GROUP, of.VERSION, self.ns, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        of.wait_for(
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

        out = of.wait_for(query, 180, f"psql in {self.postgres_pod}", interval=3)
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


@pytest.fixture(scope="module")
def tuning(api_client: client.ApiClient, namespace: str) -> Iterator[Tuning]:
    """The chart (with PostgreSQL) in this module's fresh namespace; studies deleted, then
    uninstalled, afterwards."""
    helm = require_helm()
    apply_study_crd(api_client)
    extra: dict[str, Any] = {
        "operator": {"studyReconcileIntervalSeconds": 3},
        "postgresql": {"enabled": True},
    }
    volume = None
    if of.default_storage_class(api_client) is None:
        volume = prepare_postgres_volume(api_client, namespace, of.DEFAULT_RELEASE)
        extra["postgresql"]["persistence"] = {"storageClassName": "-"}
    try:
        installed = of.install(api_client, namespace, helm, extra_values=extra)
    except AssertionError as exc:
        pytest.fail(f"installing the chart failed: {exc}", pytrace=False)
    t = Tuning(installed)
    yield t
    try:
        for study in t.custom.list_namespaced_custom_object(of.GROUP, of.VERSION, namespace, PLURAL)["items"]:
            t.delete_study(study["metadata"]["name"])
    except Exception as exc:  # noqa: BLE001 - teardown must go on
        print(f"teardown: deleting studies: {exc}")
    problems = installed.teardown()
    if volume:
        try:
            client.CoreV1Api(api_client).delete_persistent_volume(volume)
        except ApiException as exc:
            problems.append(f"deleting PersistentVolume {volume}: {exc.status}")
    if problems:
        print("teardown problems:\n" + "\n".join(problems))


def study_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """examples/tuning.yaml's study renamed, with spec overrides (and DMLT_E2E_STUDY's)."""
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d.get("kind") == "TuningStudy"]
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec)
    doc["spec"].update(json.loads(os.environ.get("DMLT_E2E_STUDY", "{}")))
    image = os.environ.get("DMLT_TRAINER_IMAGE")
    if image:
        doc["spec"]["trialTemplate"]["image"] = image
    return doc


# --------------------------------------------------------------------------- observing a study


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
            if (p.metadata.labels or {}).get(of.LABEL_JOB) in names
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

        return of.wait_for(check, timeout, what, interval=2, diag=self.diag)

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
            log = of.try_pod_log(self.tuning.dmlt.core, self.tuning.ns, pod.metadata.name, container=None,
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


def assert_exact_trials(
    tuning: Tuning, watch: StudyWatch, study: dict[str, Any]
) -> list[tuple[int, str, float | None]]:
    """Exactly maxTrials finished in the database, nothing RUNNING, one job per trial created
    once, never more than parallelism at a time."""
    spec = study["spec"]
    status = study["status"]
    trials = tuning.db_trials(status["studyName"])
    numbers = [n for n, _, _ in trials]
    states = [s for _, s, _ in trials]
    assert len(numbers) == len(set(numbers)), f"duplicate trial numbers: {numbers}"
    assert sum(s in FINISHED for s in states) == spec["maxTrials"], f"trials in the database: {trials}"
    assert "RUNNING" not in states and "WAITING" not in states, trials
    name = study["metadata"]["name"]
    assert set(watch.job_uids) <= {f"{name}-t{n}" for n in numbers}, (watch.job_uids, numbers)
    recreated = {job: uids for job, uids in watch.job_uids.items() if len(uids) > 1}
    assert not recreated, f"trial jobs created more than once: {recreated}"
    parallelism = spec["parallelism"]
    assert watch.max_active_jobs <= parallelism, f"{watch.max_active_jobs} trial jobs active at once"
    assert watch.max_running_pods <= parallelism, f"{watch.max_running_pods} trial Pods running at once"
    counts = status["trials"]
    assert counts["completed"] == states.count("COMPLETE") and counts["pruned"] == states.count("PRUNED")
    assert counts["failed"] == states.count("FAIL") and counts["running"] == 0
    return trials


# --------------------------------------------------------------------------- admission

LR = {"name": "lr", "type": "float", "min": 0.0001, "max": 0.1, "log": True}
P0 = "spec.parameters[0]"
INVALID = [
    pytest.param({"parameters": [{**LR, "min": 0.0}]}, P0, "a log scale needs min > 0", id="log-min-0"),
    pytest.param({"parameters": [{**LR, "min": 0.5}]}, P0, "min must be less than max", id="min-max"),
    pytest.param(
        {"parameters": [{"name": "hiddenDims", "type": "categorical"}]},
        P0, "categorical parameters need choices", id="no-choices",
    ),
    pytest.param(
        {"parameters": [{"name": "hiddenDims", "type": "float", "min": 1, "max": 2}]},
        P0, "hiddenDims must be categorical", id="dims-float",
    ),
    pytest.param({"parameters": [LR, LR]}, "spec.parameters", "parameter names must be unique", id="dupes"),
    pytest.param(
        {"parameters": [{**LR, "name": "momentum"}]}, f"{P0}.name", "Unsupported value", id="unknown"
    ),
    pytest.param(
        {"maxTrials": 2, "parallelism": 4}, "spec.parallelism", "must not exceed maxTrials", id="parallel"
    ),
]  # fmt: skip


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("spec", "field_path", "message"), INVALID)
def test_invalid_search_space_is_rejected_at_admission(tuning: Tuning, spec, field_path, message) -> None:
    name = f"invalid-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ApiException) as err:
        tuning.create_study(study_manifest(name, **spec))
        tuning.delete_study(name)
    body = err.value.body or ""
    assert err.value.status == 422, f"expected 422 Invalid, got {err.value.status}: {body}"
    said = json.loads(body).get("message", "")  # the JSON body escapes < and > as \u003c, \u003e
    assert field_path in said, f"the apiserver's message does not name {field_path}: {said}"
    assert message in said, f"the apiserver's message lacks {message!r}: {said}"
    assert tuning.get_study(name) is None


# --------------------------------------------------------------------------- the example


@pytest.mark.timeout(int(STUDY_TIMEOUT) + 600)
def test_example_study_completes_within_parallelism_with_pruning(tuning: Tuning) -> None:
    manifest = study_manifest("tuning-example")
    name = manifest["metadata"]["name"]
    spec = manifest["spec"]
    started = time.monotonic()
    tuning.create_study(manifest)
    with StudyWatch(tuning, name) as watch:
        watch.until(phase("Running"), 600, f"{name} to start trials")
        columns, study = watch.until(phase("Succeeded"), STUDY_TIMEOUT, f"{name} to succeed")
        watch.sample()
    elapsed = time.monotonic() - started
    status = study["status"]
    print(f"{name}: Succeeded after {elapsed:.0f}s; max {watch.max_active_jobs} trial jobs at once\n"
          + "\n".join(watch.seen))  # fmt: skip

    # `kubectl get ts` as a user sees it.
    assert columns["Algorithm"] == "tpe" and columns["Phase"] == "Succeeded"
    assert columns["Trials"] == f"{spec['maxTrials']}/{spec['maxTrials']}" and columns["Running"] == 0
    trials = assert_exact_trials(tuning, watch, study)
    assert watch.max_active_jobs == spec["parallelism"], "the trials never ran in parallel"

    # Pruning happened, and pruned trials stopped early.
    pruned = [n for n, s, _ in trials if s == "PRUNED"]
    assert pruned, f"no trial was pruned: {trials}\n{watch.diag()}"
    epochs = spec["trialTemplate"]["trainer"]["epochs"]
    epochs_run = tuning.db_epochs_run(status["studyName"])
    for number in pruned:
        assert epochs_run.get(number, epochs) < epochs, (
            f"pruned trial {number} ran {epochs_run.get(number)} epochs"
        )
        job = tuning.dmlt.custom.get_namespaced_custom_object(of.GROUP, of.VERSION, tuning.ns, of.PLURAL,
                                                              f"{name}-t{number}")  # fmt: skip
        assert job["status"]["phase"] == "Succeeded" and job["status"]["result"] == "pruned", job["status"]
    assert columns["Pruned"] == len(pruned)

    # status.bestTrial is the database's best.
    complete = [(n, v) for n, s, v in trials if s == "COMPLETE" and v is not None]
    best_value = max(v for _, v in complete)
    best_numbers = {n for n, v in complete if v == best_value}
    best = status["bestTrial"]
    assert best["number"] in best_numbers, f"status says trial {best['number']}, the database {best_numbers}"
    assert math.isclose(best["value"], best_value, rel_tol=1e-9), (best, best_value)
    assert best["trainingJob"] == f"{name}-t{best['number']}" and best["params"], best
    assert math.isclose(float(columns["Best"]), best_value, rel_tol=1e-6)

    # MLflow: the parent run, the best trial's run nested under it, the registered version.
    parent = status["parentRunId"]
    run = of.mlflow_get(tuning.dmlt, "api/2.0/mlflow/runs/get", {"run_id": best["mlflowRunId"]})["run"]
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    assert tags.get("mlflow.parentRunId") == parent, tags
    parent_run = of.mlflow_get(tuning.dmlt, "api/2.0/mlflow/runs/get", {"run_id": parent})["run"]
    assert parent_run["info"]["status"] == "FINISHED", parent_run["info"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["ModelRegistered"]["status"] == "True", conditions["ModelRegistered"]
    registered = status["registeredModel"]
    assert registered["name"] == name and registered["trial"] == best["number"]
    version = of.mlflow_get(
        tuning.dmlt, "api/2.0/mlflow/model-versions/get", {"name": name, "version": registered["version"]}
    )["model_version"]
    assert version.get("run_id") == best["mlflowRunId"], version
    tuning.delete_study(name)


# --------------------------------------------------------------------------- disruptions


def disruption_study(name: str) -> dict[str, Any]:
    return study_manifest(name, maxTrials=int(os.environ.get("DMLT_E2E_DISRUPTION_TRIALS", "6")))


@pytest.mark.timeout(int(STUDY_TIMEOUT) + 900)
def test_operator_killed_mid_study_loses_and_duplicates_nothing(tuning: Tuning) -> None:
    manifest = disruption_study("ts-operator-kill")
    name = manifest["metadata"]["name"]
    tuning.create_study(manifest)
    with StudyWatch(tuning, name) as watch:
        watch.until(finished_at_least(1), STUDY_TIMEOUT, f"{name} to finish a trial with more running")
        (victim,) = tuning.dmlt.operator_pods()
        tuning.dmlt.core.delete_namespaced_pod(victim.metadata.name, tuning.ns, grace_period_seconds=0)
        killed = time.monotonic()

        def replacement_ready() -> bool:
            return any(
                p.metadata.uid != victim.metadata.uid
                and not p.metadata.deletion_timestamp
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                for p in tuning.dmlt.operator_pods()
            )

        of.wait_for(replacement_ready, 300, "a new operator Pod to be Ready", diag=watch.diag)
        _, study = watch.until(
            phase("Succeeded"), STUDY_TIMEOUT, f"{name} to succeed after the operator restart"
        )
        watch.sample()
    print(
        f"{name}: operator killed; Succeeded {time.monotonic() - killed:.0f}s later\n" + "\n".join(watch.seen)
    )
    assert_exact_trials(tuning, watch, study)
    tuning.delete_study(name)


@pytest.mark.timeout(int(STUDY_TIMEOUT) + 900)
def test_postgres_killed_mid_study_loses_and_duplicates_nothing(tuning: Tuning) -> None:
    manifest = disruption_study("ts-postgres-kill")
    name = manifest["metadata"]["name"]
    tuning.create_study(manifest)
    core = tuning.dmlt.core
    with StudyWatch(tuning, name) as watch:
        watch.until(finished_at_least(1), STUDY_TIMEOUT, f"{name} to finish a trial with more running")
        old = core.read_namespaced_pod(tuning.postgres_pod, tuning.ns)
        core.delete_namespaced_pod(tuning.postgres_pod, tuning.ns, grace_period_seconds=0)
        killed = time.monotonic()

        def restarted() -> bool:
            pod = core.read_namespaced_pod(tuning.postgres_pod, tuning.ns)
            return pod.metadata.uid != old.metadata.uid and any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )

        of.wait_for(restarted, 300, "the PostgreSQL Pod to come back Ready", diag=watch.diag)
        back = time.monotonic() - killed
        _, study = watch.until(
            phase("Succeeded"), STUDY_TIMEOUT, f"{name} to succeed after the database restart"
        )
        watch.sample()
    print(f"{name}: PostgreSQL killed, Ready again after {back:.0f}s; study Succeeded "
          f"{time.monotonic() - killed:.0f}s after the kill\n" + "\n".join(watch.seen))  # fmt: skip
    trials = assert_exact_trials(tuning, watch, study)
    # The restart cost no trial: nothing failed (the trainers retried, the operator reconnected).
    assert not [n for n, s, _ in trials if s == "FAIL"], f"trials failed across the restart: {trials}"
    conditions = {c["type"]: c for c in study["status"]["conditions"]}
    assert conditions["StorageReady"]["status"] == "True"
    tuning.delete_study(name)
