"""Ray Tune as a second search engine: the same search space, Optuna's TPE as the search
algorithm (Ray Tune's Optuna integration), ASHA early stopping, trials in parallel on the
local Ray runtime. Install with `pip install '.[ray]'`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dmlt_trainer.config import RunConfig, replace
from dmlt_trainer.data import prepare
from dmlt_trainer.errors import ConfigError
from dmlt_trainer.hpo import SearchOutcome, save_outcome, suggest_params, trial_config
from dmlt_trainer.tracking import make_tracker

METRIC = "val_auc"


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError(
            "the ray engine needs Ray Tune: pip install '.[ray]' "
            "(hack/setup.sh installs it unless EXTRAS leaves it out)"
        ) from None
    return ray, tune


def absolute_paths(cfg: RunConfig, tracking_uri: str) -> RunConfig:
    """Trials run in Ray worker processes: give them paths that don't depend on their cwd."""
    return replace(
        cfg,
        cache_dir=os.path.abspath(cfg.data.cache_dir),
        checkpoint_dir=os.path.abspath(cfg.train.checkpoint_dir),
        tracking_uri=tracking_uri,
    )


def _train_trial(config: dict[str, Any]) -> None:
    """One Ray Tune trial: a single-process Trainer reporting val AUC every epoch."""
    import torch
    from ray import tune

    from dmlt_trainer.config import build_config
    from dmlt_trainer.dist import DistContext
    from dmlt_trainer.train import Trainer

    base = build_config(config["base"])
    params = {k: config[k] for k in ("lr", "dropout", "hidden_dims", "batch_size", "weight_decay")}
    trial_id = tune.get_context().get_trial_id()
    tcfg = trial_config(base, config["study"], trial_id, params)
    torch.set_num_threads(max(1, int(base.hpo.cpus_per_trial)))
    data = prepare(tcfg.data, tcfg.train.seed)
    tracker = make_tracker(tcfg.tracking, True)

    def report(epoch: int, metrics: dict[str, float]) -> bool:
        tune.report(
            {
                METRIC: metrics["val_auc"],
                "best_val_auc": metrics["best_val_auc"],
                "epoch": epoch + 1,
                "mlflow_run_id": tracker.run_id,
            }
        )
        return False  # ASHA stops the trial from the outside

    Trainer(
        tcfg,
        DistContext(),
        data,
        tracker,
        epoch_callback=report,
        parent_run_id=config["parent_run_id"],
        show_progress=False,
    ).fit()


def run_ray_search(cfg: RunConfig) -> SearchOutcome:
    ray, tune = _import_ray()
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    hpo = cfg.hpo
    study_name = hpo.study_name or cfg.run_name
    parent = make_tracker(cfg.tracking, True)
    tracking_uri = getattr(parent, "tracking_uri", None)
    if tracking_uri and tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = "sqlite:///" + os.path.abspath(tracking_uri.removeprefix("sqlite:///"))
    cfg = absolute_paths(cfg, tracking_uri) if tracking_uri else cfg
    prepare(cfg.data, cfg.train.seed)  # build the parquet cache once, before trials race for it
    parent_run_id = parent.start(study_name, tags={"dmlt.mode": "hp_search", "dmlt.hp_engine": "ray"})
    parent.log_params({**cfg.flat_params()})
    epochs = hpo.trial_epochs or cfg.train.epochs

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    ray.init(
        num_cpus=max(1, int(hpo.parallel_trials * hpo.cpus_per_trial)),
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        searcher = OptunaSearch(
            space=suggest_params,
            metric=METRIC,
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=cfg.train.seed, n_startup_trials=5),
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=2
        )
        trainable = tune.with_resources(_train_trial, {"cpu": hpo.cpus_per_trial})
        storage = Path(cfg.train.checkpoint_dir, study_name, "ray").resolve()
        tuner = tune.Tuner(
            trainable,
            param_space={"base": cfg.to_dict(), "study": study_name, "parent_run_id": parent_run_id},
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=hpo.hp_trials,
                max_concurrent_trials=hpo.parallel_trials,
                time_budget_s=hpo.hp_timeout_s,
            ),
            run_config=tune.RunConfig(name=study_name, storage_path=str(storage), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()

    outcome, stopped_runs = summarize_results(results, study_name, str(storage), parent_run_id, epochs)
    _close_stopped_runs(parent, stopped_runs)
    save_outcome(cfg, outcome, parent)
    parent.finish("FINISHED")
    return outcome


def summarize_results(results, study_name: str, storage: str, parent_run_id: str | None, epochs: int):
    """Best trial by its best val AUC; trials ASHA stopped before the last epoch count as pruned."""
    keys = ("lr", "dropout", "hidden_dims", "batch_size", "weight_decay")
    best = results.get_best_result(metric="best_val_auc", mode="max", scope="all")
    n_pruned = n_complete = n_failed = 0
    stopped_runs = []
    for result in results:
        if result.error is not None:
            n_failed += 1
            continue
        iterations = (result.metrics or {}).get("training_iteration", 0)
        if iterations < epochs:
            n_pruned += 1
            run_id = (result.metrics or {}).get("mlflow_run_id")
            if run_id:
                stopped_runs.append(run_id)
        else:
            n_complete += 1
    best_value = float(best.metrics_dataframe["best_val_auc"].max())
    outcome = SearchOutcome(
        study_name=study_name,
        storage=storage,
        best_params={k: best.config[k] for k in keys},
        best_value=best_value,
        best_trial=int(results.get_dataframe().index[[r.path for r in results].index(best.path)]),
        n_complete=n_complete,
        n_pruned=n_pruned,
        n_failed=n_failed,
        parent_run_id=parent_run_id,
        engine="ray",
        best_epochs_run=int(best.metrics.get("training_iteration", 0)),
    )
    return outcome, stopped_runs


def _close_stopped_runs(parent, run_ids: list[str]) -> None:
    """ASHA ends a trial's process mid-run; mark its MLflow child run as pruned, not running."""
    client = getattr(parent, "client", None)
    if client is None:
        return
    for run_id in run_ids:
        client.set_tag(run_id, "dmlt.status", "pruned")
        client.set_terminated(run_id, status="KILLED")
