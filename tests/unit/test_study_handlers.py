"""The TuningStudy kopf glue, tick by tick: a fake API module, a real Optuna storage (SQLite),
a fake MLflow, and "trainers" that report to the study the way dmlt-train does."""

from __future__ import annotations

import base64

import kopf
import optuna
import pytest
import sqlalchemy.exc
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.tuningstudy import handlers as h
from dmlt_operator.tuningstudy import plan as sr
from dmlt_operator.tuningstudy.store import StudyStore
from kubernetes.client.exceptions import ApiException

from tests.helpers.operator_fakes import FakeStudyKube
from tests.helpers.study_harness import LOG, UID, Harness

pytestmark = pytest.mark.unit


def test_a_study_runs_to_succeeded_and_registers_its_best_model(tmp_path):
    hs = Harness(tmp_path)
    hs.outcome = lambda n: ("pruned", None) if n == 1 else ("completed", 0.7 + n / 100)
    hs.run()
    status = hs.body["status"]
    assert status["phase"] == "Succeeded", status
    assert hs.db_states() == {"COMPLETE": 4, "PRUNED": 1}
    assert hs.kube.created == [f"study-t{n}" for n in range(5)] and hs.kube.max_active <= 2
    assert status["trials"] == {"running": 0, "completed": 4, "pruned": 1, "failed": 0}
    assert status["trialsDone"] == "5/5" and status["studyName"] == "ns.study"
    assert status["bestTrial"]["number"] == 4 and status["bestTrial"]["value"] == pytest.approx(0.74)
    assert status["parentRunId"] == "parent-1" and hs.mlflow.parent_runs == [UID]
    assert hs.mlflow.registered == [
        ("study", "models:/m-4", "run4", {"dmlt.study": "ns.study", "dmlt.study_uid": UID, "dmlt.trial": "4"})
    ]
    assert hs.mlflow.finished[0][:2] == ("parent-1", "FINISHED")
    assert status["registeredModel"] == {"name": "study", "version": "1", "trial": 4}
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["ModelRegistered"]["status"] == "True" and conds["StorageReady"]["status"] == "True"
    reasons = {r for _, r, _ in hs.kube.events}
    assert {"CreatedTrials", "TrialCompleted", "TrialPruned", "Succeeded", "ModelRegistered"} <= reasons
    # The trial jobs carry the study's parent run and storage Secret.
    job = hs.kube.jobs["study-t0"]
    first = optuna.load_study(study_name="ns.study", storage=hs.url).trials[0]
    assert job["metadata"]["annotations"]["dmlt.io/trial-started"] == first.datetime_start.isoformat()
    args = job["spec"]["trainer"]["extraArgs"]
    assert args[args.index("--parent-run-id") + 1] == "parent-1"
    assert job["spec"]["env"][-1]["valueFrom"]["secretKeyRef"] == {"name": "dmlt-postgresql", "key": "url"}
    # An ended, wrapped-up study is left alone: no database, no MLflow.
    hs.store = None
    assert hs.tick() == {}


def test_operator_restarts_mid_study_lose_and_duplicate_nothing(tmp_path):
    hs = Harness(tmp_path, maxTrials=6)
    hs.outcome = lambda n: ("failed", None) if n == 2 else ("completed", 0.5)
    for i in range(40):
        hs.store = StudyStore()  # a new operator process every tick: nothing kept in memory
        hs.tick()
        if hs.body["status"].get("phase") in sr.TERMINAL:
            break
        if i % 2:
            hs.run_trainers()
    assert hs.body["status"]["phase"] == "Succeeded"
    assert hs.db_states() == {"COMPLETE": 6, "FAIL": 1}
    assert len(hs.kube.created) == len(set(hs.kube.created)) == 7
    assert hs.kube.max_active <= 2 and hs.mlflow.parent_runs == [UID]


class FlakyStore(StudyStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def list_trials(self, handle):
        if self.down:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return super().list_trials(handle)


def test_database_outage_is_reported_and_survived(tmp_path):
    hs = Harness(tmp_path)
    hs.store = FlakyStore()
    hs.tick()
    hs.run_trainers()
    hs.store.down = True
    with pytest.raises(h.StorageUnavailable, match="server closed the connection"):
        hs.tick()
    status = hs.body["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["StorageReady"]["status"] == "False" and "unavailable" in status["message"]
    assert status["phase"] == "Running"  # the phase stays what it was
    hs.store.down = False
    hs.run()
    assert hs.body["status"]["phase"] == "Succeeded" and hs.db_states() == {"COMPLETE": 5}
    conds = {c["type"]: c for c in hs.body["status"]["conditions"]}
    assert conds["StorageReady"]["status"] == "True"


def test_missing_storage_secret_waits_with_a_clear_message(tmp_path):
    hs = Harness(tmp_path)
    hs.kube.secrets = {}
    with pytest.raises(h.StorageUnavailable, match="ns/dmlt-postgresql"):
        hs.tick()
    assert hs.body["status"]["phase"] == "Pending" and "was not found" in hs.body["status"]["message"]
    hs.config = OperatorConfig()
    with pytest.raises(h.StorageUnavailable, match="spec.storage.secretRef"):
        hs.tick()


def test_own_storage_secret(tmp_path):
    hs = Harness(tmp_path, storage={"secretRef": {"name": "mine", "key": "dsn"}})
    hs.kube.secrets = {("ns", "mine", "dsn"): hs.url}
    hs.tick()
    env = hs.kube.jobs["study-t0"]["spec"]["env"][-1]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "dsn"}


def test_invalid_spec_fails_without_touching_storage(tmp_path):
    hs = Harness(tmp_path, maxTrials=1, parallelism=2)
    hs.store = None
    hs.tick()
    status = hs.body["status"]
    assert status["phase"] == "Failed" and "parallelism must not exceed maxTrials" in status["message"]
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in hs.kube.events]
    assert hs.tick() == {}  # recorded once


def test_a_leftover_study_of_the_same_name_is_not_resumed(tmp_path):
    hs = Harness(tmp_path)
    hs.store.open_study(hs.url, "ns.study", "maximize", "an-earlier-uid")
    hs.tick()
    status = hs.body["status"]
    assert status["phase"] == "Failed" and "earlier TuningStudy" in status["message"]
    assert not hs.kube.created


def test_mlflow_down_holds_new_trials_back(tmp_path):
    hs = Harness(tmp_path)
    hs.mlflow.down = True
    hs.tick()
    assert not hs.kube.created and "Waiting for MLflow" in hs.body["status"]["message"]
    hs.mlflow.down = False
    hs.tick()
    assert hs.kube.created == ["study-t0", "study-t1"]


def test_model_registration_is_retried_until_it_works(tmp_path):
    hs = Harness(tmp_path, maxTrials=2)
    hs.mlflow.registry_down = True
    hs.run()
    conds = {c["type"]: c for c in hs.body["status"]["conditions"]}
    assert conds["ModelRegistered"]["reason"] == sr.MODEL_RETRY_REASON
    hs.tick()  # still down: tried again
    hs.mlflow.registry_down = False
    hs.tick()
    conds = {c["type"]: c for c in hs.body["status"]["conditions"]}
    assert conds["ModelRegistered"]["status"] == "True"
    assert len(hs.mlflow.registered) == 1 and hs.body["status"]["registeredModel"]["version"] == "1"
    assert hs.tick() == {}


def test_a_registration_mlflow_refuses_is_not_retried(tmp_path):
    hs = Harness(tmp_path, maxTrials=2)
    hs.mlflow.registry_refuses = True
    hs.run()
    conds = {c["type"]: c for c in hs.body["status"]["conditions"]}
    assert conds["ModelRegistered"]["reason"] == "RegistrationRejected"
    assert "RegistrationRejected" in {r for _, r, _ in hs.kube.events}
    hs.store = None  # settled: no more database or MLflow calls
    assert hs.tick() == {}


def test_refused_trial_jobs_are_reported_and_no_more_trials_asked(tmp_path):
    hs = Harness(tmp_path)
    hs.kube.refuse = ApiException(status=403, reason="Forbidden")
    hs.tick()
    message = hs.body["status"]["message"]
    assert "Waiting (retrying): cannot create trial jobs: study-t0: 403 Forbidden" in message
    assert hs.db_states() == {"RUNNING": 1}  # the first refusal stopped the asking
    hs.kube.refuse = None
    hs.tick()
    assert hs.kube.created == ["study-t0", "study-t1"] and hs.db_states() == {"RUNNING": 2}


def test_delete_drops_the_trial_jobs_and_the_study(tmp_path):
    hs = Harness(tmp_path)
    hs.tick()
    h.delete_study(body=hs.body, spec=hs.body["spec"], memo=hs.memo(), logger=LOG)
    assert sorted(hs.kube.deleted) == ["study-t0", "study-t1"]
    assert optuna.study.get_all_study_names(hs.url) == []


def test_retain_study_keeps_it(tmp_path):
    hs = Harness(tmp_path, storage={"retainStudy": True})
    hs.tick()
    h.delete_study(body=hs.body, spec=hs.body["spec"], memo=hs.memo(), logger=LOG)
    assert optuna.study.get_all_study_names(hs.url) == ["ns.study"]


def test_secret_values_are_decoded():
    from dmlt_operator.core.kube import Kube

    class Core:
        def read_namespaced_secret(self, name, namespace, _request_timeout=None):
            if name == "gone":
                raise ApiException(status=404)
            data = {"url": base64.b64encode(b"postgresql+psycopg2://u:p@h/db\n").decode()}
            return type("Secret", (), {"data": data})()

    kube = Kube.__new__(Kube)
    kube.core = Core()
    assert kube.read_secret_value("ns", "s", "url") == "postgresql+psycopg2://u:p@h/db"
    assert kube.read_secret_value("ns", "s", "other") is None
    assert kube.read_secret_value("ns", "gone", "url") is None


class CountingKube(FakeStudyKube):
    reads = 0

    def read_secret_value(self, namespace, name, key):
        self.reads += 1
        return super().read_secret_value(namespace, name, key)


def test_the_storage_secret_is_read_once_then_again_after_its_ttl_or_a_storage_error(tmp_path):
    now = [0.0]
    cache = h.SecretCache(ttl_s=600, clock=lambda: now[0])
    hs = Harness(tmp_path, maxTrials=3)
    hs.kube = CountingKube(hs.url)
    plain_memo = hs.memo
    hs.memo = lambda: kopf.Memo(**plain_memo(), secret_cache=cache)
    hs.tick()
    hs.tick()
    assert hs.kube.reads == 1
    now[0] = 601
    hs.tick()
    assert hs.kube.reads == 2
    hs.kube.secrets = {("ns", "dmlt-postgresql", "url"): "sqlite:////nonexistent/dir/optuna.db"}
    cache.put(("ns", "dmlt-postgresql", "url"), "sqlite:////nonexistent/dir/optuna.db")
    with pytest.raises(h.StorageUnavailable):
        hs.tick()
    assert cache.get(("ns", "dmlt-postgresql", "url")) is None  # forgotten: read again next tick
    hs.kube.secrets = {("ns", "dmlt-postgresql", "url"): hs.url}
    hs.tick()
    assert hs.kube.reads == 3 and hs.body["status"]["phase"] != "Failed"
