"""The Trainer: one rank's training loop, evaluation, checkpointing and tracking."""

from __future__ import annotations

import hashlib
import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dmlt_trainer import checkpoint
from dmlt_trainer.config import RunConfig
from dmlt_trainer.data import PreparedData, batch_bounds, shard_indices
from dmlt_trainer.dist import DistContext, all_reduce_mean, broadcast_object, gather_strided, sync_buffers
from dmlt_trainer.metrics import binary_metrics
from dmlt_trainer.model import TabularNet
from dmlt_trainer.progress import EpochProgress
from dmlt_trainer.progress_push import ProgressPusher
from dmlt_trainer.tracking import NullTracker

EVAL_BATCH = 8192
# Called after each evaluated epoch with (epoch, metrics); return True to stop the run early
# (pruning). Every rank passes one (or none), but only rank 0's is called: its answer, or its
# failure, is broadcast, so all ranks stop at the same epoch and only rank 0 talks to a study.
EpochCallback = Callable[[int, dict[str, float]], bool]


@dataclass(slots=True)
class FitResult:
    status: str  # completed | early_stopped | pruned
    epochs_run: int
    best_val_auc: float
    best_epoch: int
    final_metrics: dict[str, float]
    test_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    time_to_target_s: float | None = None
    mlflow_run_id: str | None = None
    weights_sha256: str = ""
    model_uri: str | None = None  # the logged model (rank 0, when tracking logs it)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def weights_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer: equal on ranks of one process group."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _buffer_sync_kwargs(sync_each_step: bool) -> dict[str, bool]:
    """DDP's per-step buffer broadcast switch: `forward_sync_buffers` on torch versions that
    deprecate `broadcast_buffers` (the default, on, needs no argument at all)."""
    if sync_each_step:
        return {}
    params = inspect.signature(DistributedDataParallel).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        data: PreparedData,
        tracker: NullTracker | None = None,
        epoch_callback: EpochCallback | None = None,
        parent_run_id: str | None = None,
        show_progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.data = data
        self.tracker = tracker or NullTracker()
        self.epoch_callback = epoch_callback
        self.parent_run_id = parent_run_id or cfg.tracking.parent_run_id
        self.show_progress = show_progress
        train = cfg.train
        torch.use_deterministic_algorithms(train.deterministic, warn_only=True)
        seed_everything(train.seed)  # same initial weights on every rank

        self.model = TabularNet(data.n_features, cfg.model.hidden_dims, cfg.model.dropout).to(ctx.device)
        self.wrapped: nn.Module = self.model
        if ctx.distributed:
            self.wrapped = self._wrap_ddp(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.x_train = torch.from_numpy(data.x_train).to(ctx.device)
        self.y_train = torch.from_numpy(data.y_train).to(ctx.device)
        per_rank = len(shard_indices(len(data.y_train), ctx.rank, ctx.world_size, 0, train.seed, False))
        self.steps_per_epoch = len(batch_bounds(per_rank, train.batch_size))
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=cfg.optim.lr,
            total_steps=max(1, train.epochs * self.steps_per_epoch),
            pct_start=cfg.optim.pct_start,
        )
        pos_weight = None
        if cfg.optim.pos_weight is not None:
            pos_weight = torch.tensor(cfg.optim.pos_weight, device=ctx.device)
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

        self.epoch = 0  # the next epoch to run
        self.best_val_auc = float("-inf")
        self.best_epoch = -1
        self.stale_epochs = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.time_to_target_s: float | None = None
        self.mlflow_run_id: str | None = None

    def _wrap_ddp(self, model: nn.Module) -> DistributedDataParallel:
        d = self.cfg.dist
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        ddp = DistributedDataParallel(
            model,
            device_ids=device_ids,
            bucket_cap_mb=d.bucket_cap_mb,
            gradient_as_bucket_view=d.gradient_as_bucket_view,
            static_graph=d.static_graph,
            **_buffer_sync_kwargs(d.broadcast_buffers),
        )
        if d.comm_hook != "none":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            hook = (
                default_hooks.fp16_compress_hook
                if d.comm_hook == "fp16"
                else default_hooks.bf16_compress_hook
            )
            ddp.register_comm_hook(state=None, hook=hook)
        return ddp

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_val_auc": self.best_val_auc,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "time_to_target_s": self.time_to_target_s,
            "mlflow_run_id": self.mlflow_run_id,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for key in (
            "epoch",
            "best_val_auc",
            "best_epoch",
            "stale_epochs",
            "history",
            "train_seconds",
            "time_to_target_s",
            "mlflow_run_id",
        ):
            setattr(self, key, state[key])
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])

    @property
    def checkpoint_path(self):
        return checkpoint.run_dir(self.cfg.train.checkpoint_dir, self.cfg.run_name) / checkpoint.LAST

    def _restore(self) -> bool:
        """Rank 0 reads the last checkpoint and broadcasts it: only its volume must hold it."""
        state = None
        if self.cfg.train.resume and self.ctx.is_main:
            state = checkpoint.load(self.checkpoint_path)
        state = broadcast_object(self.ctx, state)
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    def _save(self, is_best: bool) -> None:
        if not self.ctx.is_main:
            return
        state = self.state_dict()
        checkpoint.save_atomic(state, self.checkpoint_path)
        if is_best:
            checkpoint.save_atomic(
                {"model": state["model"], "epoch": self.epoch - 1, "val_auc": self.best_val_auc},
                self.checkpoint_path.with_name(checkpoint.BEST),
            )

    # ---- loop --------------------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        # Dropout's randomness is a pure function of (seed, rank, epoch): resuming needs no RNG replay.
        torch.manual_seed(cfg.train.seed * 1_000_003 + ctx.rank * 7919 + epoch)
        indices = shard_indices(len(self.y_train), ctx.rank, ctx.world_size, epoch, cfg.train.seed)
        indices = indices.to(self.x_train.device)
        x_all, y_all = self.x_train, self.y_train
        model, loss_fn, optimizer, scheduler = self.wrapped, self.loss_fn, self.optimizer, self.scheduler
        params = list(self.model.parameters())
        clip = cfg.optim.grad_clip
        model.train()
        loss_sum = torch.zeros((), device=ctx.device)
        correct = torch.zeros((), device=ctx.device)
        grad_norm_sum = torch.zeros((), device=ctx.device)
        seen = 0
        lr = scheduler.get_last_lr()[0]
        start = time.perf_counter()
        bounds = batch_bounds(len(indices), cfg.train.batch_size)
        for lo, hi in bounds:
            # A gather per batch: no shuffled copy of the whole shard is ever held.
            batch_idx = indices[lo:hi]
            xb, yb = x_all.index_select(0, batch_idx), y_all.index_select(0, batch_idx)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                grad_norm_sum += nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                n = hi - lo
                loss_sum += loss.detach() * n
                correct += ((logits > 0) == (yb > 0.5)).sum()
                seen += n
        elapsed = time.perf_counter() - start
        stats = torch.stack(
            [loss_sum / max(seen, 1), correct / max(seen, 1), grad_norm_sum / max(len(bounds), 1)]
        )
        stats = all_reduce_mean(ctx, stats).tolist()
        return {
            "train_loss": stats[0],
            "train_accuracy": stats[1],
            "grad_norm": stats[2],
            "lr": lr,
            "epoch_time_s": elapsed,
            "samples_per_sec": seen * ctx.world_size / elapsed if elapsed > 0 else 0.0,
        }

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for every row of x; each rank scores a strided share, then all gather."""
        ctx = self.ctx
        total = len(x)
        rows = torch.from_numpy(x[ctx.rank :: ctx.world_size]).to(ctx.device)
        self.model.eval()
        logits = [self.model(rows[s : s + EVAL_BATCH]) for s in range(0, len(rows), EVAL_BATCH)]
        local = torch.cat(logits) if logits else torch.empty(0, device=ctx.device)
        full = gather_strided(ctx, local.float(), total)
        return torch.sigmoid(full).cpu().numpy()

    def evaluate(self, split: str) -> tuple[dict[str, float], np.ndarray]:
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        prob = self.predict(x)
        return binary_metrics(y, prob), prob

    def fit(self) -> FitResult:
        """Resume if a checkpoint exists, train the remaining epochs, test, and report."""
        resumed = self._restore()
        self._start_tracking(resumed)
        enabled = self.show_progress and self.ctx.is_main
        pusher = ProgressPusher.from_env() if enabled else None
        progress = EpochProgress(self.cfg.train.epochs, self.epoch, enabled, self.mlflow_run_id, pusher)
        try:
            status, metrics = self._train_epochs(progress)
        except BaseException:
            if self.ctx.is_main:
                self.tracker.finish("FAILED")
            raise
        finally:
            progress.close()
        return self._test_and_report(status, metrics)

    def _start_tracking(self, resumed: bool) -> None:
        """Rank 0 opens (or reopens) the MLflow run; every rank learns its id."""
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            tags = {"dmlt.mode": cfg.mode, "dmlt.world_size": str(ctx.world_size)}
            if cfg.hpo.trial_number is not None:
                tags |= {"dmlt.study": str(cfg.hpo.study_name), "dmlt.trial": str(cfg.hpo.trial_number)}
            self.mlflow_run_id = self.tracker.start(
                cfg.run_name, run_id=self.mlflow_run_id, parent_run_id=self.parent_run_id, tags=tags
            )
            self.tracker.log_params(
                {
                    **cfg.flat_params(),
                    "world_size": ctx.world_size,
                    "n_features": self.data.n_features,
                    "n_train": len(self.data.y_train),
                }
            )
            if resumed:
                self.tracker.set_tags({"dmlt.resumed_from_epoch": str(self.epoch)})
        self.mlflow_run_id = broadcast_object(ctx, self.mlflow_run_id)

    def _train_epochs(self, progress: EpochProgress) -> tuple[str, dict[str, float]]:
        """Epochs until the last, or until pruned or stopped early: the status and last metrics."""
        metrics: dict[str, float] = self.history[-1] if self.history else {}
        while self.epoch < self.cfg.train.epochs:
            epoch = self.epoch
            metrics, evaluated = self._epoch(epoch)
            progress.update(epoch, metrics)
            status = self._stop_status(epoch, metrics, evaluated)
            if status is not None:
                return status, metrics
        return "completed", metrics

    def _epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """Train one epoch, validate when due, checkpoint and log it: its metrics, and whether
        it was evaluated."""
        metrics = self._run_epoch(epoch)
        self.train_seconds += metrics["epoch_time_s"]
        if self.ctx.distributed:
            sync_buffers(self.ctx, self.model)
        evaluated = (epoch + 1) % self.cfg.train.eval_every == 0 or self._is_last(epoch)
        is_best = self._validate(epoch, metrics) if evaluated else False
        metrics["best_val_auc"] = self.best_val_auc
        metrics["epoch"] = epoch
        self.history.append(metrics)
        self.epoch = epoch + 1
        self._save(is_best)
        self.tracker.log_metrics(metrics, step=epoch)
        return metrics, evaluated

    def _is_last(self, epoch: int) -> bool:
        return epoch == self.cfg.train.epochs - 1

    def _validate(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Add the validation metrics to `metrics` and track the best AUC: True on a new best."""
        eval_start = time.perf_counter()
        val, _ = self.evaluate("val")
        skip = ("tp", "fp", "tn", "fn", "log_loss")  # log loss is logged as val_loss
        metrics.update({f"val_{k}": v for k, v in val.items() if k not in skip})
        metrics["val_loss"] = val["log_loss"]
        metrics["eval_time_s"] = time.perf_counter() - eval_start
        metrics["generalization_gap"] = metrics["val_loss"] - metrics["train_loss"]
        is_best = val["auc"] > self.best_val_auc
        if is_best:
            self.best_val_auc, self.best_epoch, self.stale_epochs = val["auc"], epoch, 0
        else:
            self.stale_epochs += 1
        target = self.cfg.train.target_auc
        if target is not None and self.time_to_target_s is None and val["auc"] >= target:
            self.time_to_target_s = self.train_seconds
        return is_best

    def _stop_status(self, epoch: int, metrics: dict[str, float], evaluated: bool) -> str | None:
        """Why the run ends after this epoch: pruned (the epoch callback says so), early_stopped
        (patience ran out), or None to go on."""
        if self.epoch_callback is not None and evaluated:
            # after the last epoch there is nothing left to save: a "prune" then would only
            # throw away a finished trial's result
            if self._rank0_decides(epoch, metrics) and not self._is_last(epoch):
                return "pruned"
        patience = self.cfg.train.early_stopping_patience
        if patience and self.stale_epochs >= patience:
            return "early_stopped"
        return None

    def _test_and_report(self, status: str, metrics: dict[str, float]) -> FitResult:
        """Test metrics, the run's result, and (rank 0) its closing MLflow records."""
        test, test_prob = self.evaluate("test")
        result = FitResult(
            status=status,
            epochs_run=self.epoch,
            best_val_auc=self.best_val_auc,
            best_epoch=self.best_epoch,
            final_metrics=metrics,
            test_metrics=test,
            history=self.history,
            train_seconds=self.train_seconds,
            time_to_target_s=self.time_to_target_s,
            mlflow_run_id=self.mlflow_run_id,
            weights_sha256=weights_digest(self.model),
        )
        if self.ctx.is_main:
            self._finish_tracking(result, test_prob)
        return result

    def _rank0_decides(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Rank 0 runs the epoch callback; every rank gets its answer (or fails with it)."""
        answer: tuple[bool, str | None] = (False, None)
        error: BaseException | None = None
        if self.ctx.is_main:
            try:
                answer = (bool(self.epoch_callback(epoch, metrics)), None)
            except Exception as exc:  # the other ranks must not wait for an answer that never comes
                error, answer = exc, (False, f"{type(exc).__name__}: {exc}")
        stop, failure = broadcast_object(self.ctx, answer)
        if error is not None:
            raise error
        if failure is not None:
            raise RuntimeError(f"rank 0's epoch callback failed at epoch {epoch}: {failure}")
        return stop

    def _finish_tracking(self, result: FitResult, test_prob: np.ndarray) -> None:
        from dmlt_trainer import artifacts

        tracker = self.tracker
        if tracker.run_id is None:
            return
        tracker.log_metrics({f"test_{k}": v for k, v in result.test_metrics.items()}, step=result.epochs_run)
        tracker.set_tags({"dmlt.status": result.status, "dmlt.best_epoch": str(result.best_epoch)})
        artifacts.log_run_artifacts(tracker, self.cfg, result, self.data.y_test, test_prob)
        if self.cfg.tracking.log_model:
            example = self.data.x_val[:5]
            result.model_uri = tracker.log_model(self.model, example, self.cfg.tracking.register_model)
        tracker.finish("FINISHED")
