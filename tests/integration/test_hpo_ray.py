"""Ray Tune engine: Optuna TPE as searcher, ASHA stopping, MLflow parent + child runs."""

import json

import pytest

from tests.helpers.cli import cli_env, json_events, run_cli

pytestmark = pytest.mark.integration


def test_ray_search_stops_trials_early_tracks_children_and_reports_a_reproducible_best(
    workdir, mlflow_server
):
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server, RAY_AUTH_MODE="disabled")
    proc = run_cli(
        [
            "--mode",
            "hp_search",
            "--hp-engine",
            "ray",
            "--hp-trials",
            "6",
            "--parallel-trials",
            "2",
            "--cpus-per-trial",
            "1",
            "--epochs",
            "3",
            "--dataset",
            "breast_cancer",
            "--run-name",
            "ray-it",
            "--experiment",
            "it-ray",
        ],
        cwd=workdir,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "checkpoints" / "ray-it" / "best_params.json").read_text())
    assert summary["engine"] == "ray"
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert summary["trials"]["pruned"] >= 1, "ASHA stopped no trial early"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("it-ray")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 6

    params = summary["best_params"]
    retrain = run_cli(
        [
            "--run-name",
            "retrain",
            "--dataset",
            "breast_cancer",
            "--epochs",
            "3",
            "--threads",
            "1",
            "--lr",
            str(params["lr"]),
            "--dropout",
            str(params["dropout"]),
            "--hidden-dims",
            params["hidden_dims"],
            "--batch-size",
            str(params["batch_size"]),
            "--weight-decay",
            str(params["weight_decay"]),
            "--no-enabled",
        ],
        cwd=workdir,
        env=cli_env(),
    )
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    epochs = [e for e in json_events(retrain.stdout) if e["event"] == "epoch"]
    reached = max(e["metrics"]["val_auc"] for e in epochs[: summary["best_epochs_run"]])
    assert reached == pytest.approx(summary["best_value"], abs=1e-9)
