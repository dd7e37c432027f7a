"""A trial run's reporting, without a database server: objective lookup, best value, storage
URL, retry classification and backoff, the pruners, and the reporter on Optuna's in-memory
storage; the Trainer's epoch callback contract and the metric names it logs."""

import math

import optuna
import pytest
from dmlt_trainer import trial as trial_mod
from dmlt_trainer.config import EPOCH_METRICS, build_config
from dmlt_trainer.data import prepare
from dmlt_trainer.dist import DistContext
from dmlt_trainer.errors import ConfigError
from dmlt_trainer.train import FitResult, Trainer
from dmlt_trainer.trial import (
    STORAGE_ENV,
    TrialReporter,
    best_value,
    is_transient,
    make_pruner,
    objective_value,
    storage_url,
    with_retries,
)
from sqlalchemy import exc as sa_exc

pytestmark = pytest.mark.unit


def test_objective_value_names_the_metric_and_what_was_logged():
    assert objective_value({"val_auc": 0.9, "epoch": 3}, "val_auc") == 0.9
    with pytest.raises(ConfigError) as info:
        objective_value({"train_loss": 0.5, "lr": 0.01, "epoch": 0}, "val_auc")
    assert (
        str(info.value) == "objective metric 'val_auc' was not logged this epoch; available: lr, train_loss"
    )


def test_best_value_follows_the_direction_and_skips_epochs_without_a_finite_value():
    history = [
        {"val_loss": 0.7},
        {"train_loss": 0.1},
        {"val_loss": 0.4},
        {"val_loss": float("nan")},
        {"val_loss": 0.5},
    ]
    assert best_value(history, "val_loss", "minimize") == 0.4
    assert best_value(history, "val_loss", "maximize") == 0.7
    assert best_value(history, "val_auc", "maximize") is None
    assert best_value([], "val_auc", "maximize") is None


def test_storage_url_from_the_flag_else_the_environment():
    assert (
        storage_url(build_config({}, {"storage": "sqlite:///a.db"}), {STORAGE_ENV: "x"}) == "sqlite:///a.db"
    )
    assert storage_url(build_config(), {STORAGE_ENV: "postgresql://h/db"}) == "postgresql://h/db"
    with pytest.raises(ConfigError, match=f"--storage URL or env {STORAGE_ENV}"):
        storage_url(build_config(), {})


def _operational(message: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, Exception(message))


def _wrapped(error: Exception) -> optuna.exceptions.StorageInternalError:
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
    except optuna.exceptions.StorageInternalError as exc:
        return exc


@pytest.mark.parametrize(
    "error, transient",
    [
        (_operational("connection to server at 127.0.0.1 failed: Connection refused"), True),
        (_operational("server closed the connection unexpectedly"), True),
        (_operational("terminating connection due to administrator command"), True),
        (_wrapped(_operational("could not connect to server")), True),
        (_operational('password authentication failed for user "optuna"'), False),
        (_operational('database "optuna" does not exist'), False),
        (_wrapped(sa_exc.DataError("INSERT", {}, Exception("value too long"))), False),
        (optuna.exceptions.StorageInternalError("no cause"), False),
        (ValueError("bad"), False),
        (RuntimeError("Trial#3 has already finished and can not be updated."), False),
    ],
)
def test_only_lost_or_refused_connections_are_retried(error, transient):
    assert is_transient(error) is transient


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_with_retries_backs_off_until_the_call_succeeds(monkeypatch):
    monkeypatch.setattr(trial_mod.random, "uniform", lambda a, b: 1.0)
    clock, calls = FakeClock(), []

    def flaky():
        calls.append(clock.now)
        if len(calls) < 5:
            raise _operational("Connection refused")
        return "done"

    assert with_retries(flaky, "test", sleep=clock.sleep, clock=clock) == "done"
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]


def test_with_retries_gives_up_after_the_deadline_with_the_last_error(monkeypatch):
    monkeypatch.setattr(trial_mod.random, "uniform", lambda a, b: 1.0)
    clock = FakeClock()

    def down():
        raise _operational(f"Connection refused at {clock.now:.1f}")

    with pytest.raises(sa_exc.OperationalError, match="Connection refused"):
        with_retries(down, "test", deadline_s=120, sleep=clock.sleep, clock=clock)
    assert 120 <= clock.now < 130, "about two minutes, not forever"
    assert max(clock.sleeps) == 8.0


def test_with_retries_raises_other_errors_at_once():
    clock = FakeClock()

    def broken():
        raise ValueError("not a storage problem")

    with pytest.raises(ValueError):
        with_retries(broken, "test", sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


def test_pruners_from_the_hpo_section():
    median = make_pruner(build_config({}, {"pruner_startup_trials": 4, "pruner_warmup_steps": 2}).hpo, 10)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (4, 2)
    hyperband = make_pruner(build_config({}, {"pruner": "hyperband", "pruner_reduction_factor": 2}).hpo, 9)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (1, 9, 2)
    assert isinstance(make_pruner(build_config({}, {"pruner": "none"}).hpo, 5), optuna.pruners.NopPruner)
    percentile = make_pruner(
        build_config({}, {"pruner": "percentile", "pruner_percentile": 10, "pruner_startup_trials": 1}).hpo, 5
    )
    assert isinstance(percentile, optuna.pruners.PercentilePruner)
    assert (percentile._percentile, percentile._n_startup_trials, percentile._n_warmup_steps) == (10.0, 1, 1)


def _result(status="completed", history=None, epochs_run=3):
    return FitResult(
        status=status,
        epochs_run=epochs_run,
        best_val_auc=0.0,
        best_epoch=0,
        final_metrics={},
        test_metrics={},
        history=history or [],
        mlflow_run_id="run1",
        model_uri="models:/m-1",
    )


def _study_with_finished_trials(n: int, value: float, steps: int):
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=n, n_warmup_steps=1)
    )
    for _ in range(n):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE,
                value=value,
                intermediate_values={step: value for step in range(steps)},
            )
        )
    return study


def test_reporter_reports_the_objective_and_asks_the_pruner():
    study = _study_with_finished_trials(3, 0.99, 5)
    cfg = build_config({}, {"study_name": "s", "trial_number": 3, "objective": "val_auc"})
    trial = study.ask()
    reporter = TrialReporter(cfg, trial)
    assert reporter.on_epoch(0, {"val_auc": 0.6, "val_loss": 0.7}) is False, "warm-up step"
    assert reporter.on_epoch(1, {"val_auc": 0.7, "val_loss": 0.6}) is True, "below the median"
    assert study.trials[3].intermediate_values == {0: 0.6, 1: 0.7}


def test_reporting_an_epoch_again_after_a_restart_is_harmless():
    study = optuna.create_study(direction="maximize")
    cfg = build_config({}, {"study_name": "s", "trial_number": 0})
    trial = study.ask()
    TrialReporter(cfg, trial).on_epoch(0, {"val_auc": 0.6})
    again = TrialReporter(cfg, optuna.trial.Trial(study, trial._trial_id))  # a resumed rank 0
    with pytest.warns(UserWarning, match="already reported"):
        again.on_epoch(0, {"val_auc": 0.65})
    again.on_epoch(1, {"val_auc": 0.7})
    assert study.trials[0].intermediate_values == {0: 0.6, 1: 0.7}


def test_a_non_finite_objective_is_not_reported():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = TrialReporter(build_config({}, {"study_name": "s", "trial_number": 0}), trial)
    assert reporter.on_epoch(0, {"val_auc": float("nan")}) is False
    assert study.trials[0].intermediate_values == {}


def test_finish_leaves_the_outcome_in_user_attrs_not_the_state():
    study = optuna.create_study(direction="minimize")
    cfg = build_config(
        {}, {"study_name": "s", "trial_number": 0, "objective": "val_loss", "direction": "minimize"}
    )
    trial = study.ask()
    history = [{"val_loss": 0.5}, {"val_loss": 0.3}, {"val_loss": 0.4}]
    TrialReporter(cfg, trial).finish(_result("pruned", history, 3))
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.RUNNING, "the operator tells, not the trainer"
    assert frozen.user_attrs == {
        "dmlt.outcome": "pruned",
        "dmlt.value": 0.3,
        "dmlt.epochs_run": 3,
        "dmlt.mlflow_run_id": "run1",
        "dmlt.model_uri": "models:/m-1",
    }


def test_a_reporter_without_a_trial_refuses_to_report():
    follower = TrialReporter(build_config({}, {"study_name": "s", "trial_number": 0}))
    with pytest.raises(RuntimeError, match="only rank 0"):
        follower.on_epoch(0, {"val_auc": 0.5})


# ---- the Trainer side of the contract ---------------------------------------------------------


def _tiny(tmp_path, **overrides):
    values = {
        "dataset": "synthetic",
        "n_samples": 600,
        "epochs": 3,
        "hidden_dims": "8",
        "batch_size": 64,
        "enabled": False,
        "threads": 1,
        "cache_dir": str(tmp_path / "cache"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        **overrides,
    }
    cfg = build_config({}, values)
    return cfg, prepare(cfg.data, cfg.train.seed)


def test_epoch_metrics_are_exactly_what_an_evaluated_epoch_logs(tmp_path):
    cfg, data = _tiny(tmp_path, epochs=1)
    seen = []
    Trainer(cfg, DistContext(), data, epoch_callback=lambda e, m: seen.append(dict(m)) or False).fit()
    assert set(seen[0]) - {"epoch"} == set(EPOCH_METRICS)
    assert all(math.isfinite(seen[0][name]) for name in EPOCH_METRICS)


def test_the_callback_runs_on_evaluated_epochs_and_its_true_stops_the_run(tmp_path):
    cfg, data = _tiny(tmp_path, epochs=6, eval_every=2)
    epochs = []

    def callback(epoch, metrics):
        epochs.append(epoch)
        return epoch == 3

    result = Trainer(cfg, DistContext(), data, epoch_callback=callback).fit()
    assert epochs == [1, 3]
    assert (result.status, result.epochs_run) == ("pruned", 4)


def test_a_prune_after_the_last_epoch_keeps_the_finished_run(tmp_path):
    """Nothing is left to save after the last epoch: the run completes with its result."""
    cfg, data = _tiny(tmp_path, epochs=2)
    epochs = []
    result = Trainer(cfg, DistContext(), data, epoch_callback=lambda e, m: epochs.append(e) or True).fit()
    assert epochs == [0]  # pruned at the first epoch, the second never ran
    cfg, data = _tiny(tmp_path, epochs=2, run_name="later")
    result = Trainer(cfg, DistContext(), data, epoch_callback=lambda e, m: epochs.append(e) or e == 1).fit()
    assert epochs == [0, 0, 1]
    assert (result.status, result.epochs_run) == ("completed", 2)


def test_a_failing_callback_fails_the_run(tmp_path):
    cfg, data = _tiny(tmp_path, epochs=2)

    def callback(epoch, metrics):
        raise ConfigError("objective metric 'x' was not logged")

    with pytest.raises(ConfigError, match="objective metric"):
        Trainer(cfg, DistContext(), data, epoch_callback=callback).fit()


def test_the_parent_run_comes_from_the_tracking_section(tmp_path):
    cfg, data = _tiny(tmp_path, parent_run_id="parent-1")
    assert Trainer(cfg, DistContext(), data).parent_run_id == "parent-1"
    assert Trainer(cfg, DistContext(), data, parent_run_id="study-run").parent_run_id == "study-run"
