"""This run as trial N of an existing Optuna study (a TuningStudy's trial TrainingJob).

The operator asks for the trial and tells its result; the run in between reports the
objective after every evaluated epoch, stops when the study's pruner says so, and leaves its
outcome in the trial's user attributes. It never sets the trial's state. Only rank 0 talks to
the storage; the Trainer broadcasts its pruning decision to the other ranks.

The database may restart mid-trial: the storage pings connections before use
(pool_pre_ping) and every call is retried with backoff for about two minutes.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dmlt_contract import (
    ATTR_EPOCHS,
    ATTR_MODEL_URI,
    ATTR_OUTCOME,
    ATTR_RUN_ID,
    ATTR_VALUE,
    STORAGE_ENV,
    build_pruner,
)

from dmlt_trainer.config import HPOConfig, RunConfig, redact_url
from dmlt_trainer.errors import ConfigError

if TYPE_CHECKING:
    from dmlt_trainer.train import FitResult

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_DEADLINE_S = 120.0
# Server-side refusals that no wait will fix: fail now instead of retrying for two minutes.
_PERMANENT = ("authentication failed", "does not exist", "no pg_hba.conf entry", "permission denied")


def storage_url(cfg: RunConfig, environ: dict[str, str] | None = None) -> str:
    """--storage, else env DMLT_OPTUNA_STORAGE (the operator fills it from a Secret)."""
    env = os.environ if environ is None else environ
    url = cfg.hpo.storage or env.get(STORAGE_ENV)
    if not url:
        raise ConfigError(f"a trial run needs the study's storage: --storage URL or env {STORAGE_ENV}")
    return url


def objective_value(metrics: dict[str, float], objective: str) -> float:
    """The objective's value in one epoch's metrics, or a ConfigError naming what there is."""
    if objective not in metrics:
        available = ", ".join(sorted(k for k in metrics if k != "epoch"))
        raise ConfigError(f"objective metric {objective!r} was not logged this epoch; available: {available}")
    return float(metrics[objective])


def best_value(history: list[dict[str, float]], objective: str, direction: str) -> float | None:
    """The best finite objective value over the epochs run (max or min by direction)."""
    values = [float(h[objective]) for h in history if objective in h and math.isfinite(float(h[objective]))]
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (the database restarting), not a bad request."""
    import optuna
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Optuna wraps SQLAlchemy's errors raised inside its sessions
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return not any(text in str(exc).lower() for text in _PERMANENT)
    return False


def with_retries(
    call: Callable[[], T],
    what: str,
    deadline_s: float = RETRY_DEADLINE_S,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """call(), retried with exponential backoff (0.5 s doubling to 8 s, jittered) on transient
    storage errors until deadline_s has passed; then the last error is raised."""
    give_up = clock() + deadline_s
    delay = 0.5
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or clock() >= give_up:
                raise
            wait = min(delay, max(0.0, give_up - clock())) * random.uniform(0.8, 1.2)
            log.warning(
                "optuna storage unavailable during %s (attempt %d: %s); retrying in %.1f s",
                what,
                attempt,
                str(exc.__cause__ or exc).splitlines()[0],
                wait,
            )
            sleep(wait)
            delay = min(delay * 2, 8.0)
            attempt += 1


# libpq: give up on a connect after 10 s, notice a silently vanished server within ~1 min (TCP
# keepalives) instead of waiting on a dead socket; the retries do the rest.
PG_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def open_storage(url: str):
    """RDBStorage whose pooled connections are pinged before use (they die with a DB restart)."""
    import optuna

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = dict(PG_CONNECT_ARGS)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ModuleNotFoundError as exc:  # e.g. psycopg2 for postgresql:// URLs
        raise ConfigError(
            f"optuna storage {redact_url(url)} needs the Python module {exc.name!r}; "
            "for PostgreSQL install psycopg2-binary"
        ) from None


class TrialReporter:
    """The epoch callback and final report of one trial run. On ranks other than 0 it holds no
    trial and is never called (the Trainer asks rank 0's only)."""

    def __init__(self, cfg: RunConfig, trial=None) -> None:
        self.objective = cfg.hpo.objective
        self.direction = cfg.hpo.direction
        self.number = cfg.hpo.trial_number
        self.trial = trial

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Report the objective at step `epoch`, then ask the pruner. A step reported before (a
        gang restart resumed from a checkpoint) is ignored by Optuna with a warning."""
        if self.trial is None:
            raise RuntimeError("only rank 0 reports to the study")
        value = objective_value(metrics, self.objective)
        if not math.isfinite(value):
            log.warning(
                "trial %s: %s is %s at epoch %d; not reported", self.number, self.objective, value, epoch
            )
            return False
        with_retries(lambda: self.trial.report(value, epoch), f"report of epoch {epoch}")
        return bool(with_retries(self.trial.should_prune, f"pruning decision at epoch {epoch}"))

    def outcome_attrs(self, result: FitResult) -> dict[str, Any]:
        return {
            ATTR_VALUE: best_value(result.history, self.objective, self.direction),
            ATTR_EPOCHS: result.epochs_run,
            ATTR_RUN_ID: result.mlflow_run_id,
            ATTR_MODEL_URI: result.model_uri,
            ATTR_OUTCOME: result.status,  # last: once it is there, so is everything else
        }

    def finish(self, result: FitResult) -> dict[str, Any]:
        """Write the outcome into the trial's user attrs (not its state: the operator tells)."""
        if self.trial is None:
            raise RuntimeError("only rank 0 reports to the study")
        attrs = self.outcome_attrs(result)
        for key, value in attrs.items():
            with_retries(lambda k=key, v=value: self.trial.set_user_attr(k, v), f"setting {key}")
        return attrs


def make_pruner(hpo: HPOConfig, epochs: int):
    """The study's pruner from the hpo section; epochs: how many a trial runs at most."""
    return build_pruner(hpo.pruner_settings, epochs)


def attach_trial(cfg: RunConfig, is_main: bool, environ: dict[str, str] | None = None) -> TrialReporter:
    """Rank 0: load the study and trial cfg.hpo.trial_number from its storage and check the
    trial is RUNNING and the direction matches. Other ranks: a reporter without a trial."""
    if not is_main:
        return TrialReporter(cfg)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg, environ)
    name, number = cfg.hpo.study_name, cfg.hpo.trial_number

    def load():
        storage = open_storage(url)
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            raise ConfigError(f"study {name!r} does not exist in {redact_url(url)}") from None
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        except KeyError:
            raise ConfigError(f"study {name!r} has no trial {number}") from None
        frozen = storage.get_trial(trial_id)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            raise ConfigError(
                f"trial {number} of study {name!r} is {frozen.state.name}, not RUNNING: it is over"
            )
        # The sampler is never asked here; a random one keeps Trial() from building TPE state.
        study = optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=make_pruner(cfg.hpo, cfg.train.epochs),
        )
        return study, optuna.trial.Trial(study, trial_id)

    study, trial = with_retries(load, f"loading trial {number} of study {name!r}")
    if study.direction.name.lower() != cfg.hpo.direction:
        raise ConfigError(
            f"study {name!r} is to {study.direction.name.lower()} its objective; "
            f"this run was given --direction {cfg.hpo.direction}"
        )
    return TrialReporter(cfg, trial)
