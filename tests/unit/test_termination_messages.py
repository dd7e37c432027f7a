"""Slice 4 of issue 15: each rank's `finished` event travels in its Pod's termination message.

The trainer writes it (only where a termination log exists, so it still runs without a
cluster), the Pod summary parses it, and the planner takes rank results from it: no log read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from dmlt_contract import EVENT_FINISHED, TERMINATION_LOG_ENV, TERMINATION_LOG_LIMIT
from dmlt_operator.trainingjob import plan as rc
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec
from dmlt_trainer import progress as tp

pytestmark = pytest.mark.unit

SHA = "c" * 64
UID = "job-uid"
JOB = JobRef(name="ddp", namespace="ns", uid=UID, generation=1)
T0 = datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)


def finished_fields(**extra):
    return {"rank": 1, "world_size": 2, "status": "completed", "weights_sha256": SHA,
            "mlflow_run_id": "run1", "epochs_run": 3, **extra}  # fmt: skip


# --------------------------------------------------------------------------- trainer side


def test_the_trainer_writes_its_finished_event_where_the_env_says(tmp_path):
    path = tmp_path / "termination-log"
    env = {TERMINATION_LOG_ENV: str(path)}
    assert tp.write_termination_message(EVENT_FINISHED, env, **finished_fields())
    event = json.loads(path.read_text())
    assert event["event"] == "finished" and event["weights_sha256"] == SHA


def test_no_termination_log_outside_a_cluster(tmp_path, monkeypatch):
    # A directory that does not exist: nothing written, no error.
    env = {TERMINATION_LOG_ENV: str(tmp_path / "missing" / "log")}
    assert tp.termination_log_path(env) is None
    assert not tp.write_termination_message(EVENT_FINISHED, env, **finished_fields())
    # Unset: only the kubelet's /dev/termination-log, and only when it exists.
    monkeypatch.setattr(tp, "TERMINATION_LOG", str(tmp_path / "dev-termination-log"))
    assert tp.termination_log_path({}) is None
    (tmp_path / "dev-termination-log").write_text("")
    assert tp.termination_log_path({}) == str(tmp_path / "dev-termination-log")


def test_an_unwritable_termination_log_never_fails_training(tmp_path):
    target = tmp_path / "dir-not-file"
    target.mkdir()
    assert not tp.write_termination_message(
        EVENT_FINISHED, {TERMINATION_LOG_ENV: str(target)}, status="completed"
    )


def test_an_oversized_event_keeps_its_result_within_the_limit():
    text = tp.termination_message(
        EVENT_FINISHED, **finished_fields(test_metrics={f"m{i}": 0.5 for i in range(400)})
    )
    assert len(text.encode()) <= TERMINATION_LOG_LIMIT
    assert json.loads(text)["weights_sha256"] == SHA


# --------------------------------------------------------------------------- operator side


def terminated_pod(rank, message, phase="Succeeded", exit_code=0):
    return {
        "metadata": {
            "name": f"ddp-{rank}", "uid": f"pod-{rank}",
            "labels": {"dmlt.io/job-name": "ddp", "dmlt.io/rank": str(rank), "dmlt.io/attempt": "0"},
            "ownerReferences": [{"kind": "TrainingJob", "controller": True, "uid": UID}],
        },
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
            ],
        },
    }  # fmt: skip


def test_the_pod_summary_carries_the_result_of_its_termination_message():
    message = tp.termination_message(EVENT_FINISHED, **finished_fields(status="early_stopped"))
    s = pd.summarize_pod(terminated_pod(1, message))
    assert s.result == {
        "status": "early_stopped",
        "weightsSha256": SHA,
        "mlflowRunId": "run1",
        "worldSize": 2,
    }
    assert s.message is None  # the event is a result, not a message to show
    assert s.state == pd.SUCCEEDED


def test_a_failed_containers_log_tail_stays_its_message():
    s = pd.summarize_pod(terminated_pod(0, "Traceback ...\nRuntimeError: boom", "Failed", 1))
    assert s.result is None and s.message.startswith("Traceback")
    assert s.exit_code == 1


@pytest.mark.parametrize(
    "message",
    [None, "", "{", '{"event": "epoch", "epoch": 1}', '{"event": "finished", "status": "exploded"}'],
)
def test_no_result_from_anything_but_a_finished_event(message):
    assert pd.summarize_pod(terminated_pod(0, message)).result is None


def test_the_planner_succeeds_from_termination_messages_without_logs():
    s = parse_spec({"image": "img", "replicas": 2})
    summaries = lambda pods: [pd.summarize_pod(p) for p in pods]  # noqa: E731
    running = [terminated_pod(r, None) for r in (0, 1)]
    for p in running:
        p["status"] = {
            "phase": "Running",
            "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
        }
    p = rc.plan(JOB, s, None, summaries(running), {}, T0)
    p = rc.plan(JOB, s, p.status, summaries(running), {}, T0)
    assert p.status["phase"] == rc.RUNNING
    done = [
        terminated_pod(r, tp.termination_message(EVENT_FINISHED, **finished_fields(rank=r))) for r in (0, 1)
    ]
    pods = summaries(done)
    assert rc.logs_to_read(p.status, pods, UID) == []  # results are in the Pods: nothing to read
    p = rc.plan(JOB, s, p.status, pods, {}, T0)
    assert p.status["phase"] == rc.SUCCEEDED
    assert p.status["result"] == "completed" and p.status["mlflowRunId"] == "run1"
    assert [e["result"]["weightsSha256"] for e in p.status["ranks"]] == [SHA, SHA]


def test_log_reading_can_be_switched_off():
    pods = [pd.summarize_pod(terminated_pod(0, None))]
    pods[0] = pd.PodSummary(
        **{**{f: getattr(pods[0], f) for f in pd.PodSummary.__slots__}, "phase": "Running"}
    )
    assert rc.logs_to_read({"attempt": 0}, pods, UID) == ["ddp-0"]
    assert rc.logs_to_read({"attempt": 0}, pods, UID, enabled=False) == []
