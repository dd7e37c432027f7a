"""The operator's MLflow REST client against a real MLflow server (the session's `mlflow_server`),
read back with MLflow's own client: what the stub-server unit tests assume, MLflow does."""

from __future__ import annotations

from pathlib import Path

import pytest
from dmlt_operator.tuningstudy.mlflow_rest import TAG_STUDY_UID, MlflowError, MlflowRest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration


def test_parent_run_is_created_once_and_finished(mlflow_server):
    rest = MlflowRest(mlflow_server)
    first = rest.ensure_parent_run("dmlt-rest", "study", "ns.study", "uid-parent", {"algorithm": "tpe"})
    again = rest.ensure_parent_run("dmlt-rest", "study", "ns.study", "uid-parent", {"algorithm": "tpe"})
    assert again == first

    rest.finish_run(first, "FINISHED", {"best_val_auc": 0.91}, {"dmlt.best_trial": "3"})
    run = MlflowClient(mlflow_server).get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"algorithm": "tpe"}
    assert run.data.metrics == {"best_val_auc": 0.91}
    assert run.data.tags[TAG_STUDY_UID] == "uid-parent"
    assert run.data.tags["dmlt.best_trial"] == "3"


def test_best_model_is_registered_once(mlflow_server, tmp_path: Path):
    mlflow = MlflowClient(mlflow_server)
    experiment = mlflow.create_experiment("dmlt-rest-registry")
    trial_run = mlflow.create_run(experiment).info.run_id
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    mlflow.log_artifacts(trial_run, str(tmp_path), "model")

    rest = MlflowRest(mlflow_server)
    tags = {TAG_STUDY_UID: "uid-registry", "dmlt.trial": "3"}
    source = f"runs:/{trial_run}/model"
    version = rest.register_model("dmlt-rest-model", source, trial_run, tags, description="best trial")
    assert rest.register_model("dmlt-rest-model", source, trial_run, tags) == version

    versions = mlflow.search_model_versions("name='dmlt-rest-model'")
    assert [v.version for v in versions] == [version]
    assert versions[0].tags == tags and versions[0].run_id == trial_run


def test_errors_carry_mlflows_status_and_code(mlflow_server):
    with pytest.raises(MlflowError) as err:
        MlflowRest(mlflow_server).finish_run("0" * 32, "FINISHED")
    assert err.value.status == 404 and err.value.code == "RESOURCE_DOES_NOT_EXIST"
