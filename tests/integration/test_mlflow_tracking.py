"""Tracking against a real MLflow server: metrics per epoch, artifacts, model registry."""

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import cli_env, json_events, run_cli

pytestmark = pytest.mark.integration


def test_run_logs_15_plus_metrics_per_epoch_artifacts_and_registers_the_model(workdir, mlflow_server):
    epochs = 3
    proc = run_cli(
        [
            "--run-name",
            "tracked",
            "--dataset",
            "breast_cancer",
            "--epochs",
            str(epochs),
            "--batch-size",
            "64",
            "--hidden-dims",
            "32,16",
            "--threads",
            "1",
            "--experiment",
            "it-tracking",
            "--register-model",
            "it-tabnet",
        ],
        cwd=workdir,
        env=cli_env(MLFLOW_TRACKING_URI=mlflow_server),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json_events(proc.stdout)[-1]["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden_dims"] == "[32, 16]" and run.data.params["train.epochs"] == "3"
    per_epoch = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run_id, key):
            per_epoch.setdefault(m.step, set()).add(key)
    for step in range(epochs):
        assert len(per_epoch[step]) >= 15, sorted(per_epoch[step])
    for key in (
        "train_loss",
        "val_loss",
        "val_auc",
        "val_pr_auc",
        "val_f1",
        "lr",
        "grad_norm",
        "samples_per_sec",
        "epoch_time_s",
    ):
        assert key in per_epoch[0]
    assert "test_auc" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "roc_curve.png", "pr_curve.png", "confusion_matrix.png", "summary.json"} <= names
    versions = client.search_model_versions("name='it-tabnet'")
    assert len(versions) == 1 and versions[0].run_id == run_id
    import mlflow.pytorch
    import torch

    mlflow_uri = f"models:/it-tabnet/{versions[0].version}"
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model(mlflow_uri)
    assert model(torch.zeros(4, 30)).shape == (4,)
