"""Pure status helpers: Pod summaries, trainer log parsing, conditions, status deltas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from dmlt_operator.core import conditions as cond
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob import progress as pg

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def pod_body(
    name="ddp-0",
    rank="0",
    attempt="0",
    phase="Running",
    state=None,
    ready=True,
    owner="uid-1",
    deleting=False,
    conditions=None,
):
    state = state if state is not None else {"running": {"startedAt": "2026-11-27T11:00:00Z"}}
    meta = {
        "name": name,
        "uid": f"pod-{name}",
        "labels": {"dmlt.io/job-name": "ddp", "dmlt.io/rank": rank, "dmlt.io/attempt": attempt},
        "ownerReferences": [{"kind": "TrainingJob", "controller": True, "uid": owner}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T11:59:00Z"
    conds = conditions if conditions is not None else [
        {"type": "Ready", "status": "True" if ready else "False"}
    ]  # fmt: skip
    return {
        "metadata": meta,
        "spec": {"nodeName": "node-a"},
        "status": {
            "phase": phase,
            "conditions": conds,
            "containerStatuses": [{"name": "trainer", "state": state}],
        },
    }


# --------------------------------------------------------------------------- Pods


def test_running_pod_summary():
    s = pd.summarize_pod(pod_body())
    assert s.name == "ddp-0" and s.rank == 0 and s.attempt == 0
    assert s.owner_uid == "uid-1" and s.uid == "pod-ddp-0"
    assert s.ready and s.started and s.state == pd.RUNNING
    assert s.node == "node-a"


def test_failed_pod_summary_has_exit_code_and_reason():
    body = pod_body(
        phase="Failed",
        state={"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}},
        ready=False,
    )
    s = pd.summarize_pod(body)
    assert s.state == pd.FAILED
    assert s.exit_code == 1 and s.reason == "Error" and s.message == "boom"
    assert "rank 0 (pod ddp-0) failed: Error, exit code 1" in pd.describe_failure(s)


def test_evicted_pod_reason_comes_from_pod_status():
    body = pod_body(phase="Failed", state={}, ready=False)
    body["status"]["reason"] = "Evicted"
    body["status"]["message"] = "The node was low on resource: memory."
    s = pd.summarize_pod(body)
    assert s.state == pd.FAILED and s.reason == "Evicted"


def test_waiting_pod_surfaces_image_pull_errors():
    body = pod_body(
        phase="Pending",
        state={"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
        ready=False,
    )
    s = pd.summarize_pod(body)
    assert s.state == pd.PENDING and not s.started
    assert s.reason == "ImagePullBackOff"


def test_unschedulable_pod_reason():
    body = pod_body(
        phase="Pending",
        state={},
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/1 nodes are available"}],
    )  # fmt: skip
    body["status"]["containerStatuses"] = []
    s = pd.summarize_pod(body)
    assert s.state == pd.PENDING and s.reason == "Unschedulable"


def test_terminating_pod():
    assert pd.summarize_pod(pod_body(deleting=True)).state == pd.TERMINATING
    # A finished Pod being deleted is still finished.
    done = pod_body(phase="Succeeded", state={"terminated": {"exitCode": 0}}, deleting=True)
    assert pd.summarize_pod(done).state == pd.SUCCEEDED


def test_running_phase_without_started_container_is_pending():
    body = pod_body(state={"waiting": {"reason": "ContainerCreating"}}, ready=False)
    assert pd.summarize_pod(body).state == pd.PENDING


@pytest.mark.parametrize("labels", [{"dmlt.io/rank": "x"}, {"dmlt.io/attempt": "-1"}, {}])
def test_pod_with_bad_labels_is_ignored(labels):
    body = pod_body()
    body["metadata"]["labels"] = {"dmlt.io/job-name": "ddp", **labels}
    assert pd.summarize_pod(body) is None


def test_summary_without_owner():
    body = pod_body()
    body["metadata"]["ownerReferences"] = []
    assert pd.summarize_pod(body).owner_uid is None


# --------------------------------------------------------------------------- logs


def epoch_line(epoch, epochs=10, **metrics):
    return json.dumps(
        {
            "event": "epoch",
            "epoch": epoch,
            "epochs": epochs,
            "metrics": metrics or {"val_auc": 0.9, "train_loss": 0.3},
            "mlflow_run_id": "abc123",
        }
    )


def test_latest_epoch_wins_and_noise_is_skipped():
    text = "\n".join(
        [
            "INFO starting",
            epoch_line(1, val_auc=0.8),
            "{not json",
            "[1, 2, 3]",
            '{"event": "epoch", "epoch": "three"}',
            epoch_line(2, val_auc=0.85, lr=0.001),
            "Traceback (most recent call last):",
        ]
    )
    report = pg.parse_trainer_log(text)
    assert report.epoch == 2 and report.epochs == 10
    assert report.metrics == {"lr": 0.001, "val_auc": 0.85}
    assert report.mlflow_run_id == "abc123"
    assert report.finished is None
    assert pg.progress_of(report) == {"epoch": 2, "epochs": 10, "summary": "2/10", "percent": 20}


def test_metrics_are_sanitised():
    line = json.dumps(
        {
            "event": "epoch",
            "epoch": 1,
            "epochs": 2,
            "metrics": {
                "val_auc": 0.9123456789,
                "nan_metric": float("nan"),
                "inf_metric": float("inf"),
                "text": "high",
                "flag": True,
                "bad key!": 1.0,
                "ok/name-1.x": 2,
            },
        }
    )
    report = pg.parse_trainer_log(line)
    assert report.metrics == {"ok/name-1.x": 2.0, "val_auc": 0.912346}


def test_too_many_metrics_are_capped():
    metrics = {f"m{i:03d}": i for i in range(100)}
    line = json.dumps({"event": "epoch", "epoch": 1, "epochs": 1, "metrics": metrics})
    assert len(pg.parse_trainer_log(line).metrics) == pg.MAX_METRICS


def test_finished_event():
    sha = "a" * 64
    text = epoch_line(10) + "\n" + json.dumps(
        {"event": "finished", "rank": 0, "world_size": 2, "status": "early_stopped",
         "weights_sha256": sha, "mlflow_run_id": "abc123"}
    )  # fmt: skip
    report = pg.parse_trainer_log(text)
    assert report.finished == {
        "status": "early_stopped",
        "weightsSha256": sha,
        "mlflowRunId": "abc123",
        "worldSize": 2,
    }


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "finished", "status": "exploded"}',
        '{"event": "finished"}',
        '{"event": "epoch", "epoch": -1, "epochs": 3}',
        '{"event": "epoch", "epoch": true, "epochs": 3}',
        '{"event": "other", "epoch": 1}',
        "",
    ],
)
def test_malformed_events_are_ignored(line):
    report = pg.parse_trainer_log(line)
    assert report.epoch is None and report.finished is None
    assert pg.progress_of(report) is None


def test_bad_hash_and_run_id_are_dropped():
    line = json.dumps(
        {"event": "finished", "status": "completed", "weights_sha256": "xyz",
         "mlflow_run_id": "../../etc"}
    )  # fmt: skip
    report = pg.parse_trainer_log(line)
    assert report.finished == {"status": "completed"}
    assert report.mlflow_run_id is None


def test_epoch_beyond_total_is_clamped_and_missing_total_allowed():
    assert pg.parse_trainer_log(epoch_line(12, epochs=10)).epoch == 10
    report = pg.parse_trainer_log('{"event": "epoch", "epoch": 3}')
    assert pg.progress_of(report) == {"epoch": 3, "summary": "3"}


def test_none_and_huge_garbage():
    assert pg.parse_trainer_log(None).empty
    assert pg.parse_trainer_log("{" * 10000 + "}" * 10000).empty


# --------------------------------------------------------------------------- conditions


def test_set_condition_adds_and_keeps_transition_time_when_unchanged():
    conds = cond.set_condition([], "Running", True, "AllRanksRunning", "ok", NOW, 2)
    assert conds == [
        {
            "type": "Running",
            "status": "True",
            "reason": "AllRanksRunning",
            "message": "ok",
            "lastTransitionTime": "2026-11-27T12:00:00Z",
            "observedGeneration": 2,
        }
    ]
    later = NOW + timedelta(minutes=5)
    same = cond.set_condition(conds, "Running", True, "AllRanksRunning", "still ok", later, 2)
    assert same[0]["lastTransitionTime"] == "2026-11-27T12:00:00Z"
    assert same[0]["message"] == "still ok"
    flipped = cond.set_condition(same, "Running", False, "RankFailed", "x", later, 2)
    assert flipped[0]["status"] == "False"
    assert flipped[0]["lastTransitionTime"] == "2026-11-27T12:05:00Z"


def test_clear_condition_only_when_present():
    assert cond.clear_condition([], "Running", "R", "m", NOW) == []
    conds = cond.set_condition([], "Running", True, "R", "m", NOW)
    assert cond.clear_condition(conds, "Running", "X", "y", NOW)[0]["status"] == "False"
    assert cond.condition_is_true(conds, "Running")


def test_status_delta():
    old = {"phase": "Running", "restarts": 0, "progress": {"epoch": 1}, "kopf": {"x": 1}}
    new = {"phase": "Running", "restarts": 1, "progress": {"epoch": 2}}
    assert rc.status_delta(old, new) == {"restarts": 1, "progress": {"epoch": 2}}
    assert rc.status_delta(new, new) == {}
    # A managed key that disappears is removed; foreign keys are left alone.
    assert rc.status_delta({"startTime": "t", "kopf": {}}, {}) == {"startTime": None}


def test_time_helpers():
    assert cond.format_time(NOW) == "2026-11-27T12:00:00Z"
    assert cond.parse_time("2026-11-27T12:00:00Z") == NOW
    assert cond.parse_time("garbage") is None
    assert cond.parse_time(None) is None


# Two lines as dmlt_trainer printed them on rank 0 (2 ranks, gloo, launched with the exact
# command build_rank_pod() gives a Pod), with the warnings around them.
REAL_RANK0_LOG = "\n".join(
    [
        "[W1127 15:57:10.1 socket.cpp:764] [c10d] The IPv6 network addresses of (x, 29533) "
        "cannot be retrieved (gai error: -2 - Name or service not known).",
        '{"epoch": 2, "epochs": 2, "event": "epoch", "metrics": {"best_val_auc": 0.7050666666666666, "epoch": 1, "epoch_time_s": 3.983162730999993, "eval_time_s": 0.18853163300013875, "generalization_gap": 0.016488611388130625, "grad_norm": 0.3156847655773163, "lr": 0.0018337860658088677, "samples_per_sec": 527.2192330120503, "train_accuracy": 0.6147618889808655, "train_loss": 0.6586477756500244, "val_accuracy": 0.5866666666666667, "val_auc": 0.7050666666666666, "val_brier": 0.24103140219961403, "val_f1": 0.6759581881533101, "val_loss": 0.675136387038155, "val_mcc": 0.2077261665949553, "val_pr_auc": 0.6996786917652951, "val_precision": 0.5558739255014327, "val_recall": 0.8622222222222222, "val_specificity": 0.3111111111111111}, "mlflow_run_id": "c17fb195fc2c415fa3688f364d61b93e"}',  # noqa: E501
        "/work/main/trainer_image/dmlt_trainer/train.py:118: FutureWarning: ...",
        '{"best_val_auc": 0.7050666666666666, "epochs_run": 2, "event": "finished", "mlflow_run_id": "c17fb195fc2c415fa3688f364d61b93e", "rank": 0, "status": "completed", "test_metrics": {"accuracy": 0.62, "auc": 0.7500839506172841, "f1": 0.7076923076923077}, "weights_sha256": "1852b45b4abf6d38ecfd88860e5f4bcea538f41ab1717e3ab9804c6acb74a811", "world_size": 2}',  # noqa: E501
    ]
)


def test_real_trainer_output():
    report = pg.parse_trainer_log(REAL_RANK0_LOG)
    assert pg.progress_of(report)["summary"] == "2/2"
    assert 0 < report.metrics["val_auc"] < 1
    assert {"train_loss", "val_loss", "lr"} <= set(report.metrics)
    assert report.finished["status"] == "completed"
    assert report.finished["worldSize"] == 2
    assert len(report.finished["weightsSha256"]) == 64
    assert report.mlflow_run_id == report.finished["mlflowRunId"]


def test_priority_metrics_survive_the_cap():
    metrics = {f"a{i:03d}": i for i in range(100)} | {"val_auc": 0.9, "lr": 0.1}
    line = json.dumps({"event": "epoch", "epoch": 1, "epochs": 1, "metrics": metrics})
    kept = pg.parse_trainer_log(line).metrics
    assert len(kept) == pg.MAX_METRICS
    assert kept["val_auc"] == 0.9 and kept["lr"] == 0.1
