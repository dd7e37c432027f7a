"""Typed TuningStudy spec: parsed once from the custom resource, then passed around.

As for TrainingJobs (trainingjob/spec.py), the CRD's schema (helm/dmlt/crds/tuningstudies.dmlt.io.yaml) is
what users meet first: it applies defaults and its CEL rules reject a bad search space at
admission. These models repeat the defaults and rules, and add the few checks CEL cannot make
(every sampled value must be a valid trainer setting), so the operator never trusts an object
blindly. tests/unit/test_study_crd.py keeps the two in step.

Nothing here imports Optuna: the search space is described in plain values, and store.py
turns it into Optuna distributions. Metric, sampler, pruner and direction names are the
contract's (dmlt_contract), which the trainer shares.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from dmlt_contract import EPOCH_METRICS, Direction, PrunerName, StudyAlgorithmName
from dmlt_operator.core.spec import SpecError, SpecModel, check_name, field_path, refuse_repeated
from dmlt_operator.trainingjob.spec import DnsSubdomain, TrainerSpec, TrainingJobSpec, parse_spec
from pydantic import Field, ValidationError, field_validator, model_validator

MAX_TRIALS = 10_000
MAX_FAILED_TRIALS = 10_000
MAX_PARALLELISM = 128
MAX_STUDY_NAME = 40
"""Trial jobs are named `<study>-t<N>`; N stays below MAX_TRIALS + MAX_FAILED_TRIALS (5 digits),
and a TrainingJob name may have 50 characters."""
MAX_GRID = 100_000
DIMS_RE = re.compile(r"^[0-9]{1,5}(-[0-9]{1,5}){0,15}$")
# How a categorical choice written as a string reads as a whole or a real number (the CRD's CEL
# rules use the same patterns before converting it).
INT_CHOICE_RE = re.compile(r"^[0-9]{1,18}$")
FLOAT_CHOICE_RE = re.compile(r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]{1,3})?$")

# What the CRD says when a parameter's values fall outside the TrainingJob's trainer bounds
# (min/max, then choices); the bounds themselves are TrainerSpec's.
BOUND_MESSAGES: dict[str, str] = {
    "lr": "lr must stay in (0, 10] (min > 0, max <= 10)",
    "dropout": "dropout must stay in [0, 1)",
    "weightDecay": "weightDecay must not be negative (min >= 0)",
    "batchSize": "batchSize must stay in [2, 1000000]",
    "epochs": "epochs must stay in [1, 100000]",
}
CHOICE_MESSAGES: dict[str, str] = {
    "lr": "lr choices must be numbers in (0, 10]",
    "dropout": "dropout choices must be numbers in [0, 1)",
    "weightDecay": "weightDecay choices must be numbers >= 0",
    "batchSize": "batchSize choices must be whole numbers in [2, 1000000]",
    "epochs": "epochs choices must be whole numbers in [1, 100000]",
    "hiddenDims": (
        "hiddenDims choices are widths in [1, 65536], or up to 16 of them written like '512-256-128'"
    ),
}
GRID_MESSAGE = "a grid may have at most 100000 points (the product of every parameter's number of values)"
# Tunable trainer settings: parameter name (the TrainingJob's trainer field) → value kind.
PARAMETER_KINDS: dict[str, str] = {
    "lr": "float",
    "dropout": "float",
    "weightDecay": "float",
    "batchSize": "int",
    "epochs": "int",
    "hiddenDims": "dims",
}


class StudySpecError(SpecError):
    """The TuningStudy spec is invalid; the message names every offending field."""


class ObjectiveSpec(SpecModel):
    """What the study optimizes: a per-epoch metric the trainer logs, and which way."""

    metric: str = "val_auc"
    direction: Direction = "maximize"

    @field_validator("metric")
    @classmethod
    def _logged_by_the_trainer(cls, value: str) -> str:
        if value not in EPOCH_METRICS:
            metrics = ", ".join(EPOCH_METRICS)
            raise ValueError(f"{value!r} is not a metric the trainer logs per epoch; one of: {metrics}")
        return value


def _float_value(name: str, raw: Any) -> float:
    if isinstance(raw, str) and not FLOAT_CHOICE_RE.match(raw):
        raise ValueError(f"{name}: {raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: {raw!r} is not a finite number")
    return value


def _int_value(name: str, raw: Any) -> int:
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError(f"{name}: {raw!r} is not an integer")
        return int(raw)
    if isinstance(raw, str) and not INT_CHOICE_RE.match(raw):
        raise ValueError(f"{name}: {raw!r} is not an integer")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {raw!r} is not an integer") from None


def _dims_value(name: str, raw: Any) -> list[int]:
    if isinstance(raw, int):
        return [raw]
    if not DIMS_RE.match(str(raw)):
        raise ValueError(f"{name}: {raw!r} is not hidden dims written like '512-256-128'")
    return [int(part) for part in str(raw).split("-")]


_VALUE_OF_KIND = {"float": _float_value, "int": _int_value, "dims": _dims_value}


def trainer_value(name: str, raw: Any) -> Any:
    """A sampled (or chosen) value as the TrainingJob's trainer field `name` takes it.

    Categorical choices come as integers or strings (the CRD allows only those): "0.1" is a
    float for lr, dropout and weightDecay, and hidden dims are written "512-256-128"; strings
    are read with the patterns the CRD's rules use.
    """
    if isinstance(raw, bool):
        raise ValueError(f"{name}: {raw!r} is not a number")
    return _VALUE_OF_KIND[PARAMETER_KINDS[name]](name, raw)


def _check_trainer_value(name: str, raw: Any, message: str) -> None:
    """Raise ValueError(message) unless `raw` is a valid value of the trainer field (TrainerSpec's
    bounds, the TrainingJob CRD's)."""
    try:
        TrainerSpec.model_validate({name: trainer_value(name, raw)})
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"{message}; got {raw!r}") from exc


class ParameterSpec(SpecModel):
    """One dimension of the search space: a trainer setting and the values it may take."""

    name: Literal["lr", "dropout", "weightDecay", "batchSize", "epochs", "hiddenDims"]
    type: Literal["float", "int", "categorical"]
    min: float | None = None
    max: float | None = None
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None
    choices: Annotated[list[Any], Field(min_length=1, max_length=64)] | None = None

    @field_validator("choices")
    @classmethod
    def _int_or_string(cls, choices: list[Any] | None) -> list[Any] | None:
        for choice in choices or []:
            ok_int = isinstance(choice, int) and not isinstance(choice, bool)
            ok_str = isinstance(choice, str) and 0 < len(choice) <= 128
            if not (ok_int or ok_str):
                raise ValueError(
                    f"choice {choice!r}: choices are integers or strings of 1-128 characters "
                    "(write real numbers as strings, e.g. '0.1')"
                )
        return choices

    @model_validator(mode="after")
    def _consistent(self) -> ParameterSpec:
        if self.type == "categorical":
            self._check_choices()
        else:
            self._check_range()
        return self

    def _check_choices(self) -> None:
        if not self.choices:
            raise ValueError("categorical parameters need choices")
        if self.min is not None or self.max is not None or self.step is not None or self.log:
            raise ValueError("categorical parameters take choices only, not min, max, step or log")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError("choices must be unique")
        for choice in self.choices:
            _check_trainer_value(self.name, choice, CHOICE_MESSAGES[self.name])

    def _check_kind(self) -> None:
        kind = PARAMETER_KINDS[self.name]
        if self.choices is not None:
            raise ValueError("choices are for categorical parameters only")
        if kind == "dims":
            raise ValueError("hiddenDims must be categorical, e.g. choices: ['256-128', '512-256-128']")
        if kind == "int" and self.type == "float":
            raise ValueError(f"{self.name} is an integer: use type int or categorical")
        if kind == "float" and self.type == "int":
            raise ValueError(f"{self.name} is a real number: use type float or categorical")

    def _check_range(self) -> None:
        self._check_kind()
        if self.min is None or self.max is None:
            raise ValueError("float and int parameters need min and max")
        if not self.min < self.max:
            raise ValueError("min must be less than max")
        if self.log and self.min <= 0:
            raise ValueError("a log scale needs min > 0")
        if self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            raise ValueError("log and step cannot be combined (int parameters allow step 1)")
        whole = (v is None or float(v).is_integer() for v in (self.min, self.max, self.step))
        if self.type == "int" and not all(whole):
            raise ValueError("min, max and step of an int parameter must be whole numbers")
        if self.step is not None and self.step > self.max - self.min:
            raise ValueError("step must not exceed max - min")
        _check_trainer_value(self.name, self.min, BOUND_MESSAGES[self.name])
        _check_trainer_value(self.name, self.max, BOUND_MESSAGES[self.name])

    def grid_values(self) -> list[Any]:
        """Every value an exhaustive grid visits (float parameters need a step)."""
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.min is not None and self.max is not None
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(self.min), int(self.max) + 1, step))
        if self.step is None:
            raise ValueError(f"parameter {self.name}: a grid needs a step for float parameters")
        count = int(math.floor((self.max - self.min) / self.step + 1e-9)) + 1
        return [round(self.min + i * self.step, 12) for i in range(count)]

    def grid_size(self) -> int:
        if self.type == "categorical":
            return len(self.choices or [])
        assert self.min is not None and self.max is not None
        if self.type == "int":
            return (int(self.max) - int(self.min)) // int(self.step or 1) + 1
        if self.step is None:
            raise ValueError(f"parameter {self.name}: a grid needs a step for float parameters")
        return int(math.floor((self.max - self.min) / self.step + 1e-9)) + 1


class AlgorithmSpec(SpecModel):
    """How the next configuration is chosen."""

    name: StudyAlgorithmName = "tpe"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    startup_trials: Annotated[int, Field(ge=0, le=MAX_TRIALS)] | None = None
    """Random trials before TPE / CMA-ES start modelling (None: Optuna's default)."""


class PrunerSpec(SpecModel):
    """How trials that fall behind are stopped early (the trainer asks after each epoch)."""

    name: PrunerName = "median"
    startup_trials: Annotated[int, Field(ge=0, le=MAX_TRIALS)] = 5
    warmup_steps: Annotated[int, Field(ge=0, le=100_000)] = 0
    percentile: Annotated[float, Field(gt=0, lt=100)] = 25.0
    min_resource: Annotated[int, Field(ge=1, le=100_000)] = 1
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3


class SecretKeyRef(SpecModel):
    """A key of a Secret in the study's namespace."""

    name: DnsSubdomain
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = "url"


class StorageSpec(SpecModel):
    """Where the Optuna study lives."""

    secret_ref: SecretKeyRef | None = None
    """The SQLAlchemy URL of the database; None: the operator's default (the chart's PostgreSQL)."""
    retain_study: bool = False
    """Keep the Optuna study in the database when the TuningStudy is deleted."""


class StudyMlflowSpec(SpecModel):
    """MLflow tracking of the study: a parent run, one child run per trial, the best model."""

    tracking_uri: Annotated[str, Field(max_length=2048)] = ""
    experiment: Annotated[str, Field(max_length=253)] = ""
    registered_model: Annotated[str, Field(max_length=253)] = ""


class TuningStudySpec(SpecModel):
    """spec of a TuningStudy."""

    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    parameters: Annotated[list[ParameterSpec], Field(min_length=1, max_length=16)]
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    max_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 10
    parallelism: Annotated[int, Field(ge=1, le=MAX_PARALLELISM)] = 1
    max_failed_trials: Annotated[int, Field(ge=0, le=MAX_FAILED_TRIALS)] = 3
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    trial_template: dict[str, Any]
    storage: StorageSpec = Field(default_factory=StorageSpec)
    mlflow: StudyMlflowSpec = Field(default_factory=StudyMlflowSpec)

    @field_validator("parameters")
    @classmethod
    def _unique_names(cls, parameters: list[ParameterSpec]) -> list[ParameterSpec]:
        refuse_repeated([p.name for p in parameters], "parameter names must be unique; repeated")
        return parameters

    @field_validator("trial_template")
    @classmethod
    def _template_is_a_job_spec(cls, template: dict[str, Any]) -> dict[str, Any]:
        try:
            parse_spec(template)
        except SpecError as exc:
            raise ValueError(str(exc).replace("spec.", "spec.trialTemplate.")) from None
        return template

    @model_validator(mode="after")
    def _study_rules(self) -> TuningStudySpec:
        if self.parallelism > self.max_trials:
            raise ValueError("parallelism must not exceed maxTrials")
        if self.algorithm.name == "grid":
            missing = [p.name for p in self.parameters if p.type == "float" and p.step is None]
            if missing:
                names = ", ".join(missing)
                raise ValueError(f"algorithm grid needs a step on every float parameter: {names}")
            if self.grid_size() > MAX_GRID:
                raise ValueError(f"{GRID_MESSAGE}; this one has {self.grid_size()}")
        return self

    @property
    def template(self) -> TrainingJobSpec:
        return parse_spec(self.trial_template)

    def parameter(self, name: str) -> ParameterSpec:
        return next(p for p in self.parameters if p.name == name)

    def grid_size(self) -> int:
        size = 1
        for p in self.parameters:
            size *= p.grid_size()
        return size

    @property
    def effective_max_trials(self) -> int:
        """maxTrials, or fewer when an exhaustive grid has fewer points."""
        if self.algorithm.name == "grid":
            return min(self.max_trials, self.grid_size())
        return self.max_trials


def parse_study_spec(raw: dict[str, Any] | None) -> TuningStudySpec:
    """Validate a TuningStudy's spec; raise StudySpecError naming each bad field."""
    try:
        return TuningStudySpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if tuple(err["loc"]) == ("trialTemplate",) and msg.startswith("spec.trialTemplate."):
                problems.append(msg)  # already names the template's fields
            else:
                problems.append(f"{field_path(tuple(err['loc']))}: {msg}")
        raise StudySpecError("; ".join(dict.fromkeys(problems))) from None


def check_study_name(name: str) -> None:
    """Trial jobs are named `<study>-t<N>` and must themselves be valid job names."""
    check_name(name, MAX_STUDY_NAME, "it prefixes the trial job names", StudySpecError)
