"""A TuningStudy driven tick by tick through its handlers: fake API and MLflow, a real Optuna
storage (the URL given, or SQLite in a scratch folder), and "trainers" that report to the study
the way dmlt-train does."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import kopf
import optuna
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.tuningstudy import handlers as h
from dmlt_operator.tuningstudy import plan as sr
from dmlt_operator.tuningstudy.store import StudyStore
from dmlt_operator.tuningstudy.trials import TrialJob, summarize_trial_job

from tests.helpers.operator_fakes import FakeMlflow, FakeStudyKube

LOG = logging.getLogger("test")
NS, NAME, UID = "ns", "study", "study-uid"


def study_body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    s = {
        "parameters": [
            {"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "log": True},
            {"name": "batchSize", "type": "categorical", "choices": [256, 512]},
        ],
        "trialTemplate": {"image": "dmlt-trainer:dev", "trainer": {"epochs": 3}},
        "maxTrials": 5,
        "parallelism": 2,
        "algorithm": {"name": "random", "seed": 1},
        **spec,
    }
    return {
        "apiVersion": "dmlt.io/v1alpha1", "kind": "TuningStudy",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": s, "status": status or {},
    }  # fmt: skip


class Harness:
    def __init__(self, tmp_path, **spec: Any) -> None:
        self.url = f"sqlite:///{tmp_path / 'optuna.db'}"
        self.kube = FakeStudyKube(self.url)
        self.mlflow = FakeMlflow()
        self.body = study_body(**spec)
        self.config = OperatorConfig(
            default_tracking_uri="http://m:5000", default_storage_secret="dmlt-postgresql"
        )
        self.store = StudyStore()
        self.outcome = lambda number: ("completed", 0.7 + number / 100)

    def memo(self) -> kopf.Memo:
        return kopf.Memo(
            config=self.config, kube=self.kube, study_store=self.store, mlflow_client=self.mlflow
        )

    def trial_jobs(self) -> list[TrialJob]:
        """The trial jobs as the operator's index holds them (summaries)."""
        return [j for j in (summarize_trial_job(b) for b in self.kube.jobs.values()) if j is not None]

    def tick(self) -> dict[str, Any]:
        status_patch: dict[str, Any] = {}
        try:
            body, memo = self.body, self.memo()
            self.wake = h.reconcile_study_tick(
                body, body["spec"], body["status"], status_patch, memo, LOG, self.trial_jobs()
            )
        finally:
            status = dict(self.body["status"])
            for key, value in status_patch.items():
                if value is None:
                    status.pop(key, None)
                else:
                    status[key] = value
            self.body["status"] = status
        return status_patch

    def trial(self, number: int) -> optuna.Trial:
        storage = self.store.storage(self.url)
        study = optuna.load_study(study_name=f"{NS}.{NAME}", storage=storage)
        return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study._study_id, number))

    def run_trainers(self) -> None:
        """Every job that exists finishes, reporting as dmlt-train does."""
        for job in self.kube.jobs.values():
            if job["status"].get("phase"):
                continue
            number = int(job["metadata"]["labels"]["dmlt.io/trial"])
            kind, value = self.outcome(number)
            if kind == "failed":
                job["status"] = {"phase": "Failed", "message": "BackoffLimitExceeded"}
                continue
            try:
                trial = self.trial(number)
            except KeyError:  # the database lost the trial: the trainer cannot report to it
                job["status"] = {"phase": "Failed", "message": "trial not found"}
                continue
            trial.report(0.6, 0)
            trial.set_user_attr("dmlt.outcome", kind)
            trial.set_user_attr("dmlt.mlflow_run_id", f"run{number}")
            trial.set_user_attr("dmlt.model_uri", f"models:/m-{number}")
            if value is not None:
                trial.set_user_attr("dmlt.value", value)
            job["status"] = {"phase": "Succeeded", "result": kind, "mlflowRunId": f"run{number}"}

    def run(self, ticks: int = 40) -> None:
        for _ in range(ticks):
            self.tick()
            if self.body["status"].get("phase") in sr.TERMINAL:
                return
            self.run_trainers()
        raise AssertionError(f"not finished: {self.body['status']}")

    def db_states(self) -> Counter:
        study = optuna.load_study(study_name=f"{NS}.{NAME}", storage=self.url)
        return Counter(t.state.name for t in study.trials)
