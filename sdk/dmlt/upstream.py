"""Everything the client takes from the operator and the trainer, imported here and only here.

The client validates specs with the operator's own pydantic models (so a bad spec is refused
before it reaches the apiserver, with the operator's messages), builds trial jobs and runs local
studies with the operator's own builders and Optuna store, and reads trainer flags with the
trainer's own parser. When those modules move, this file is the one to change.

Heavy modules (Optuna, SQLAlchemy) are imported inside the functions that need them, so
`import dmlt` and `dmlt --help` stay fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from dmlt_contract import (
    ATTR_MODEL_URI,
    ATTR_RUN_ID,
    DEFAULT_STORAGE,
    EVENT_EPOCH,
    EVENT_FINISHED,
    STORAGE_ENV,
    STUDY_ALGORITHMS,
    parse_event,
)
from dmlt_operator.core.conditions import FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL
from dmlt_operator.core.objects import API_VERSION, GROUP, STUDY_KIND, STUDY_PLURAL, VERSION
from dmlt_operator.core.objects import JOB_KIND as KIND
from dmlt_operator.core.objects import JOB_PLURAL as PLURAL
from dmlt_operator.trainingjob.build import LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, trainer_args
from dmlt_operator.trainingjob.spec import (
    GPU_RESOURCE,
    SpecError,
    TrainerSpec,
    TrainingJobSpec,
    check_job_name,
    parse_spec,
)
from dmlt_operator.tuningstudy.build import (
    ANNOTATION_PARAMS,
    LABEL_STUDY,
    LABEL_TRIAL,
    StudyRef,
    build_trial_job,
    trial_job_name,
)
from dmlt_operator.tuningstudy.spec import (
    PARAMETER_KINDS,
    SecretKeyRef,
    StudySpecError,
    TuningStudySpec,
    check_study_name,
    parse_study_spec,
)
from dmlt_trainer.cli import build_parser as trainer_parser
from dmlt_trainer.cli import parse_config as trainer_parse_argv
from dmlt_trainer.config import RunConfig, build_config
from dmlt_trainer.errors import ConfigError

TRAINER_MODULE = "dmlt_trainer.cli"
"""`python -m` this module is `dmlt-train`."""

__all__ = [
    "ANNOTATION_PARAMS",
    "API_VERSION",
    "ATTR_MODEL_URI",
    "ATTR_RUN_ID",
    "ConfigError",
    "DEFAULT_STORAGE",
    "EVENT_EPOCH",
    "EVENT_FINISHED",
    "FAILED",
    "GPU_RESOURCE",
    "GROUP",
    "KIND",
    "LABEL_ATTEMPT",
    "LABEL_JOB",
    "LABEL_RANK",
    "LABEL_STUDY",
    "LABEL_TRIAL",
    "PARAMETER_KINDS",
    "PENDING",
    "PLURAL",
    "RUNNING",
    "RunConfig",
    "STORAGE_ENV",
    "STUDY_ALGORITHMS",
    "STUDY_KIND",
    "STUDY_PLURAL",
    "SUCCEEDED",
    "SecretKeyRef",
    "SpecError",
    "StudyRef",
    "StudySpecError",
    "TERMINAL",
    "TRAINER_MODULE",
    "TrainerSpec",
    "TrainingJobSpec",
    "TuningStudySpec",
    "VERSION",
    "build_trial_job",
    "check_job_name",
    "check_study_name",
    "parse_event",
    "parse_spec",
    "parse_study_spec",
    "trainer_args",
    "trainer_config",
    "trainer_flag_names",
    "trainer_parse",
    "trainer_parse_argv",
    "trainer_parser",
    "trainer_section_fields",
    "trainer_values",
    "trial_job_name",
    "local_study_store",
    "decide_local_result",
]


def _refuse(message: str) -> None:
    raise ConfigError(message)


def trainer_parse(argv: list[str]) -> RunConfig:
    """dmlt-train's flags → its RunConfig, with every mistake a ConfigError (one line, no usage
    text, nothing exits): unknown flags, missing values, bad values."""
    parser = trainer_parser()
    parser.error = _refuse  # type: ignore[method-assign]
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}")
    return trainer_parse_argv(argv)


def trainer_config(values: dict[str, Any] | None = None) -> RunConfig:
    """The trainer's RunConfig from config-file values (nested by section or flat)."""
    return build_config(values or {}, {})


def trainer_values(cfg: RunConfig) -> dict[str, Any]:
    """Every trainer setting by its field name (flat: `epochs`, `lr`, `data_path`, ...)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def trainer_section_fields(section: str) -> set[str]:
    """The field names of one section of the trainer's config (e.g. `hpo`)."""
    return set(trainer_config().to_dict()[section])


def trainer_flag_names() -> dict[str, tuple[str, bool]]:
    """Field name → (its dmlt-train flag, whether the flag is an on/off switch)."""
    out: dict[str, tuple[str, bool]] = {}
    for action in trainer_parser()._actions:
        longs = [s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")]
        if longs and action.dest not in ("help", "config", "set"):
            out[action.dest] = (longs[0], isinstance(action, argparse.BooleanOptionalAction))
    return out


def local_study_store() -> Any:
    """The operator's Optuna store (ask, tell, list trials), for studies run on this machine."""
    from dmlt_operator.tuningstudy.store import StudyStore

    return StudyStore(pool_size=1)


def decide_local_result(trial: Any, job_name: str, succeeded: bool, result: str | None, direction: str):
    """How the operator would tell a trial whose job ended: (state, value, reason)."""
    from dmlt_operator.tuningstudy.plan import decide_result
    from dmlt_operator.tuningstudy.trials import TrialJob

    job = TrialJob(
        name=job_name,
        number=trial.number,
        owner_uid=None,
        phase=SUCCEEDED if succeeded else FAILED,
        result=result,
        message="" if succeeded else "the local trainer process failed",
    )
    tell = decide_result(trial, job, direction)
    return tell.state, tell.value, tell.reason
