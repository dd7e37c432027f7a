"""Hyper-parameter search with Optuna: RDB storage, resumable studies, pruning on the
per-epoch objective (hpo.objective, hpo.direction; median or hyperband pruner).

Every trial trains in this process on the shared prepared data and is an MLflow child
run of one parent run per study.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlt_contract import DEFAULT_STORAGE

from dmlt_trainer.config import RunConfig, redact_url, replace
from dmlt_trainer.data import PreparedData, prepare
from dmlt_trainer.dist import DistContext, default_threads
from dmlt_trainer.tracking import make_tracker
from dmlt_trainer.train import FitResult, Trainer
from dmlt_trainer.trial import best_value, make_pruner, objective_value

log = logging.getLogger(__name__)
PARENT_RUN_ATTR = "mlflow_parent_run_id"

# The search space shared by every engine: name -> how Optuna samples it, and its grid.
HIDDEN_DIM_CHOICES = ["128-64", "256-128", "512-256-128", "256-256-128", "1024-512-256"]
BATCH_SIZE_CHOICES = [256, 512, 1024, 2048]
GRID_SPACE: dict[str, list[Any]] = {
    "lr": [3e-4, 1e-3, 3e-3, 1e-2],
    "dropout": [0.0, 0.2, 0.4],
    "hidden_dims": ["128-64", "512-256-128", "1024-512-256"],
    "batch_size": [512, 1024],
    "weight_decay": [1e-5, 1e-3],
}


def suggest_params(trial) -> dict[str, Any]:
    """Sample one configuration: lr, dropout, hidden dims, batch size, weight decay."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "hidden_dims": trial.suggest_categorical("hidden_dims", HIDDEN_DIM_CHOICES),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZE_CHOICES),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }


def make_sampler(name: str, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(GRID_SPACE, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True)


def trial_config(base: RunConfig, study_name: str, number: int, params: dict[str, Any]) -> RunConfig:
    """The single-process config one trial trains with."""
    return replace(
        base,
        mode="single",
        run_name=f"{study_name}-trial-{number}",
        epochs=base.hpo.trial_epochs or base.train.epochs,
        resume=False,
        log_model=False,
        register_model=None,
        result_file=None,
        **params,
    )


@dataclass(slots=True)
class SearchOutcome:
    study_name: str
    storage: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    n_complete: int
    n_pruned: int
    n_failed: int
    parent_run_id: str | None
    engine: str = "optuna"
    best_epochs_run: int | None = None


def _finished_count(study) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in done)


def run_search(cfg: RunConfig, data: PreparedData | None = None) -> SearchOutcome:
    import optuna

    hpo = cfg.hpo
    storage = hpo.storage or DEFAULT_STORAGE
    study_name = hpo.study_name or cfg.run_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=make_sampler(hpo.sampler, cfg.train.seed),
        pruner=make_pruner(hpo, hpo.trial_epochs or cfg.train.epochs),
        direction=hpo.direction,
        load_if_exists=True,
    )
    data = data or prepare(cfg.data, cfg.train.seed)
    tracker = make_tracker(cfg.tracking, True)
    parent_run_id = tracker.start(
        study_name, run_id=study.user_attrs.get(PARENT_RUN_ATTR), tags={"dmlt.mode": "hp_search"}
    )
    if parent_run_id and PARENT_RUN_ATTR not in study.user_attrs:
        study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)
        tracker.log_params({**cfg.flat_params(), "search_space": json.dumps(GRID_SPACE)})
    import torch

    torch.set_num_threads(cfg.train.threads or default_threads(hpo.parallel_trials))

    def objective(trial) -> float:
        params = suggest_params(trial)
        tcfg = trial_config(cfg, study_name, trial.number, params)

        def report(epoch: int, metrics: dict[str, float]) -> bool:
            trial.report(objective_value(metrics, hpo.objective), epoch)
            return trial.should_prune()

        child = make_tracker(tcfg.tracking, True)
        trainer = Trainer(
            tcfg,
            DistContext(),
            data,
            child,
            epoch_callback=report,
            parent_run_id=parent_run_id,
            show_progress=False,
        )
        result: FitResult = trainer.fit()
        trial.set_user_attr("mlflow_run_id", result.mlflow_run_id)
        trial.set_user_attr("epochs_run", result.epochs_run)
        if result.status == "pruned":
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run}")
        value = best_value(result.history, hpo.objective, hpo.direction)
        if value is None:
            raise ValueError(f"trial {trial.number}: {hpo.objective} was never finite")
        return value

    remaining = max(0, hpo.hp_trials - _finished_count(study))
    if remaining:
        study.optimize(
            objective,
            n_trials=remaining,
            n_jobs=hpo.parallel_trials,
            timeout=hpo.hp_timeout_s,
            catch=(RuntimeError, ValueError),
            gc_after_trial=False,
        )
    outcome = summarize(study, redact_url(storage), parent_run_id)
    save_outcome(cfg, outcome, tracker)
    tracker.finish("FINISHED")
    return outcome


def summarize(study, storage: str, parent_run_id: str | None) -> SearchOutcome:
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    return SearchOutcome(
        study_name=study.study_name,
        storage=storage,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_trial=best.number,
        n_complete=states.count(optuna.trial.TrialState.COMPLETE),
        n_pruned=states.count(optuna.trial.TrialState.PRUNED),
        n_failed=states.count(optuna.trial.TrialState.FAIL),
        parent_run_id=parent_run_id,
        best_epochs_run=best.user_attrs.get("epochs_run"),
    )


def save_outcome(cfg: RunConfig, outcome: SearchOutcome, tracker) -> None:
    """best_params.json beside the checkpoints, on the parent run, and on stdout."""
    out_dir = Path(cfg.train.checkpoint_dir) / outcome.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "best_params.json"
    payload = {
        "engine": outcome.engine,
        "study": outcome.study_name,
        "best_trial": outcome.best_trial,
        "objective": cfg.hpo.objective,
        "direction": cfg.hpo.direction,
        "best_value": outcome.best_value,
        "best_params": outcome.best_params,
        "best_epochs_run": outcome.best_epochs_run,
        "trials": {"complete": outcome.n_complete, "pruned": outcome.n_pruned, "failed": outcome.n_failed},
    }
    path.write_text(json.dumps(payload, indent=2))
    tracker.log_metrics(
        {
            f"best_{cfg.hpo.objective.removeprefix('best_')}": outcome.best_value,
            "n_pruned": outcome.n_pruned,
            "n_complete": outcome.n_complete,
        },
        step=0,
    )
    tracker.set_tags({f"best.{k}": v for k, v in outcome.best_params.items()})
    tracker.log_artifact(path)
    print(json.dumps({"event": "hp_search_finished", **payload}), flush=True)
    log.info("best params saved to %s", os.fspath(path))
