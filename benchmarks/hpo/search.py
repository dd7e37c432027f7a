"""Trials and searches run in this process, the way hpo.run_search runs them: the trainer's own
search space (hpo.suggest_params, hpo.GRID_SPACE), samplers (hpo.make_sampler) and per-trial
config (hpo.trial_config); a Trainer per trial on data prepared once, tracking off, an in-memory
Optuna study, parallel trials as Optuna's n_jobs threads. What it adds is the clock: each trial's
start and end, measured from the study's start.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlt_trainer import checkpoint, hpo
from dmlt_trainer.config import HPOConfig, RunConfig
from dmlt_trainer.data import PreparedData
from dmlt_trainer.dist import DistContext
from dmlt_trainer.train import Trainer

from benchmarks.hpo.analysis import config_key

log = logging.getLogger(__name__)


def build_pruner(spec: dict[str, Any], epochs: int):
    """The study's pruner, through the trainer's own factory (hpo.make_pruner): `median` is
    exactly what a default hp_search gets, and every spec is a setting a study can choose."""
    if spec["kind"] == "none":
        return hpo.make_pruner(HPOConfig(pruner="none"), epochs)
    settings = HPOConfig(
        pruner=spec["kind"],
        pruner_startup_trials=spec["startup"],
        pruner_warmup_steps=spec["warmup"],
        pruner_percentile=spec.get("percentile", 25.0),
    )
    return hpo.make_pruner(settings, epochs)


def grid_points() -> list[dict[str, Any]]:
    """Every configuration of hpo.GRID_SPACE, in a fixed order (names sorted, as GridSampler)."""
    names = sorted(hpo.GRID_SPACE)
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(hpo.GRID_SPACE[n] for n in names))
    ]


@dataclass(slots=True)
class TrialRunner:
    """Trains one configuration on shared data; checkpoints go to `scratch` and are removed."""

    base: RunConfig
    data: PreparedData
    scratch: Path

    def run(self, study: str, number: int, params: dict[str, Any], epoch_callback=None) -> dict[str, Any]:
        cfg = hpo.trial_config(self.base, study, number, params)
        start = time.perf_counter()
        try:
            trainer = Trainer(
                cfg, DistContext(), self.data, epoch_callback=epoch_callback, show_progress=False
            )
            result = trainer.fit()
        finally:
            shutil.rmtree(checkpoint.run_dir(cfg.train.checkpoint_dir, cfg.run_name), ignore_errors=True)
        completed = result.status != "pruned"
        return {
            "status": result.status,
            "value": float(result.best_val_auc) if completed else None,
            "test_auc": float(result.test_metrics["auc"]),
            "epochs_run": int(result.epochs_run),
            "val_auc_history": [float(h["val_auc"]) for h in result.history if "val_auc" in h],
            # where the trial's time went: the training loop and the per-epoch val evaluation
            "train_s": sum(float(h.get("epoch_time_s", 0.0)) for h in result.history),
            "eval_s": sum(float(h.get("eval_time_s", 0.0)) for h in result.history),
            "seconds": time.perf_counter() - start,
        }


def run_search(
    runner: TrialRunner,
    name: str,
    sampler: str,
    pruner: dict[str, Any],
    seed: int,
    n_trials: int,
    n_jobs: int,
) -> dict[str, Any]:
    """One Optuna study of n_trials; every trial's record with t_start/t_end from the study's start."""
    import optuna

    epochs = runner.base.hpo.trial_epochs or runner.base.train.epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            study_name=name,
            sampler=hpo.make_sampler(sampler, seed),
            pruner=build_pruner(pruner, epochs),
            direction="maximize",
        )
    records: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()

    def objective(trial) -> float:
        t_start = time.perf_counter() - t0
        params = hpo.suggest_params(trial)

        def report(epoch: int, metrics: dict[str, float]) -> bool:
            trial.report(metrics["val_auc"], epoch)
            return trial.should_prune()

        record: dict[str, Any] = {"number": trial.number, "params": params, "t_start": t_start}
        try:
            record |= runner.run(name, trial.number, params, report)
        except Exception as exc:
            record |= {"status": "failed", "value": None, "error": f"{type(exc).__name__}: {exc}"}
            raise
        finally:
            record["t_end"] = time.perf_counter() - t0
            records[trial.number] = record
        if record["status"] == "pruned":
            raise optuna.TrialPruned()
        return record["value"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective,
            n_trials=n_trials,
            n_jobs=n_jobs,
            catch=(RuntimeError, ValueError),
            gc_after_trial=False,
        )
    wall = time.perf_counter() - t0
    trials = [records[n] for n in sorted(records)]
    return {
        "sampler": sampler,
        "pruner": pruner,
        "seed": seed,
        "n_jobs": n_jobs,
        "wall_s": wall,
        "epochs_run": sum(t.get("epochs_run", 0) for t in trials),
        "trials": trials,
    }


def grid_order(seed: int) -> list[str]:
    """The configurations, as config_key, in the order GridSampler(GRID_SPACE, seed) asks for them:
    a study whose objective only records the key (no training)."""
    import optuna

    order: list[str] = []

    def objective(trial) -> float:
        order.append(config_key(hpo.suggest_params(trial)))
        return 0.0

    study = optuna.create_study(sampler=hpo.make_sampler("grid", seed), direction="maximize")
    study.optimize(objective, n_trials=len(grid_points()))
    return order


def replay_pruner(histories: list[list[float]], spec: dict[str, Any], epochs: int) -> list[dict[str, Any]]:
    """Epochs each trial would have run had `spec` pruned this fixed sequence of trials (their
    per-epoch val AUC, in order): Optuna's own pruner, asked after every epoch but the last, as
    the Trainer does, without any training. Sampling is not replayed: a real pruned
    search would have asked for different trials after the first prune."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=build_pruner(spec, epochs))
    out: list[dict[str, Any]] = []
    for history in histories:
        trial = study.ask()
        for step, value in enumerate(history):
            trial.report(value, step)
            if step < len(history) - 1 and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                out.append({"epochs_run": step + 1, "value": None})
                break
        else:
            study.tell(trial, max(history))
            out.append({"epochs_run": len(history), "value": max(history)})
    return out


def rng_check(runner: TrialRunner, params: dict[str, Any]) -> dict[str, list[float | None]]:
    """One configuration trained twice alone, then twice at once in two threads (as n_jobs=2 runs
    trials): equal values alone and unequal ones at once mean parallel trials disturb each other."""
    import threading

    alone = [runner.run("rng-alone", i, params)["value"] for i in range(2)]
    together: list[float | None] = [None, None]

    def one(i: int) -> None:
        together[i] = runner.run("rng-together", i, params)["value"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"params": params, "alone": alone, "together": together}
