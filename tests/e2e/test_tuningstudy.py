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

import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helpers.chart import installed_chart
from tests.helpers.mlflow import mlflow_get
from tests.helpers.names import GROUP, PLURAL, STUDY_PLURAL, VERSION
from tests.helpers.studies import StudyWatch, Tuning, finished_at_least, phase, study_manifest
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

STUDY_TIMEOUT = float(os.environ.get("DMLT_E2E_STUDY_TIMEOUT", "2400"))
FINISHED = ("COMPLETE", "PRUNED")
HANDOVER_LIMIT_S = 15.0
"""Seconds from killing the leading operator replica to the standby holding the Lease (issue 15)."""


# --------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def tuning(api_client: client.ApiClient, namespace: str) -> Iterator[Tuning]:
    """The chart with its defaults (PostgreSQL on its claim of the default StorageClass) in this
    module's fresh namespace; studies deleted, then uninstalled, afterwards."""
    # A 3 s study reconcile instead of 5 s: the disruption tests act between trials.
    values = {"operator": {"studyReconcileIntervalSeconds": 3}}
    with installed_chart(api_client, namespace, values=values) as installed:
        t = Tuning(installed)
        yield t
        try:
            studies = t.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, STUDY_PLURAL)
            for study in studies["items"]:
                t.delete_study(study["metadata"]["name"])
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            print(f"teardown: deleting studies: {exc}")


# --------------------------------------------------------------------------- observing a study


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
        job = tuning.dmlt.custom.get_namespaced_custom_object(GROUP, VERSION, tuning.ns, PLURAL,
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
    run = mlflow_get(tuning.dmlt, "api/2.0/mlflow/runs/get", {"run_id": best["mlflowRunId"]})["run"]
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    assert tags.get("mlflow.parentRunId") == parent, tags
    parent_run = mlflow_get(tuning.dmlt, "api/2.0/mlflow/runs/get", {"run_id": parent})["run"]
    assert parent_run["info"]["status"] == "FINISHED", parent_run["info"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["ModelRegistered"]["status"] == "True", conditions["ModelRegistered"]
    registered = status["registeredModel"]
    assert registered["name"] == name and registered["trial"] == best["number"]
    version = mlflow_get(
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
        victim, handover = tuning.dmlt.kill_leader()
        killed = time.monotonic() - handover
        assert handover <= HANDOVER_LIMIT_S, f"the standby took over {handover:.1f}s after the kill"
        _, study = watch.until(
            phase("Succeeded"), STUDY_TIMEOUT, f"{name} to succeed after the operator restart"
        )
        watch.sample()
    print(
        f"{name}: leading operator {victim.metadata.name} killed; the standby held the Lease "
        f"{handover:.1f}s later; Succeeded {time.monotonic() - killed:.0f}s after the kill\n"
        + "\n".join(watch.seen)
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

        wait_for(restarted, 300, "the PostgreSQL Pod to come back Ready", diag=watch.diag)
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
