"""The `dmlt` client's readings and loops, without a cluster: status → state, wait verdicts,
rank logs merged across a gang restart, watch timeouts, and the commands over a fake Kube that
has the real one's methods."""

from __future__ import annotations

import io
from typing import Any

import pytest
from dmlt import jobs
from dmlt import upstream as up
from dmlt.cli import duration, run, split_target
from dmlt.client import Client
from dmlt.errors import ConditionUnreachable, InvalidSpec, NotFound, OperatorNotRunning, WaitTimeout
from dmlt.kube import Kube
from dmlt.logs import Cursor, PodRef, follow_logs, parse_timestamp
from dmlt.observe import JobState, StudyState, age, wait_verdict
from kubernetes import client as k8s

pytestmark = pytest.mark.unit

T0 = "2026-12-02T10:00:00"


def job_obj(name="j", phase="Running", attempt=0, restarts=0, epoch=2, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": up.API_VERSION,
        "kind": up.KIND,
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": T0 + "Z", "labels": {}},
        "spec": {"image": "i", "replicas": 2, "procsPerNode": 1},
        "status": {
            "phase": phase,
            "ready": "2/2",
            "attempt": attempt,
            "restarts": restarts,
            "progress": {"epoch": epoch, "epochs": 5, "summary": f"{epoch}/5"},
            "metrics": {"val_auc": 0.91, "val_loss": 0.3},
            "mlflowRunId": "r1",
            **status,
        },
    }


def test_job_state_from_status():
    state = JobState.from_object(job_obj())
    assert (state.phase, state.ready, state.progress, state.world_size, state.mlflow_run_id) == (
        "Running",
        "2/2",
        "2/5",
        2,
        "r1",
    )
    assert state.line() == "j: Running ready=2/2 epoch=2/5 val_auc=0.9100 val_loss=0.3000 restarts=0"
    assert JobState.from_object({"metadata": {"name": "x"}}).line() == "x: Created restarts=0"


def test_study_state_and_trial_rows():
    study = {
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {"objective": {"metric": "val_loss", "direction": "minimize"}, "maxTrials": 4},
        "status": {
            "phase": "Running",
            "trialsDone": "2/4",
            "trials": {"running": 1, "pruned": 1, "completed": 1},
            "bestTrial": {"number": 0, "value": 0.2, "params": {"lr": 0.01}},
        },
    }

    def trial(n, phase, result=None):
        obj = job_obj(f"s-t{n}", phase, result=result)
        obj["metadata"]["labels"] = {up.LABEL_TRIAL: str(n)}
        obj["metadata"]["annotations"] = {up.ANNOTATION_PARAMS: '{"lr": 0.01}'}
        obj["status"]["metrics"] = {"val_loss": 0.2 + n}
        return obj

    state = StudyState.from_objects(
        study,
        [
            trial(2, "Running"),
            trial(0, "Succeeded", "completed"),
            trial(1, "Succeeded", "pruned"),
            trial(3, "Failed"),
        ],
    )
    assert [(t.number, t.state, t.value) for t in state.trials] == [
        (0, "Completed", 0.2),
        (1, "Pruned", 1.2),
        (2, "Running", 2.2),
        (3, "Failed", 3.2),
    ]
    assert state.trials[0].params == {"lr": 0.01}
    assert state.line() == "s: Running trials=2/4 running=1 pruned=1 best=#0 val_loss=0.2000 t2@2/5"


@pytest.mark.parametrize(
    "phase, until, verdict",
    [
        ("Running", "Succeeded", None),
        ("Succeeded", "Succeeded", True),
        ("Failed", "Succeeded", False),
        ("Failed", "finished", True),
        ("Running", "running", True),
        (None, "Running", None),
        ("Succeeded", "Running", False),
        ("Running", "condition=Created", True),
        ("Running", "condition=Suspended", None),
        ("Failed", "condition=Suspended", False),
    ],
)
def test_wait_verdict(phase, until, verdict):
    conditions = [{"type": "Created", "status": "True"}, {"type": "Suspended", "status": "False"}]
    assert wait_verdict(phase, conditions, until) is verdict


def test_parse_timestamp_and_age():
    assert parse_timestamp("2026-12-02T10:00:00.000000123Z") == 1796205600 * 10**9 + 123
    assert parse_timestamp("2026-12-02T10:00:00.5Z") == 1796205600 * 10**9 + 500_000_000
    assert parse_timestamp("not-a-time") is None
    from datetime import UTC, datetime

    now = datetime(2026, 12, 2, 10, 5, tzinfo=UTC)
    assert age(T0 + "Z", now) == "5m" and age(None) == "-"


def test_cursor_takes_each_line_once():
    cursor = Cursor()
    first = "2026-12-02T10:00:00.1Z a\n2026-12-02T10:00:00.2Z b\n"
    assert [t for _, t in cursor.take(first)] == ["a", "b"]
    # The next read overlaps (a sinceSeconds window): only what is new comes through.
    again = first + "2026-12-02T10:00:00.2Z b2\n2026-12-02T10:00:01Z c\n"
    assert [t for _, t in cursor.take(again)] == ["b2", "c"]
    assert cursor.take(again) == []


class FakeLogs:
    """Pod logs that grow between rounds, like the kubelet's."""

    def __init__(self) -> None:
        self.logs: dict[str, str] = {}
        self.asked: list[tuple[str, int | None]] = []

    def pod_log(self, namespace: str, pod: str, since_seconds: int | None = None) -> str:
        self.asked.append((pod, since_seconds))
        if pod not in self.logs:
            raise NotFound(f"Pod {pod}")
        return self.logs[pod]


def test_follow_merges_ranks_in_time_order_and_survives_a_gang_restart():
    logs = FakeLogs()
    rounds = iter(range(100))
    pods: list[PodRef] = []

    def step() -> bool:
        n = next(rounds)
        if n == 0:
            pods[:] = [PodRef("j-0", "u0", "rank 0", 0, 0, True), PodRef("j-1", "u1", "rank 1", 0, 1, True)]
            logs.logs = {"j-0": "2026-12-02T10:00:01Z r0 e1\n", "j-1": "2026-12-02T10:00:00.5Z r1 e1\n"}
        elif n == 1:  # rank 1 deleted: the operator restarts the gang as attempt 1
            pods[:] = [PodRef("j-0", "v0", "rank 0", 1, 0, True), PodRef("j-1", "v1", "rank 1", 1, 1, False)]
            logs.logs = {"j-0": "2026-12-02T10:00:09Z r0 resumed\n"}
        elif n == 2:
            pods[1] = PodRef("j-1", "v1", "rank 1", 1, 1, True)
            logs.logs["j-1"] = "2026-12-02T10:00:10Z r1 resumed\n"
            logs.logs["j-0"] += "2026-12-02T10:00:11Z r0 done\n"
        return n >= 2

    lines = list(follow_logs(logs, "ns", lambda: list(pods), step, follow=True, poll=0, sleep=lambda _: None))
    assert [str(line) for line in lines] == [
        "[rank 1] r1 e1",
        "[rank 0] r0 e1",
        "[dmlt] --- gang restart: attempt 1 ---",
        "[rank 0] r0 resumed",
        "[rank 1] r1 resumed",
        "[rank 0] r0 done",
    ]
    assert ("j-1", None) in logs.asked  # a new Pod's log is read from its start


def test_logs_without_follow_read_once():
    logs = FakeLogs()
    logs.logs = {"p": "2026-12-02T10:00:01Z x\nnot timestamped\n"}
    pods = [PodRef("p", "u", "rank 0", 0, 0, True)]
    lines = list(follow_logs(logs, "ns", lambda: pods, lambda: pytest.fail("not asked"), follow=False))
    assert [line.text for line in lines] == ["x"]


def test_watch_times_out_and_reports_a_missing_operator():
    never_done = JobState("j", "ns", phase="Running")
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2 s waiting for J \(phase Running\)"):
        list(jobs.watch_states(lambda: never_done, poll=0.05, timeout=0.2, what="J"))
    no_status = JobState("j", "ns")
    with pytest.raises(
        OperatorNotRunning, match="no status after 0 s: no dmlt operator is acting on namespace 'ns'"
    ):
        list(jobs.watch_states(lambda: no_status, poll=0.01, timeout=None, what="J", grace=0.0))


def test_wait_for_gives_up_when_the_condition_cannot_hold():
    states = iter([JobState("j", "ns", phase="Running"), JobState("j", "ns", phase="Failed")])
    with pytest.raises(ConditionUnreachable, match="J is Failed: it will not become Succeeded"):
        jobs.wait_for(states, "Succeeded", "J")


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("500ms", 0.5)]
)
def test_durations(text, seconds):
    assert duration(text) == seconds


def test_targets():
    assert split_target(["tj", "x"]) == (up.KIND, "x")
    assert split_target(["ts/x"]) == (up.STUDY_KIND, "x")
    assert split_target(["x"]) == (None, "x")
    assert split_target(["studies"]) == (up.STUDY_KIND, None)
    with pytest.raises(InvalidSpec):
        split_target(["a", "b", "c"])


# --------------------------------------------------------------------------- commands over a fake Kube


class FakeKube(Kube):
    """Kube's interface over objects in memory (no HTTP): what the commands read and write."""

    def __init__(self, objects: list[dict[str, Any]], pods: list[k8s.V1Pod], logs: dict[str, str]) -> None:
        self.default_namespace = "ns"
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self._pods, self._logs = pods, logs
        self.deleted: list[str] = []

    def get(self, kind, namespace, name):
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise NotFound(f"not found: {kind} {namespace}/{name}") from None

    def list(self, kind, namespace, selector=None):
        out = [o for (k, _), o in self.objects.items() if k == kind]
        if selector and "=" in selector:
            key, value = selector.split("=", 1)
            out = [o for o in out if o["metadata"].get("labels", {}).get(key) == value]
        return out

    def delete(self, kind, namespace, name):
        self.get(kind, namespace, name)
        self.deleted.append(f"{kind}/{name}")

    def pods(self, namespace, selector):
        return self._pods

    def pod_log(self, namespace, pod, since_seconds=None):
        return self._logs[pod]

    def events(self, namespace, kind, name):
        return [
            k8s.CoreV1Event(
                type="Normal",
                reason="Created",
                message="Pods created",
                involved_object=k8s.V1ObjectReference(name="j"),
                metadata=k8s.V1ObjectMeta(creation_timestamp=None),
            )
        ]


def rank_pod(rank: int, attempt: int = 0) -> k8s.V1Pod:
    running = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=f"j-{rank}",
            uid=f"u{rank}",
            labels={up.LABEL_RANK: str(rank), up.LABEL_ATTEMPT: str(attempt)},
        ),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="trainer")]),
        status=k8s.V1PodStatus(
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="trainer", state=running, image="i", image_id="", ready=True, restart_count=0
                )
            ]
        ),
    )


@pytest.fixture
def fake() -> FakeKube:
    finished = job_obj("j", "Succeeded", epoch=5, result="completed")
    logs = {
        "j-0": '2026-12-02T10:00:02Z {"event": "finished", "rank": 0, "status": "completed", '
        '"test_metrics": {"auc": 0.97}}\n',
        "j-1": "2026-12-02T10:00:01Z hello from rank 1\n",
    }
    return FakeKube([finished, job_obj("other", "Running")], [rank_pod(0), rank_pod(1)], logs)


def cli(fake: FakeKube, *argv: str) -> tuple[int, str]:
    c = Client()
    c._kube = fake
    out = io.StringIO()
    return run(list(argv), out, client=c), out.getvalue()


def test_get_lists_like_kubectl(fake):
    code, out = cli(fake, "get", "tj")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "NAME",
        "PHASE",
        "READY",
        "PROGRESS",
        "VAL-AUC",
        "RESTARTS",
        "AGE",
    ]
    assert lines[1].split()[:6] == ["j", "Succeeded", "2/2", "5/5", "0.9100", "0"]
    code, out = cli(fake, "get", "tj/j", "-o", "name")
    assert out == f"trainingjob.{up.GROUP}/j\n"
    code, out = cli(fake, "get", "-o", "wide")
    assert "MLFLOW-RUN" in out.splitlines()[0] and "r1" in out


def test_logs_merge_ranks(fake):
    code, out = cli(fake, "logs", "j")
    assert code == 0
    assert out.splitlines()[0] == "[rank 1] hello from rank 1" and out.splitlines()[1].startswith(
        '[rank 0] {"event"'
    )


def test_job_metrics_add_the_test_metrics_once_finished(fake):
    job = jobs.Job(fake, "ns", "j")
    assert job.metrics() == {"val_auc": 0.91, "val_loss": 0.3, "test_auc": 0.97}


def test_describe_and_wait_and_delete(fake):
    code, out = cli(fake, "describe", "j")
    assert code == 0 and "Phase:       Succeeded" in out and "Created" in out
    code, out = cli(fake, "wait", "j", "--for", "Succeeded")
    assert (code, out) == (0, f"trainingjob.{up.GROUP}/j Succeeded\n")
    with pytest.raises(ConditionUnreachable):
        cli(fake, "wait", "j", "--for", "Failed")
    code, out = cli(fake, "delete", "tj", "j")
    assert code == 0 and fake.deleted == [f"{up.KIND}/j"]
    with pytest.raises(NotFound):
        cli(fake, "delete", "tj", "nope")


def test_views_leave_no_thread_behind():
    import threading

    from dmlt import view

    states = [JobState.from_object(job_obj(epoch=e)) for e in (1, 2)]
    states.append(JobState.from_object(job_obj(phase="Succeeded", epoch=5)))
    before = threading.active_count()
    live, plain = io.StringIO(), io.StringIO()
    assert view.follow(iter(states), live, live=True) is states[-1]
    assert view.follow(iter(states), plain, live=False) is states[-1]
    assert threading.active_count() == before
    assert "TrainingJob ns/j" in live.getvalue() and "epoch 5/5" in live.getvalue()
    assert plain.getvalue().splitlines() == [s.line() for s in states]
