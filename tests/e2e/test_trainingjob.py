"""End-to-end proof of the TrainingJob operator (issue 5) on a real cluster.

The module installs the chart with its defaults into a fresh namespace (operator, in-cluster
MLflow and PostgreSQL on claims of the cluster's default StorageClass), then:

- invalid specs are refused by the apiserver with a message naming the field;
- examples/ddp.yaml (test-sized trainer settings; its claim bound through the default class)
  trains to Succeeded: `kubectl get tj` showed progress while it ran, both ranks
  printed the same weights hash with world size 2, and the MLflow run exists on the in-cluster
  server with one value per epoch;
- deleting one rank's Pod mid-training restarts the whole gang (phase Restarting), the new
  attempt resumes from rank 0's checkpoint (its first epoch line is past the one reached), and
  the job Succeeds with status.restarts == 1;
- killing the operator Pod mid-training: the job still Succeeds, with no more Pods than ranks at
  any time and no gang restart;
- deleting a job removes its Pods and its Service.

The trainer settings make one epoch take several seconds on two shared cores, so the tests can
act mid-training (the operator reads progress every 5 s); override them with DMLT_E2E_TRAINER
(JSON merged into the trainer block). Each job takes about 2 minutes here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helpers.chart import Dmlt, installed_chart
from tests.helpers.jobs import (
    JobPoller,
    PodCensus,
    diagnose,
    epoch_numbers,
    finished_lines,
    job_events,
    job_manifest,
    load_example,
    phase_is,
    pods_by_rank,
    running_at_epoch,
)
from tests.helpers.kube import describe_namespace_pods, pod_log
from tests.helpers.mlflow import mlflow_get
from tests.helpers.names import LABEL_ATTEMPT
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = float(os.environ.get("DMLT_E2E_JOB_TIMEOUT", "900"))
"""Seconds for a job to go from apply to Succeeded (generous: 2 shared cores)."""
START_TIMEOUT = 600.0
"""Seconds until a job is Running with rank 0's first epoch reported."""
HANDOVER_LIMIT_S = 15.0
"""Seconds from killing the leading operator replica to the standby holding the Lease (issue 15)."""

EPOCHS = 6
TRAINER: dict[str, Any] = {
    "dataset": "synthetic",
    "nSamples": 100_000,
    "epochs": EPOCHS,
    # Small batches and one thread per rank: ~8-10 s per epoch here, long enough to observe
    # progress and to interrupt the job between epochs.
    "batchSize": 64,
    "lr": 0.003,
    "hiddenDims": [64, 32],
    "dropout": 0.1,
    "weightDecay": 0.0001,
    "extraArgs": ["--threads", "1"],
    **json.loads(os.environ.get("DMLT_E2E_TRAINER", "{}")),
}


@pytest.fixture(scope="module")
def dmlt(api_client: client.ApiClient, namespace: str) -> Iterator[Dmlt]:
    """The chart installed into this module's fresh namespace; uninstalled afterwards."""
    with installed_chart(api_client, namespace) as installed:
        yield installed


def _status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


# --------------------------------------------------------------------------- 5a: validation

INVALID_SPECS = [
    pytest.param({"replicas": 0}, "spec.replicas", "replicas must be at least 1", id="replicas-0"),
    pytest.param({"backend": "mpi"}, "spec.backend", "backend must be one of", id="backend-mpi"),
    pytest.param(
        {"trainer": {**TRAINER, "hiddenDims": [0]}}, "spec.trainer.hiddenDims", "positive", id="hidden-dims-0"
    ),
    pytest.param({"trainer": {**TRAINER, "dropout": 1.0}}, "spec.trainer.dropout", "[0, 1)", id="dropout-1"),
    pytest.param({"backend": "nccl"}, "spec.backend", "nvidia.com/gpu", id="nccl-without-gpu"),
    pytest.param(
        {"checkpoint": {"emptyDir": {}, "persistentVolumeClaim": {"claimName": "x"}}},
        "spec.checkpoint",
        "only one of",
        id="two-checkpoint-sources",
    ),
]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("override", "field", "message"), INVALID_SPECS)
def test_invalid_spec_is_rejected_naming_the_field(
    dmlt: Dmlt, override: dict[str, Any], field: str, message: str
) -> None:
    name = "invalid-" + field.rsplit(".", 1)[-1].lower()
    manifest = job_manifest(name, checkpoint={"emptyDir": {}})
    manifest["spec"].update(override)
    with pytest.raises(ApiException) as err:
        dmlt.create_job(manifest)
        dmlt.delete_job(name)
    body = err.value.body or ""
    assert err.value.status == 422, f"expected 422 Invalid, got {err.value.status}: {body}"
    assert field in body, f"the apiserver's message does not name {field}: {body}"
    assert message in body, f"the apiserver's message lacks {message!r}: {body}"
    assert dmlt.get_job(name) is None


# --------------------------------------------------------------------------- 2: the example


@pytest.mark.timeout(2400)
def test_example_trains_to_succeeded_with_progress_and_mlflow_run(dmlt: Dmlt) -> None:
    claim_doc, job_doc = load_example()
    name = job_doc["metadata"]["name"]
    claim = dmlt.checkpoint_claim(claim_doc["metadata"]["name"])
    assert job_doc["spec"]["checkpoint"] == {"persistentVolumeClaim": {"claimName": claim}}
    manifest = job_manifest(name, trainer=TRAINER)
    replicas = manifest["spec"]["replicas"]
    assert replicas == 2 and manifest["spec"]["backend"] == "gloo"

    started = time.monotonic()
    dmlt.create_job(manifest)
    poller = JobPoller(dmlt, name)
    job = poller.until(phase_is("Succeeded"), JOB_TIMEOUT, f"{name} to succeed", interval=1.0)
    elapsed = time.monotonic() - started
    status = _status(job)
    print(f"{name}: apply -> Succeeded in {elapsed:.0f}s; states seen:\n{poller.history()}")

    # `kubectl get tj` showed progress while the job ran.
    mid = [
        s for s in poller.seen if s.phase == "Running" and s.epoch is not None and s.epoch < (s.epochs or 0)
    ]
    assert mid, f"no Running state with partial progress was seen:\n{poller.history()}"
    assert all(s.progress == f"{s.epoch}/{s.epochs}" for s in mid), poller.history()
    assert any(s.ready == f"{replicas}/{replicas}" for s in poller.seen if s.phase == "Running"), (
        poller.history()
    )
    assert status["progress"]["epoch"] == EPOCHS and status["progress"]["summary"] == f"{EPOCHS}/{EPOCHS}"
    assert status.get("restarts") == 0, f"unexpected restarts:\n{diagnose(dmlt, name)}"
    assert 0.5 < status["metrics"]["val_auc"] <= 1.0, status["metrics"]
    assert status.get("result") == "completed", status
    assert status.get("completionTime") and status.get("startTime"), status

    # Both ranks were one process group of world size 2: same final weights.
    finished = finished_lines(dmlt, name)
    assert sorted(finished) == list(range(replicas)), (
        f"expected a `finished` line from each rank, got ranks {sorted(finished)}\n{diagnose(dmlt, name)}"
    )
    hashes = {r: e["weights_sha256"] for r, e in finished.items()}
    assert all(e["world_size"] == replicas for e in finished.values()), finished
    assert len(set(hashes.values())) == 1, f"ranks reported different weight hashes: {hashes}"
    rank_hashes = {r["rank"]: (r.get("result") or {}).get("weightsSha256") for r in status["ranks"]}
    assert rank_hashes == hashes, f"status.ranks[].result disagrees with the logs: {rank_hashes} vs {hashes}"
    assert "WARNING" not in status.get("message", ""), status["message"]
    print(f"{name}: weights_sha256 of both ranks {hashes[0]}")

    # The MLflow run exists on the in-cluster server, with per-epoch metrics.
    run_id = status.get("mlflowRunId")
    assert run_id, f"status.mlflowRunId is empty: {status}"
    assert finished[0].get("mlflow_run_id") == run_id, finished[0]
    run = mlflow_get(dmlt, "api/2.0/mlflow/runs/get", {"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED", run["info"]
    experiment = mlflow_get(
        dmlt, "api/2.0/mlflow/experiments/get", {"experiment_id": run["info"]["experiment_id"]}
    )["experiment"]
    assert experiment["name"] == job_doc["spec"]["mlflow"]["experiment"], experiment
    for key in ("val_auc", "train_loss"):
        history = mlflow_get(
            dmlt, "api/2.0/mlflow/metrics/get-history", {"run_id": run_id, "metric_key": key}
        )
        steps = sorted(m["step"] for m in history.get("metrics", []))
        assert steps == list(range(EPOCHS)), f"MLflow {key} history of run {run_id} has steps {steps}"
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    assert params.get("world_size") == str(replicas), params
    print(f"{name}: MLflow run {run_id} in experiment {experiment['name']!r}: {EPOCHS} epochs of val_auc")


# --------------------------------------------------------------------------- 3: gang restart


@pytest.mark.timeout(2400)
def test_deleting_a_rank_pod_restarts_the_gang_from_the_checkpoint(dmlt: Dmlt) -> None:
    name = "restart-job"
    claim = dmlt.checkpoint_claim("restart-job-checkpoints")
    manifest = job_manifest(name, trainer=TRAINER, checkpoint={"persistentVolumeClaim": {"claimName": claim}})
    replicas = manifest["spec"]["replicas"]
    started = time.monotonic()
    dmlt.create_job(manifest)
    poller = JobPoller(dmlt, name)
    job = poller.until(running_at_epoch(1), START_TIMEOUT, f"{name} to report epoch 1", interval=0.5)
    reached = _status(job)["progress"]["epoch"]
    run_id_before = _status(job).get("mlflowRunId")
    first_attempt = int(_status(job)["attempt"])  # the operator counts attempts from 0
    old = {p.metadata.name: p.metadata.uid for p in dmlt.pods(name)}
    assert len(old) == replicas, old
    victim = f"{name}-1"
    dmlt.core.delete_namespaced_pod(victim, dmlt.namespace)
    deleted_at = time.monotonic()
    print(f"{name}: deleted {victim} at +{deleted_at - started:.0f}s, rank 0 had reported epoch {reached}")

    job = poller.until(
        phase_is("Succeeded"), JOB_TIMEOUT, f"{name} to succeed after the gang restart", interval=0.5
    )
    status = _status(job)
    print(
        f"{name}: Succeeded {time.monotonic() - deleted_at:.0f}s after the deletion; "
        f"states:\n{poller.history()}"
    )
    after = [s for s in poller.seen if s.t >= deleted_at - poller.started - 1]
    assert any(s.phase == "Restarting" for s in after), f"phase Restarting never seen:\n{poller.history()}"
    assert status.get("restarts") == 1, f"restarts {status.get('restarts')}:\n{diagnose(dmlt, name)}"
    assert status.get("attempt") == first_attempt + 1, (
        f"attempt {status.get('attempt')} (first {first_attempt}):\n{diagnose(dmlt, name)}"
    )
    restarting = [c for c in status.get("conditions", []) if c["type"] == "Restarting"]
    assert restarting and restarting[0]["reason"] != "", status.get("conditions")
    reasons = [e.reason for e in job_events(dmlt, name)]
    assert "GangRestart" in reasons, reasons

    # The whole gang was replaced: new Pods (new uids) of the next attempt for every rank.
    pods = pods_by_rank(dmlt.pods(name))
    assert sorted(pods) == list(range(replicas)), pods.keys()
    for rank, pod in pods.items():
        assert pod.metadata.labels[LABEL_ATTEMPT] == str(first_attempt + 1), (rank, pod.metadata.labels)
        assert pod.metadata.uid != old.get(pod.metadata.name), f"rank {rank}'s Pod was not recreated"

    # The new attempt resumed from rank 0's checkpoint instead of starting again at epoch 1.
    log0 = pod_log(dmlt.core, dmlt.namespace, f"{name}-0")
    epochs = epoch_numbers(log0)
    assert epochs, f"no epoch lines in the new rank 0's log:\n{log0[-3000:]}"
    assert epochs[0] > reached >= 1, (
        f"the new attempt started at epoch {epochs[0]}, but {reached} epoch(s) were done before the "
        f"restart: it did not resume from the checkpoint (epochs logged: {epochs})"
    )
    assert epochs[-1] == EPOCHS, epochs
    finished = finished_lines(dmlt, name)
    hashes = {r: e["weights_sha256"] for r, e in finished.items()}
    assert sorted(hashes) == list(range(replicas)) and len(set(hashes.values())) == 1, hashes
    if run_id_before:
        assert status.get("mlflowRunId") == run_id_before, "the resumed attempt logged to another MLflow run"
    print(f"{name}: resumed at epoch {epochs[0]} (epoch {reached} was reported before the deletion)")


# --------------------------------------------------------------------------- 4: operator restart


@pytest.mark.timeout(2400)
def test_job_survives_the_leading_operator_killed_without_duplicate_pods(dmlt: Dmlt) -> None:
    name = "operator-kill-job"
    manifest = job_manifest(name, trainer=TRAINER, checkpoint={"emptyDir": {}})
    replicas = manifest["spec"]["replicas"]
    with PodCensus(dmlt.core, dmlt.namespace, name) as census:
        dmlt.create_job(manifest)
        poller = JobPoller(dmlt, name)
        running = poller.until(running_at_epoch(1), START_TIMEOUT, f"{name} to report epoch 1", interval=0.5)
        first_attempt = _status(running)["attempt"]
        victim, handover = dmlt.kill_leader()
        killed = time.monotonic() - handover
        assert handover <= HANDOVER_LIMIT_S, f"the standby took over {handover:.1f}s after the kill"
        job = poller.until(
            phase_is("Succeeded"), JOB_TIMEOUT, f"{name} to succeed after the operator restart"
        )
        time.sleep(3)  # let the watch report anything created right at the end
    status = _status(job)
    print(
        f"{name}: leading operator {victim.metadata.name} killed; the standby held the Lease "
        f"{handover:.1f}s later; "
        f"job Succeeded {time.monotonic() - killed:.0f}s after the kill; census: {census.summary()}\n"
        f"{poller.history()}"
    )
    assert census.max_present <= replicas, f"more trainer Pods than ranks existed at once: {census.summary()}"
    assert len(census.uids) == replicas, f"Pods were created more than once: {census.summary()}"
    assert status.get("restarts") == 0, f"the operator restart caused a gang restart:\n{diagnose(dmlt, name)}"
    assert status.get("attempt") == first_attempt, status
    finished = finished_lines(dmlt, name)
    assert sorted(finished) == list(range(replicas)), finished.keys()
    assert len({e["weights_sha256"] for e in finished.values()}) == 1, finished


# --------------------------------------------------------------------------- 5b: deletion


@pytest.mark.timeout(1800)
def test_deleting_a_job_removes_its_pods_and_service(dmlt: Dmlt) -> None:
    name = "delete-job"
    dmlt.create_job(job_manifest(name, trainer=TRAINER, checkpoint={"emptyDir": {}}))
    poller = JobPoller(dmlt, name)
    poller.until(phase_is("Running"), START_TIMEOUT, f"{name} to be Running", interval=0.5)
    assert len(dmlt.pods(name)) == 2
    service = dmlt.core.read_namespaced_service(name, dmlt.namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses, service.spec
    owner = service.metadata.owner_references[0]
    assert owner.kind == "TrainingJob" and owner.name == name, owner

    dmlt.delete_job(name)
    deleted = time.monotonic()

    def all_gone() -> bool:
        if dmlt.pods(name):
            return False
        try:
            dmlt.core.read_namespaced_service(name, dmlt.namespace)
            return False
        except ApiException as exc:
            if exc.status != 404:
                raise
        return dmlt.get_job(name) is None

    wait_for(
        all_gone,
        180,
        f"the Pods, Service and TrainingJob {name} to be deleted",
        diag=lambda: describe_namespace_pods(dmlt.core, dmlt.namespace),
    )
    print(f"{name}: job, Pods and Service gone {time.monotonic() - deleted:.1f}s after the delete")
