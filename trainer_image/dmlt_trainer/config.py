"""Typed run configuration: one pydantic model per section, built from YAML and CLI overrides.

Each component owns its section. A field's docstring is its help text (`dmlt-train --help`);
pydantic checks types and bounds, so a bad value fails before any work starts, as a
ConfigError whose one line names the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from dmlt_contract import (
    EPOCH_METRICS,
    DatasetName,
    Direction,
    EpochMetric,
    PrunerName,
    PrunerSettings,
    TrainerSamplerName,
)
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from dmlt_trainer.errors import ConfigError

Mode = Literal["single", "ddp", "hp_search", "benchmark"]
Backend = Literal["auto", "gloo", "nccl"]
CommHook = Literal["none", "fp16", "bf16"]
HpEngine = Literal["optuna", "ray"]


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


def _none_words(value: Any) -> Any:
    """'none' or 'null' (a flag's or --set's text) unsets a field that may be unset."""
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    return value


def _comma_list(value: Any) -> Any:
    """'a,b' (a flag's or --set's text) -> ['a', 'b']; a YAML list as it is."""
    if isinstance(value, str):
        return [item for item in value.split(",") if item]
    return value


OptionalInt = Annotated[int | None, BeforeValidator(_none_words)]
OptionalFloat = Annotated[float | None, BeforeValidator(_none_words)]
HiddenDims = Annotated[list[int], BeforeValidator(parse_hidden_dims)]
TextList = Annotated[list[str], BeforeValidator(_comma_list)]
WorldSizeList = Annotated[list[Annotated[int, Field(ge=1)]], BeforeValidator(_comma_list)]
DatasetList = Annotated[list[DatasetName], BeforeValidator(_comma_list)]


class Section(BaseModel):
    """A config model: unknown fields refused, docstrings as descriptions, errors as ConfigError."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        protected_namespaces=(),  # model_sizes is a field, not pydantic's
        coerce_numbers_to_str=True,  # YAML `run_name: 7` is the name "7"
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(error_line(exc.errors()[0], type(self))) from None


class DataConfig(Section):
    dataset: DatasetName = "synthetic"
    """Dataset name: synthetic, synthetic_large, breast_cancer, covertype, or file."""
    data_path: str | None = None
    """Parquet/CSV path for `file` and `covertype` (covertype also reads DMLT_COVERTYPE_PATH)."""
    target: str | None = None
    """Target column of a user file (dataset `file`); must hold two classes."""
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    """Share of rows held out for validation (stratified)."""
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    """Share of rows held out for the final test (stratified)."""
    n_samples: OptionalInt = Field(None, ge=100)
    """Override the row count of a synthetic dataset (tests and quick runs)."""
    cache_dir: str = ".dmlt_cache/data"
    """Where prepared (split + scaled) data is cached as parquet."""

    @model_validator(mode="after")
    def _user_file_is_named(self) -> DataConfig:
        if self.dataset == "file" and (not self.data_path or not self.target):
            raise ConfigError("dataset 'file' needs --data-path FILE and --target-column COLUMN")
        return self


class ModelConfig(Section):
    hidden_dims: HiddenDims = Field(default_factory=lambda: [512, 256, 128])
    """Width of each hidden layer (Linear -> BatchNorm -> GELU -> Dropout)."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout probability after each hidden layer."""


class OptimConfig(Section):
    lr: float = Field(3e-3, gt=0.0)
    """Peak learning rate of OneCycleLR (AdamW)."""
    weight_decay: float = Field(1e-4, ge=0.0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Max global gradient norm; 0 disables clipping."""
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)
    """Share of steps spent warming up in OneCycleLR."""
    pos_weight: OptionalFloat = Field(None, gt=0.0)
    """Positive-class weight for BCEWithLogits; `auto` is not supported, give a number."""


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    """Number of passes over the training shard."""
    batch_size: int = Field(1024, ge=2)
    """Per-rank batch size; the global batch is batch_size x world size."""
    seed: int = 42
    """Seed for data generation, splits, initialisation, shuffling and dropout."""
    early_stopping_patience: int = Field(0, ge=0)
    """Stop after this many epochs without a better val AUC; 0 disables."""
    checkpoint_dir: str = "checkpoints"
    """Root of per-run checkpoint folders; a restarted run resumes from the last one."""
    resume: bool = True
    """Resume from the run's last checkpoint when one exists."""
    threads: OptionalInt = Field(None, ge=1)
    """Torch intra-op threads per rank; default: cores / local ranks."""
    deterministic: bool = True
    """Use deterministic algorithms (bitwise-reproducible on CPU)."""
    target_auc: OptionalFloat = None
    """Val AUC whose first crossing is reported as time-to-target."""
    eval_every: int = Field(1, ge=1)
    """Evaluate on the validation set every N epochs (and always on the last)."""
    result_file: str | None = None
    """Rank 0 writes the run's summary (metrics, history, timings) here as JSON."""


class DistConfig(Section):
    world_size: int = Field(1, ge=1)
    """Local ranks to launch in `ddp` mode (ignored under torchrun, which sets WORLD_SIZE)."""
    backend: Backend = "auto"
    """Process-group backend: gloo, nccl, or auto (nccl when CUDA is present)."""
    bucket_cap_mb: float = Field(25.0, gt=0.0)
    """DDP gradient bucket size in MB."""
    gradient_as_bucket_view: bool = True
    """Let gradients alias DDP's buckets (saves a copy per step)."""
    static_graph: bool = True
    """Tell DDP the graph never changes (enables its static-graph optimisations)."""
    comm_hook: CommHook = "none"
    """DDP communication hook: none, fp16 (compress gradients) or bf16."""
    broadcast_buffers: bool = False
    """Broadcast BatchNorm running stats from rank 0 before every forward (DDP's default).
    Off by default: training-mode BatchNorm normalises with batch statistics, so the running
    stats only matter for evaluation, and rank 0's are broadcast once per epoch before it;
    that ends in the same state as the per-step broadcast without a collective per step."""
    timeout_s: int = 600
    """Process-group timeout, also how long ranks wait for each other at start."""


class TrackingConfig(Section):
    tracking_uri: str | None = None
    """MLflow tracking URI; default MLFLOW_TRACKING_URI, else the local ./mlruns store."""
    experiment: str = "dmlt"
    """MLflow experiment name."""
    register_model: str | None = None
    """Register the final model in the Model Registry under this name."""
    log_model: bool = True
    """Log the final model (with signature) as an artifact."""
    enabled: bool = True
    """MLflow tracking on or off (off: benchmarks of the raw loop, tests)."""
    parent_run_id: str | None = None
    """MLflow run this run nests under (tag mlflow.parentRunId): a study's run for its trials."""


class HPOConfig(Section):
    hp_trials: int = Field(20, ge=1)
    """Trials to run (counted toward the study's total)."""
    hp_engine: HpEngine = "optuna"
    """Search engine: optuna (default) or ray."""
    sampler: TrainerSamplerName = "tpe"
    """Optuna sampler: tpe, random or grid."""
    pruner: PrunerName = "median"
    """Optuna pruner on the per-epoch objective: median, percentile, hyperband or none."""
    pruner_startup_trials: int = Field(3, ge=0)
    """median, percentile: trials that must complete before any trial is pruned."""
    pruner_warmup_steps: int = Field(1, ge=0)
    """median, percentile: epochs a trial runs before it may be pruned."""
    pruner_percentile: float = Field(25.0, gt=0.0, lt=100.0)
    """percentile: a trial is pruned below this percentile of earlier trials at the same epoch
    (median is percentile 50; lower keeps fewer trials)."""
    pruner_min_resource: int = Field(1, gt=0)
    """hyperband: epochs every trial runs before its first rung."""
    pruner_reduction_factor: int = Field(3, ge=2)
    """hyperband: 1 in this many trials goes on at each rung."""
    objective: EpochMetric = "val_auc"
    """The per-epoch metric a study optimizes (any metric logged per epoch, e.g. val_auc,
    val_loss, val_f1); its best value is the result."""
    direction: Direction = "maximize"
    """Whether the objective is maximized or minimized."""
    storage: str | None = None
    """Optuna RDB storage URL. hp_search default: a local SQLite file (optuna.db); a trial run
    (trial_number set) reads env DMLT_OPTUNA_STORAGE when this is unset."""
    study_name: str | None = None
    """Study name; an existing study of that name is resumed. Default: the run name."""
    trial_number: OptionalInt = Field(None, ge=0)
    """Run as this trial (already asked, RUNNING) of the existing study study_name: report the
    objective per epoch, stop when pruned, leave the outcome in the trial's user attrs."""
    parallel_trials: int = Field(1, ge=1)
    """Trials run at once."""
    trial_epochs: OptionalInt = None
    """Epochs per trial (default: train.epochs)."""
    cpus_per_trial: float = Field(1.0, gt=0.0)
    """CPUs the ray engine reserves per trial (also the trial's torch threads)."""
    hp_timeout_s: OptionalFloat = None
    """Stop starting new trials after this many seconds."""

    @field_validator("objective", mode="before")
    @classmethod
    def _logged_per_epoch(cls, value: Any) -> Any:
        if value not in EPOCH_METRICS:
            raise ConfigError(
                f"objective {value!r} is not a metric the trainer logs per epoch; "
                f"available: {', '.join(EPOCH_METRICS)}"
            )
        return value

    @model_validator(mode="after")
    def _engine_and_trial_fit(self) -> HPOConfig:
        if self.hp_engine == "ray" and (self.objective, self.direction) != ("val_auc", "maximize"):
            raise ConfigError("the ray engine optimizes val_auc (maximize) only; use hp_engine optuna")
        if self.trial_number is not None and not self.study_name:
            raise ConfigError("trial_number needs --study-name: the study the trial belongs to")
        return self

    @property
    def pruner_settings(self) -> PrunerSettings:
        """The pruner fields as the contract's settings: field `pruner_X` is setting `X`."""
        names = [f.name for f in dataclasses.fields(PrunerSettings) if f.name != "name"]
        return PrunerSettings(name=self.pruner, **{name: getattr(self, f"pruner_{name}") for name in names})


class BenchmarkConfig(Section):
    model_sizes: TextList = Field(default_factory=lambda: ["128-64", "512-256-128"])
    """Hidden-dim presets to compare, each as dash-separated widths."""
    world_sizes: WorldSizeList = Field(default_factory=lambda: [1, 2], min_length=1)
    """World sizes to compare."""
    datasets: DatasetList = Field(default_factory=lambda: ["synthetic"])
    """Datasets to compare."""
    bench_epochs: int = 3
    """Epochs per benchmark cell."""
    report_dir: str = "reports"
    """Where benchmark_report.md, its JSON results and plots are written."""

    @field_validator("model_sizes")
    @classmethod
    def _sizes_are_hidden_dims(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            parse_hidden_dims(size)
        return sizes


class RunConfig(Section):
    mode: Mode = "single"
    """single | ddp | hp_search | benchmark."""
    run_name: str = "dmlt_run"
    """Names the MLflow run, the checkpoint folder and (by default) the Optuna study."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    hpo: HPOConfig = Field(default_factory=HPOConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    @field_validator("run_name")
    @classmethod
    def _usable_as_a_folder(cls, value: str) -> str:
        if not value or "/" in value:
            raise ConfigError(f"run_name must be non-empty without '/'; got {value!r}")
        return value

    @model_validator(mode="after")
    def _trial_runs_train(self) -> RunConfig:
        if self.hpo.trial_number is not None and self.mode not in ("single", "ddp"):
            raise ConfigError(f"trial_number is for modes single and ddp; got mode {self.mode}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

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
                flat.update({f"{key}.{sub}": subval for sub, subval in value.items()})
            else:
                flat[key] = value
        return flat


SECTIONS: dict[str, type[Section]] = {
    name: f.annotation
    for name, f in RunConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
}
# URLs that may carry a password (postgresql://user:secret@host/db): masked in logged params.
SECRET_URL_FIELDS = (("hpo", "storage"), ("tracking", "tracking_uri"))


def redact_url(url: str) -> str:
    """'scheme://user:secret@host/db' -> 'scheme://user:***@host/db'; other text unchanged."""
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@]*):[^/]*@", r"\1:***@", url)


# ---- validation errors as one line ---------------------------------------------------------
_TYPE_WORDS = {
    "int_parsing": "int",
    "int_type": "int",
    "int_from_float": "int",
    "float_parsing": "float",
    "float_type": "float",
    "bool_parsing": "bool",
    "bool_type": "bool",
    "string_type": "str",
    "list_type": "list",
}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _field_at(model: type[BaseModel], names: list[str]) -> FieldInfo | None:
    """The field at a validation error's location (`names` without list indexes)."""
    info = None
    for name in names:
        fields = getattr(model, "model_fields", {})
        if name not in fields:
            return None
        info = fields[name]
        model = info.annotation
    return info


def _bounds_text(bounds: dict[str, float]) -> str:
    """{'gt': 0, 'lt': 100} -> 'in (0, 100)'; {'ge': 1} -> '>= 1'."""
    lower = next(((k, v) for k, v in bounds.items() if k in ("gt", "ge")), None)
    upper = next(((k, v) for k, v in bounds.items() if k in ("lt", "le")), None)
    if lower and upper:
        opening, closing = "(" if lower[0] == "gt" else "[", ")" if upper[0] == "lt" else "]"
        return f"in {opening}{lower[1]:g}, {upper[1]:g}{closing}"
    kind, bound = lower or upper
    return f"{dict(gt='>', ge='>=', lt='<', le='<=')[kind]} {bound:g}"


def _bound_message(name: str, info: FieldInfo | None, ctx: dict[str, Any], got: Any) -> str:
    bounds = dict(ctx)
    if info is not None:  # both ends of an interval, not only the one crossed
        for constraint in info.metadata:
            for kind in ("gt", "ge", "lt", "le"):
                if getattr(constraint, kind, None) is not None:
                    bounds[kind] = getattr(constraint, kind)
    bound = next(iter(ctx.values()))
    try:
        got = type(bound)(got)  # the value as the field reads it: '100' for a float is 100.0
    except (TypeError, ValueError):
        pass
    return f"{name} must be {_bounds_text(bounds)}; got {got!r}"


def error_line(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One pydantic error as the line a person reads: the field, what it must be, what it got."""
    names = [part for part in error["loc"] if isinstance(part, str)]
    name = names[-1] if names else model.__name__
    kind, ctx, got = error["type"], error.get("ctx") or {}, error["input"]
    if kind == "value_error":  # a validator's own ConfigError
        return str(ctx["error"])
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx["expected"])
        return f"{name} must be one of {', '.join(choices)}; got {got!r}"
    if kind in _BOUND_ERRORS:
        return _bound_message(name, _field_at(model, names), ctx, got)
    if kind in _TYPE_WORDS:
        return f"{name}: cannot read {got!r} as {_TYPE_WORDS[kind]}"
    if kind == "extra_forbidden":
        return f"unknown config field {name!r}"
    return f"{name}: {error['msg']}"


# ---- flat names, files and overrides -------------------------------------------------------
class ConfigField(NamedTuple):
    section: str | None  # None: a top-level field of RunConfig
    name: str
    info: FieldInfo


def config_fields() -> dict[str, ConfigField]:
    """Field name -> where it lives. Names are unique across sections, so a flat name (a flag,
    a --set, a flat YAML key) finds its field."""
    owners: list[tuple[str | None, type[Section]]] = [(None, RunConfig), *SECTIONS.items()]
    index: dict[str, ConfigField] = {}
    for section, model in owners:
        for name, info in model.model_fields.items():
            if section is None and name in SECTIONS:
                continue
            if name in index:
                raise RuntimeError(f"duplicate config field name {name}")
            index[name] = ConfigField(section, name, info)
    return index


def _file_items(file_values: dict[str, Any], index: dict[str, ConfigField]):
    """(name, value) for each field a YAML mapping sets, nested by section or flat."""
    for key, value in file_values.items():
        if key not in SECTIONS or not isinstance(value, dict):
            yield key, value
            continue
        for sub, subval in value.items():
            if sub not in index or index[sub].section != key:
                raise ConfigError(f"unknown config field {key}.{sub}")
            yield sub, subval


def build_config(
    file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Merge YAML values (nested by section, or flat) and CLI overrides into a RunConfig."""
    index = config_fields()
    values: dict[str, Any] = {section: {} for section in SECTIONS}
    items = [*_file_items(file_values or {}, index)]
    items += [(key.split(".")[-1], value) for key, value in (overrides or {}).items()]
    for name, value in items:
        if name not in index:
            raise ConfigError(f"unknown config field {name!r}")
        section = index[name].section
        (values if section is None else values[section])[name] = value
    return RunConfig(**values)


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
    return build_config(cfg.to_dict(), changes)
