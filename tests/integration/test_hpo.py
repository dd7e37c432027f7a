"""Optuna search with pruning on a real SQLite RDB storage, tracked on a real MLflow server."""

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import cli_env, run_cli

pytestmark = pytest.mark.integration


def test_search_prunes_records_children_and_resumes_by_name(workdir, mlflow_server):
    storage = f"sqlite:///{workdir}/study.db"
    args = [
        "--mode",
        "hp_search",
        "--run-name",
        "study-it",
        "--dataset",
        "breast_cancer",
        "--epochs",
        "5",
        "--threads",
        "1",
        "--storage",
        storage,
        "--experiment",
        "it-hpo",
        "--sampler",
        "random",
    ]
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server)
    first = run_cli([*args, "--hp-trials", "8"], cwd=workdir, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="study-it", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1, "median pruner stopped nothing"
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.user_attrs["epochs_run"] < 5 for t in pruned), "pruned trials stopped early"
    best = json.loads((workdir / "checkpoints" / "study-it" / "best_params.json").read_text())
    assert best["best_value"] == pytest.approx(study.best_value)
    assert best["best_params"] == study.best_params

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("it-hpo")
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 8

    again = run_cli([*args, "--hp-trials", "10"], cwd=workdir, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="study-it", storage=storage)
    assert len(study.trials) == 10, "the study resumed and ran only the missing trials"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 10
