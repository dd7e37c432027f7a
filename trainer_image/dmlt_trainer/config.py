"""Typed run configuration: one tree of dataclasses, built from YAML and CLI overrides.

Each component owns its section; every field has a docstring-style comment and is
validated in ``__post_init__`` so a bad value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dmlt_trainer.errors import ConfigError

MODES = ("single", "ddp", "hp_search", "benchmark")
DATASETS = ("synthetic", "synthetic_large", "breast_cancer", "covertype", "file")
BACKENDS = ("auto", "gloo", "nccl")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "percentile", "hyperband", "none")
HP_ENGINES = ("optuna", "ray")
DIRECTIONS = ("maximize", "minimize")
# What the Trainer logs on every evaluated epoch (train.Trainer.fit): the names an objective may
# take. tests/unit/test_trial_reporting.py checks this list against a real epoch.
EPOCH_METRICS = (
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
)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}; got {value!r}")


@dataclass(kw_only=True, slots=True)
class DataConfig:
    dataset: str = "synthetic"
    """Dataset name: synthetic, synthetic_large, breast_cancer, covertype, or file."""
    data_path: str | None = None
    """Parquet/CSV path for `file` and `covertype` (covertype also reads DMLT_COVERTYPE_PATH)."""
    target: str | None = None
    """Target column of a user file (dataset `file`); must hold two classes."""
    val_fraction: float = 0.15
    """Share of rows held out for validation (stratified)."""
    test_fraction: float = 0.15
    """Share of rows held out for the final test (stratified)."""
    n_samples: int | None = None
    """Override the row count of a synthetic dataset (tests and quick runs)."""
    cache_dir: str = ".dmlt_cache/data"
    """Where prepared (split + scaled) data is cached as parquet."""

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ConfigError(f"{name} must be between 0 and 0.5; got {value!r}")
        if self.n_samples is not None and self.n_samples < 100:
            raise ConfigError(f"n_samples must be >= 100; got {self.n_samples!r}")
        if self.dataset == "file" and (not self.data_path or not self.target):
            raise ConfigError("dataset 'file' needs --data-path FILE and --target COLUMN")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    """Width of each hidden layer (Linear -> BatchNorm -> GELU -> Dropout)."""
    dropout: float = 0.2
    """Dropout probability after each hidden layer."""

    def __post_init__(self) -> None:
        if not self.hidden_dims or any(int(d) < 1 for d in self.hidden_dims):
            raise ConfigError(
                f"hidden_dims must be a non-empty list of positive integers; got {self.hidden_dims!r}"
            )
        self.hidden_dims = [int(d) for d in self.hidden_dims]
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1); got {self.dropout!r}")


@dataclass(kw_only=True, slots=True)
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate of OneCycleLR (AdamW)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    pct_start: float = 0.3
    """Share of steps spent warming up in OneCycleLR."""
    pos_weight: float | None = None
    """Positive-class weight for BCEWithLogits; `auto` is not supported, give a number."""

    def __post_init__(self) -> None:
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("grad_clip", self.grad_clip, allow_zero=True)
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"pct_start must be in (0, 1); got {self.pct_start!r}")
        if self.pos_weight is not None:
            _positive("pos_weight", self.pos_weight)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    epochs: int = 20
    """Number of passes over the training shard."""
    batch_size: int = 1024
    """Per-rank batch size; the global batch is batch_size x world size."""
    seed: int = 42
    """Seed for data generation, splits, initialisation, shuffling and dropout."""
    early_stopping_patience: int = 0
    """Stop after this many epochs without a better val AUC; 0 disables."""
    checkpoint_dir: str = "checkpoints"
    """Root of per-run checkpoint folders; a restarted run resumes from the last one."""
    resume: bool = True
    """Resume from the run's last checkpoint when one exists."""
    threads: int | None = None
    """Torch intra-op threads per rank; default: cores / local ranks."""
    deterministic: bool = True
    """Use deterministic algorithms (bitwise-reproducible on CPU)."""
    target_auc: float | None = None
    """Val AUC whose first crossing is reported as time-to-target."""
    eval_every: int = 1
    """Evaluate on the validation set every N epochs (and always on the last)."""
    result_file: str | None = None
    """Rank 0 writes the run's summary (metrics, history, timings) here as JSON."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1; got {self.epochs!r}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2; got {self.batch_size!r}")
        if self.early_stopping_patience < 0:
            raise ConfigError("early_stopping_patience must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1; got {self.threads!r}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1; got {self.eval_every!r}")


@dataclass(kw_only=True, slots=True)
class DistConfig:
    world_size: int = 1
    """Local ranks to launch in `ddp` mode (ignored under torchrun, which sets WORLD_SIZE)."""
    backend: str = "auto"
    """Process-group backend: gloo, nccl, or auto (nccl when CUDA is present)."""
    bucket_cap_mb: float = 25.0
    """DDP gradient bucket size in MB."""
    gradient_as_bucket_view: bool = True
    """Let gradients alias DDP's buckets (saves a copy per step)."""
    static_graph: bool = True
    """Tell DDP the graph never changes (enables its static-graph optimisations)."""
    comm_hook: str = "none"
    """DDP communication hook: none, fp16 (compress gradients) or bf16."""
    broadcast_buffers: bool = False
    """Broadcast BatchNorm running stats from rank 0 before every forward (DDP's default).
    Off by default: training-mode BatchNorm normalises with batch statistics, so the running
    stats only matter for evaluation, and rank 0's are broadcast once per epoch before it;
    that ends in the same state as the per-step broadcast without a collective per step."""
    timeout_s: int = 600
    """Process-group timeout, also how long ranks wait for each other at start."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"world_size must be >= 1; got {self.world_size!r}")
        _choice("backend", self.backend, BACKENDS)
        _choice("comm_hook", self.comm_hook, ("none", "fp16", "bf16"))
        _positive("bucket_cap_mb", self.bucket_cap_mb)


@dataclass(kw_only=True, slots=True)
class TrackingConfig:
    tracking_uri: str | None = None
    """MLflow tracking URI; default MLFLOW_TRACKING_URI, else the local ./mlruns store."""
    experiment: str = "dmlt"
    """MLflow experiment name."""
    register_model: str | None = None
    """Register the final model in the Model Registry under this name."""
    log_model: bool = True
    """Log the final model (with signature) as an artifact."""
    enabled: bool = True
    """Turn MLflow tracking off entirely (benchmarks of the raw loop)."""
    parent_run_id: str | None = None
    """MLflow run this run nests under (tag mlflow.parentRunId): a study's run for its trials."""


@dataclass(kw_only=True, slots=True)
class HPOConfig:
    hp_trials: int = 20
    """Trials to run (counted toward the study's total)."""
    hp_engine: str = "optuna"
    """Search engine: optuna (default) or ray."""
    sampler: str = "tpe"
    """Optuna sampler: tpe, random or grid."""
    pruner: str = "median"
    """Optuna pruner on the per-epoch objective: median, percentile, hyperband or none."""
    pruner_startup_trials: int = 3
    """median, percentile: trials that must complete before any trial is pruned."""
    pruner_warmup_steps: int = 1
    """median, percentile: epochs a trial runs before it may be pruned."""
    pruner_percentile: float = 25.0
    """percentile: a trial is pruned below this percentile of earlier trials at the same epoch
    (median is percentile 50; lower keeps fewer trials)."""
    pruner_min_resource: int = 1
    """hyperband: epochs every trial runs before its first rung."""
    pruner_reduction_factor: int = 3
    """hyperband: 1 in this many trials goes on at each rung."""
    objective: str = "val_auc"
    """The per-epoch metric a study optimizes (any name in EPOCH_METRICS); its best value is the result."""
    direction: str = "maximize"
    """Whether the objective is maximized or minimized."""
    storage: str | None = None
    """Optuna RDB storage URL. hp_search default: a local SQLite file (optuna.db); a trial run
    (trial_number set) reads env DMLT_OPTUNA_STORAGE when this is unset."""
    study_name: str | None = None
    """Study name; an existing study of that name is resumed. Default: the run name."""
    trial_number: int | None = None
    """Run as this trial (already asked, RUNNING) of the existing study study_name: report the
    objective per epoch, stop when pruned, leave the outcome in the trial's user attrs."""
    parallel_trials: int = 1
    """Trials run at once."""
    trial_epochs: int | None = None
    """Epochs per trial (default: train.epochs)."""
    cpus_per_trial: float = 1.0
    """CPUs the ray engine reserves per trial (also the trial's torch threads)."""
    hp_timeout_s: float | None = None
    """Stop starting new trials after this many seconds."""

    def __post_init__(self) -> None:
        if self.hp_trials < 1:
            raise ConfigError(f"hp_trials must be >= 1; got {self.hp_trials!r}")
        _choice("hp_engine", self.hp_engine, HP_ENGINES)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("pruner", self.pruner, PRUNERS)
        if self.objective not in EPOCH_METRICS:
            raise ConfigError(
                f"objective {self.objective!r} is not a metric the trainer logs per epoch; "
                f"available: {', '.join(EPOCH_METRICS)}"
            )
        _choice("direction", self.direction, DIRECTIONS)
        if self.hp_engine == "ray" and (self.objective, self.direction) != ("val_auc", "maximize"):
            raise ConfigError("the ray engine optimizes val_auc (maximize) only; use hp_engine optuna")
        for name in ("pruner_startup_trials", "pruner_warmup_steps"):
            _positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 < self.pruner_percentile < 100.0:
            raise ConfigError(f"pruner_percentile must be in (0, 100); got {self.pruner_percentile!r}")
        _positive("pruner_min_resource", self.pruner_min_resource)
        if self.pruner_reduction_factor < 2:
            raise ConfigError(f"pruner_reduction_factor must be >= 2; got {self.pruner_reduction_factor!r}")
        if self.trial_number is not None:
            if self.trial_number < 0:
                raise ConfigError(f"trial_number must be >= 0; got {self.trial_number!r}")
            if not self.study_name:
                raise ConfigError("trial_number needs --study-name: the study the trial belongs to")
        if self.parallel_trials < 1:
            raise ConfigError(f"parallel_trials must be >= 1; got {self.parallel_trials!r}")
        _positive("cpus_per_trial", self.cpus_per_trial)


@dataclass(kw_only=True, slots=True)
class BenchmarkConfig:
    model_sizes: list[str] = field(default_factory=lambda: ["128-64", "512-256-128"])
    """Hidden-dim presets to compare, each as dash-separated widths."""
    world_sizes: list[int] = field(default_factory=lambda: [1, 2])
    """World sizes to compare."""
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    """Datasets to compare."""
    bench_epochs: int = 3
    """Epochs per benchmark cell."""
    report_dir: str = "reports"
    """Where benchmark_report.md, its JSON results and plots are written."""

    def __post_init__(self) -> None:
        for size in self.model_sizes:
            parse_hidden_dims(size)
        if not self.world_sizes or any(int(w) < 1 for w in self.world_sizes):
            raise ConfigError(f"world_sizes must be >= 1; got {self.world_sizes!r}")
        for name in self.datasets:
            _choice("datasets", name, DATASETS)


@dataclass(kw_only=True, slots=True)
class RunConfig:
    mode: str = "single"
    """single | ddp | hp_search | benchmark."""
    run_name: str = "dmlt_run"
    """Names the MLflow run, the checkpoint folder and (by default) the Optuna study."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hpo: HPOConfig = field(default_factory=HPOConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"run_name must be non-empty without '/'; got {self.run_name!r}")
        if self.hpo.trial_number is not None and self.mode not in ("single", "ddp"):
            raise ConfigError(f"trial_number is for modes single and ddp; got mode {self.mode}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def redacted_dict(self) -> dict[str, Any]:
        """to_dict with passwords in URLs masked: what may be logged and shown."""
        values = self.to_dict()
        for section, name in SECRET_URL_FIELDS:
            if values[section][name]:
                values[section][name] = redact_url(values[section][name])
        return values

    def flat_params(self) -> dict[str, Any]:
        """Every field as `section.field` -> value (MLflow params), passwords masked."""
        flat: dict[str, Any] = {}
        for key, value in self.redacted_dict().items():
            if isinstance(value, dict):
                for sub, subval in value.items():
                    flat[f"{key}.{sub}"] = subval
            else:
                flat[key] = value
        return flat


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name not in ("mode", "run_name")}
# URLs that may carry a password (postgresql://user:secret@host/db): masked in logged params.
SECRET_URL_FIELDS = (("hpo", "storage"), ("tracking", "tracking_uri"))


def redact_url(url: str) -> str:
    """'scheme://user:secret@host/db' -> 'scheme://user:***@host/db'; other text unchanged."""
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@]*):[^/]*@", r"\1:***@", url)


def parse_hidden_dims(text: str | list[int] | tuple[int, ...]) -> list[int]:
    """'512,256,128' or '512-256-128' or a list -> [512, 256, 128]."""
    if isinstance(text, list | tuple):
        items = list(text)
    else:
        items = [t for t in str(text).replace("-", ",").replace(" ", "").split(",") if t]
    try:
        dims = [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"hidden_dims must be integers like 512,256,128; got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"hidden_dims must be positive integers like 512,256,128; got {text!r}")
    return dims


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in SECTIONS}


@dataclass(frozen=True, slots=True)
class FieldInfo:
    section: str | None
    name: str
    type: Any
    field: dataclasses.Field


def field_index() -> dict[str, FieldInfo]:
    """Field name -> where it lives and its resolved type. Names are unique across sections."""
    index: dict[str, FieldInfo] = {}
    owners: list[tuple[str | None, type]] = [(None, RunConfig), *_section_classes().items()]
    for section, cls in owners:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if section is None and f.name in SECTIONS:
                continue
            if f.name in index:
                raise RuntimeError(f"duplicate config field name {f.name}")
            index[f.name] = FieldInfo(section, f.name, hints[f.name], f)
    return index


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def coerce(name: str, tp: Any, raw: Any) -> Any:
    """Turn a CLI/YAML value into the field's type, with a clear error."""
    if raw is None:
        return None
    base = _base_type(tp)
    if isinstance(raw, str) and raw.lower() in ("none", "null") and base is not str:
        return None
    try:
        if typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            if name in ("hidden_dims",):
                return parse_hidden_dims(raw)
            items = raw if isinstance(raw, list) else [s for s in str(raw).split(",") if s]
            return [item(v) for v in items]
        if base is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base in (int, float, str):
            if base is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return base(raw)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {raw!r} as {getattr(base, '__name__', base)}") from None
    return raw


def build_config(
    file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Merge YAML values (nested by section, or flat) and CLI overrides into a RunConfig."""
    index = field_index()
    merged: dict[str | None, dict[str, Any]] = {None: {}, **{s: {} for s in SECTIONS}}

    def put(name: str, value: Any) -> None:
        if name not in index:
            raise ConfigError(f"unknown config field {name!r}")
        info = index[name]
        merged[info.section][name] = coerce(name, info.type, value)

    for key, value in (file_values or {}).items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, subval in value.items():
                if sub not in index or index[sub].section != key:
                    raise ConfigError(f"unknown config field {key}.{sub}")
                put(sub, subval)
        else:
            put(key, value)
    for key, value in (overrides or {}).items():
        put(key.split(".")[-1], value)

    classes = _section_classes()
    sections = {name: classes[name](**merged[name]) for name in SECTIONS}
    return RunConfig(**merged[None], **sections)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def replace(cfg: RunConfig, **changes: Any) -> RunConfig:
    """A copy of cfg with flat field overrides (validated again)."""
    values = cfg.to_dict()
    return build_config(values, changes)
