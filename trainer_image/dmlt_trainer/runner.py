"""Run one training job on this process: join the group, load data, fit, clean up."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from dmlt_contract import EVENT_FINISHED

from dmlt_trainer.config import RunConfig
from dmlt_trainer.data import prepare
from dmlt_trainer.dist import DistContext, default_threads, init_from_env, shutdown
from dmlt_trainer.progress import emit_event, write_termination_message
from dmlt_trainer.tracking import make_tracker
from dmlt_trainer.train import FitResult, Trainer


def write_result(result: FitResult, path: str, **extra: object) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**dataclasses.asdict(result), **extra}, indent=2, default=float))


def announce_finished(ctx: DistContext, result: FitResult) -> None:
    """Every rank's `finished` event: on stdout (not a terminal), and from each Pod's first
    process in its termination message, where the operator reads the result from the Pod."""
    fields = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "status": result.status,
        "epochs_run": result.epochs_run,
        "best_val_auc": result.best_val_auc,
        "weights_sha256": result.weights_sha256,
        "mlflow_run_id": result.mlflow_run_id,
        "test_metrics": {k: result.test_metrics[k] for k in ("auc", "f1", "accuracy")},
    }
    if not os.isatty(1):
        emit_event(EVENT_FINISHED, **fields)
    if ctx.local_rank == 0:
        write_termination_message(EVENT_FINISHED, **fields)


def run_training(cfg: RunConfig, announce: bool = True) -> FitResult:
    """Train cfg on this process (a torchrun rank, or the only process)."""
    ctx = init_from_env(cfg.dist)
    try:
        torch.set_num_threads(cfg.train.threads or default_threads(ctx.local_world_size))
        reporter = None
        if cfg.hpo.trial_number is not None:  # this run is a trial of a study: fail early if it can't be
            from dmlt_trainer.trial import attach_trial

            reporter = attach_trial(cfg, ctx.is_main)
        data = prepare(cfg.data, cfg.train.seed)
        tracker = make_tracker(cfg.tracking, ctx.is_main)
        callback = reporter.on_epoch if reporter is not None else None
        result = Trainer(cfg, ctx, data, tracker, epoch_callback=callback).fit()
        if reporter is not None and ctx.is_main:
            reporter.finish(result)  # before "finished": the operator reads it once the job ends
        if ctx.is_main and cfg.train.result_file:
            write_result(result, cfg.train.result_file, world_size=ctx.world_size)
        if announce:
            announce_finished(ctx, result)
        return result
    finally:
        shutdown(ctx)
