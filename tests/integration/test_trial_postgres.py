"""The real trainer CLI as a trial of an Optuna study in a real PostgreSQL. The test plays the
operator: it creates the study, asks the trial, and reads what the run left behind."""

import json
import re
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from dmlt_trainer.config import build_config
from dmlt_trainer.errors import ConfigError
from dmlt_trainer.trial import STORAGE_ENV, attach_trial
from mlflow.tracking import MlflowClient

from tests.helpers.cli import cli_env, json_events, run_cli

pytestmark = pytest.mark.integration
RUNNING = optuna.trial.TrialState.RUNNING
LR = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)


@pytest.fixture
def storage(postgres, request) -> str:
    """A database of its own for each test."""
    return postgres.create_database(re.sub(r"\W", "_", request.node.name)[:60].lower())


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial_args(study: str, number: int, lr: float, *rest: str) -> list[str]:
    return ["--study-name", study, "--trial-number", str(number), "--lr", str(lr), "--threads", "1", *rest]


def _finished(stdout: str) -> list[dict]:
    return [e for e in json_events(stdout) if e["event"] == "finished"]


def _trial(storage: str, study: str, number: int) -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name=study, storage=storage).trials[number]


def test_single_trial_reports_every_epoch_and_leaves_its_outcome_for_the_operator(
    workdir, storage, mlflow_server, postgres
):
    study = optuna.create_study(study_name="default.single", storage=storage, direction="maximize")
    trial = study.ask({"lr": LR})
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment("it-trials")
    parent = client.create_run(experiment_id, run_name="single-study").info.run_id

    # The storage URL travels in the environment (from a Secret), never in the arguments.
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server, DMLT_OPTUNA_STORAGE=storage)
    args = _trial_args("default.single", trial.number, trial.params["lr"])
    args += [
        "--run-name",
        "single-t0",
        "--dataset",
        "breast_cancer",
        "--epochs",
        "4",
        "--hidden-dims",
        "32,16",
    ]
    args += ["--experiment", "it-trials", "--parent-run-id", parent, "--objective", "val_auc"]
    run = run_cli(args, cwd=workdir, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    (done,) = _finished(run.stdout)
    assert (done["status"], done["epochs_run"]) == ("completed", 4)

    frozen = _trial(storage, "default.single", trial.number)
    assert frozen.state == RUNNING, "the trainer reports; only the operator tells"
    assert sorted(frozen.intermediate_values) == [0, 1, 2, 3]
    attrs = frozen.user_attrs
    assert attrs["dmlt.outcome"] == "completed" and attrs["dmlt.epochs_run"] == 4
    assert attrs["dmlt.value"] == pytest.approx(max(frozen.intermediate_values.values()))
    assert attrs["dmlt.value"] == pytest.approx(done["best_val_auc"])
    assert attrs["dmlt.mlflow_run_id"] == done["mlflow_run_id"]

    child = client.get_run(attrs["dmlt.mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert (child.data.tags["dmlt.study"], child.data.tags["dmlt.trial"]) == (
        "default.single",
        str(trial.number),
    )
    assert postgres.password not in json.dumps(child.data.params), "the storage secret stays out of MLflow"

    # The model URI registers as the operator will: REST, source + run_id + model_id.
    model_uri = attrs["dmlt.model_uri"]
    assert model_uri.startswith("models:/")

    def rest(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{mlflow_server}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    rest("registered-models/create", {"name": "it-single-study"})
    version = rest(
        "model-versions/create",
        {
            "name": "it-single-study",
            "source": model_uri,
            "run_id": attrs["dmlt.mlflow_run_id"],
            "model_id": model_uri.removeprefix("models:/"),
        },
    )["model_version"]
    assert version["version"] == "1" and version["run_id"] == attrs["dmlt.mlflow_run_id"]


def test_ddp_trial_pruned_by_the_median_pruner_stops_on_both_ranks_at_once(workdir, storage):
    study = optuna.create_study(study_name="default.pruned", storage=storage, direction="maximize")
    for _ in range(3):  # finished trials whose every epoch was perfect: anything less is pruned
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 3e-3},
                distributions={"lr": LR},
                value=1.0,
                intermediate_values={step: 1.0 for step in range(6)},
            )
        )
    trial = study.ask({"lr": LR})
    args = _trial_args("default.pruned", trial.number, trial.params["lr"])
    args += ["--mode", "ddp", "--world-size", "2", "--run-name", "pruned-t3", "--storage", storage]
    args += ["--dataset", "synthetic", "--n-samples", "4000", "--epochs", "6", "--hidden-dims", "32,16"]
    args += ["--batch-size", "128", "--no-enabled", "--pruner", "median"]
    args += ["--pruner-startup-trials", "3", "--pruner-warmup-steps", "1"]
    run = run_cli(args, cwd=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    done = _finished(run.stdout)
    assert sorted(e["rank"] for e in done) == [0, 1]
    assert [(e["status"], e["epochs_run"]) for e in done] == [("pruned", 2)] * 2, "both stopped after epoch 2"
    assert done[0]["weights_sha256"] == done[1]["weights_sha256"]

    frozen = _trial(storage, "default.pruned", trial.number)
    assert frozen.state == RUNNING
    assert sorted(frozen.intermediate_values) == [0, 1], "warm-up epoch 0, pruned at epoch 1"
    assert frozen.user_attrs["dmlt.outcome"] == "pruned" and frozen.user_attrs["dmlt.epochs_run"] == 2
    assert frozen.user_attrs["dmlt.value"] == pytest.approx(max(frozen.intermediate_values.values()))
    assert frozen.user_attrs["dmlt.mlflow_run_id"] is None and frozen.user_attrs["dmlt.model_uri"] is None


def test_trial_survives_a_postgres_restart_mid_run(workdir, storage, postgres):
    study = optuna.create_study(study_name="default.restart", storage=storage, direction="minimize")
    trial = study.ask({"lr": LR})
    epochs = 16
    args = _trial_args("default.restart", trial.number, trial.params["lr"])
    args += [
        "--run-name",
        "restart-t0",
        "--dataset",
        "synthetic",
        "--n-samples",
        "20000",
        "--epochs",
        str(epochs),
    ]
    args += ["--hidden-dims", "64,32", "--batch-size", "256", "--no-enabled", "--pruner", "none"]
    args += ["--objective", "val_loss", "--direction", "minimize"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmlt_trainer", *args],
        cwd=workdir,
        env=cli_env(DMLT_OPTUNA_STORAGE=storage),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # wait for the first reported epoch, then pull the database away
            lines.append(line)
            if '"event": "epoch"' in line:
                break
        assert proc.poll() is None, "the run ended before the restart"
        started = time.monotonic()
        postgres.restart(down_s=5)
        down_for = time.monotonic() - started
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = "".join(lines) + out
    assert proc.returncode == 0, err[-3000:]
    assert "optuna storage unavailable" in err, "the run met the outage and retried"
    (done,) = _finished(stdout)
    assert (done["status"], done["epochs_run"]) == ("completed", epochs)

    frozen = _trial(storage, "default.restart", trial.number)
    assert frozen.state == RUNNING
    assert sorted(frozen.intermediate_values) == list(range(epochs)), "no epoch lost to the outage"
    assert frozen.user_attrs["dmlt.outcome"] == "completed"
    assert frozen.user_attrs["dmlt.value"] == pytest.approx(min(frozen.intermediate_values.values()))
    assert down_for >= 5


def test_a_trial_that_is_over_or_missing_is_refused_before_training(workdir, storage):
    study = optuna.create_study(study_name="default.refused", storage=storage, direction="maximize")
    told = study.ask({"lr": LR})
    study.tell(told, 0.9)
    running = study.ask({"lr": LR})

    def attach(study_name: str, number: int, **extra):
        cfg = build_config({}, {"study_name": study_name, "trial_number": number, **extra})
        return attach_trial(cfg, True, environ={STORAGE_ENV: storage})

    assert attach("default.refused", running.number).trial.number == running.number
    cases = [
        (("default.refused", told.number), {}, "trial 0 of study 'default.refused' is COMPLETE, not RUNNING"),
        (("default.refused", 7), {}, "study 'default.refused' has no trial 7"),
        (("default.nope", 0), {}, "study 'default.nope' does not exist in postgresql+psycopg2://dmlt:***@"),
        (
            ("default.refused", running.number),
            {"direction": "minimize", "objective": "val_loss"},
            "is to maximize its objective; this run was given --direction minimize",
        ),
    ]
    for (name, number), extra, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            attach(name, number, **extra)

    # Through the CLI: one line on stderr, exit 2, no training.
    args = [*_trial_args("default.refused", told.number, 3e-3), "--dataset", "breast_cancer", "--no-enabled"]
    run = run_cli(args, cwd=workdir, env=cli_env(DMLT_OPTUNA_STORAGE=storage), timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "dmlt-train: error: trial 0 of study 'default.refused' is COMPLETE, not RUNNING" in run.stderr
    assert json_events(run.stdout) == []
