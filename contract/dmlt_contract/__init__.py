"""What the trainer and the operator agree on, defined once and imported by both.

Small on purpose and free of heavy dependencies (no torch, no kopf, no kubernetes): both
container images carry it. Optuna is imported only inside the functions that build its objects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, get_args

# --- environment variables the operator sets on trainer containers -------------------------
STORAGE_ENV = "DMLT_OPTUNA_STORAGE"
"""The Optuna storage URL of a trial's study (filled from a Secret; kept out of argv)."""
JOB_NAME_ENV = "DMLT_JOB_NAME"
NODE_RANK_ENV = "DMLT_NODE_RANK"
ATTEMPT_ENV = "DMLT_ATTEMPT"

# --- how a rank reports (docs/operator.md, "Progress") ---------------------------------------
TERMINATION_LOG_ENV = "DMLT_TERMINATION_LOG"
"""Where a rank writes its `finished` event; unset: TERMINATION_LOG, when the kubelet made it."""
TERMINATION_LOG = "/dev/termination-log"
"""The container's terminationMessagePath (Kubernetes' default); the Pod's
state.terminated.message carries what is written there (at most TERMINATION_LOG_LIMIT bytes)."""
TERMINATION_LOG_LIMIT = 4096
PROGRESS_URL_ENV = "DMLT_PROGRESS_URL"
"""HTTPS URL rank 0 POSTs each epoch event to (the operator's progress receiver)."""
PROGRESS_TOKEN_FILE_ENV = "DMLT_PROGRESS_TOKEN_FILE"
"""File holding the projected service-account token for that URL (the kubelet rotates it)."""
PROGRESS_CA_ENV = "DMLT_PROGRESS_CA"
"""PEM of the CA that signed the receiver's serving certificate (inline, not a path)."""
PROGRESS_PATH_PREFIX = "/v1/progress"
"""The receiver's path: PROGRESS_PATH_PREFIX/<namespace>/<job>/<job uid>."""
PROGRESS_AUDIENCE_PREFIX = "dmlt.io/progress"


def progress_audience(namespace: str, job: str, uid: str) -> str:
    """The audience of one TrainingJob instance's progress token: the apiserver refuses such a
    token for its own API, and the receiver accepts it only for this job (and this uid)."""
    return f"{PROGRESS_AUDIENCE_PREFIX}/{namespace}/{job}/{uid}"


def progress_path(namespace: str, job: str, uid: str) -> str:
    return f"{PROGRESS_PATH_PREFIX}/{namespace}/{job}/{uid}"


DEFAULT_STORAGE = "sqlite:///optuna.db"
"""The Optuna storage of a search run on one machine (the trainer's hp_search, `dmlt tune --local`)."""

# --- the user attributes a finished trial run leaves on its Optuna trial ---------------------
ATTR_OUTCOME = "dmlt.outcome"
ATTR_VALUE = "dmlt.value"
ATTR_EPOCHS = "dmlt.epochs_run"
ATTR_RUN_ID = "dmlt.mlflow_run_id"
ATTR_MODEL_URI = "dmlt.model_uri"

# --- datasets -------------------------------------------------------------------------------------
DatasetName = Literal["synthetic", "synthetic_large", "breast_cancer", "covertype", "file"]
"""The trainer's datasets: what a TrainingJob's trainer.dataset may name."""
DATASETS: tuple[str, ...] = get_args(DatasetName)

# --- metrics ----------------------------------------------------------------------------------
EpochMetric = Literal[
    "val_auc",
    "val_pr_auc",
    "val_f1",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_specificity",
    "val_mcc",
    "val_brier",
    "val_loss",
    "best_val_auc",
    "train_loss",
    "train_accuracy",
    "generalization_gap",
    "grad_norm",
    "lr",
    "epoch_time_s",
    "eval_time_s",
    "samples_per_sec",
]
"""What the trainer logs on every evaluated epoch: the names a study's objective may take."""
EPOCH_METRICS: tuple[str, ...] = get_args(EpochMetric)

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)

# --- samplers and pruners -----------------------------------------------------------------------
TrainerSamplerName = Literal["tpe", "random", "grid"]
"""Samplers of the trainer's own hp_search mode."""
TRAINER_SAMPLERS: tuple[str, ...] = get_args(TrainerSamplerName)
StudyAlgorithmName = Literal["tpe", "random", "grid", "cmaes"]
"""Samplers a TuningStudy may use (the operator runs the sampler, so CMA-ES is available)."""
STUDY_ALGORITHMS: tuple[str, ...] = get_args(StudyAlgorithmName)
PrunerName = Literal["median", "percentile", "hyperband", "none"]
PRUNERS: tuple[str, ...] = get_args(PrunerName)


@dataclass(frozen=True, slots=True)
class PrunerSettings:
    """One pruner's settings, as both the trainer's flags and a TuningStudy's `pruner` give them."""

    name: str = "median"
    startup_trials: int = 3
    warmup_steps: int = 1
    percentile: float = 25.0
    min_resource: int = 1
    reduction_factor: int = 3


def build_pruner(settings: PrunerSettings, max_epochs: int) -> Any:
    """The Optuna pruner for `settings`. A pruner lives in the client, not the storage, so the
    trainer (which asks it) and the operator (whose Hyperband brackets TPE samples within) build
    the same one. Hyperband's max_resource is the trial's epochs, not "auto": known before any
    trial completes, and equal for every trial of a study that does not search epochs."""
    import optuna

    if settings.name == "none":
        return optuna.pruners.NopPruner()
    if settings.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.min_resource,
            max_resource=max(max_epochs, settings.min_resource),
            reduction_factor=settings.reduction_factor,
        )
    if settings.name == "percentile":
        return optuna.pruners.PercentilePruner(
            settings.percentile,
            n_startup_trials=settings.startup_trials,
            n_warmup_steps=settings.warmup_steps,
        )
    if settings.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_steps
        )
    raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}; got {settings.name!r}")


# --- the progress events the trainer prints (one JSON object per line on stdout) -------------
EVENT_EPOCH = "epoch"
EVENT_FINISHED = "finished"


class EpochEvent(TypedDict):
    """Rank 0, after each evaluated epoch. `epoch` counts from 1."""

    event: Literal["epoch"]
    epoch: int
    epochs: int
    metrics: dict[str, float | None]
    mlflow_run_id: str | None


class FinishedEvent(TypedDict, total=False):
    """Every rank, once, at the end: status ("completed", "pruned", "early_stopped", ...)."""

    event: Literal["finished"]
    rank: int
    status: str
    weights_sha256: str
    mlflow_run_id: str | None


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_event(event: str, **fields: Any) -> str:
    """One progress event as its line (without the newline); non-finite metrics become null."""
    payload = {"event": event, **fields}
    if isinstance(payload.get("metrics"), dict):
        payload["metrics"] = {k: _finite_or_none(v) for k, v in payload["metrics"].items()}
    return json.dumps(payload, sort_keys=True)


def parse_event(line: str) -> dict[str, Any] | None:
    """The event on one output line, or None for anything that is not a progress event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested input
        return None
    if not isinstance(obj, dict) or obj.get("event") not in (EVENT_EPOCH, EVENT_FINISHED):
        return None
    return obj
