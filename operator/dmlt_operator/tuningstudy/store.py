"""The one module that touches Optuna: the study in its relational database.

- One `RDBStorage` per database URL for the operator's lifetime, with a small connection pool
  and `pool_pre_ping`, so a PostgreSQL restart costs one failed reconcile, not a dead pool,
  and many studies do not exhaust the server's connections.
- Studies are created idempotently (`load_if_exists`) under `<namespace>.<name>`, and marked
  with the TuningStudy's uid: a study of that name left over from an earlier, deleted
  TuningStudy is never resumed by accident.
- `ask` builds a fresh sampler seeded `algorithm.seed + trials so far`: restart-safe (an
  operator that restarts continues the sequence, it does not repeat it) and never the same
  seed twice. The grid is the exception: Optuna's GridSampler derives its visiting order from
  the seed, so it keeps `algorithm.seed`. `asker` asks several in a row the same way through
  one Optuna Study on the database itself: a Study that Optuna makes wraps the storage in a
  cache of its own, which reads every trial on its first ask and every unfinished one on each
  ask after (O(trials) per ask; 0.31 s at 300 trials here, 0.02 s without).
- `tell` finishes a trial only while it is RUNNING in the database; the storage re-checks that
  under a row lock, so a result is told exactly once even if two tells race.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dmlt_contract as contract
import optuna
import sqlalchemy.exc
from dmlt_operator.tuningstudy.spec import TuningStudySpec
from dmlt_operator.tuningstudy.trials import T_COMPLETE, T_FAIL, T_PRUNED, TrialRecord
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

# Optuna study user attributes the operator keeps.
ATTR_PARENT_RUN = "dmlt.parent_run_id"
"""The study's MLflow parent run."""
ATTR_UID = "dmlt.uid"
"""metadata.uid of the TuningStudy the Optuna study belongs to."""


STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.SQLAlchemyError,
    StorageInternalError,
    OSError,
)
"""What a database that is down, restarting or unreachable raises: retry later."""


class StudyConflict(RuntimeError):
    """The database holds a study of that name that is not this TuningStudy's (no retry helps)."""


@dataclass(frozen=True, slots=True)
class StudyHandle:
    """An opened Optuna study: enough to read and write it without looking it up again."""

    url: str
    name: str
    study_id: int
    direction: str
    user_attrs: dict[str, Any] = field(default_factory=dict)


def redact(text: str, url: str) -> str:
    """`text` with the URL's password (and the URL itself) blanked out."""
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL: hide it whole
        password = None
    if url:
        text = text.replace(url, "<storage url>")
    if password:
        text = text.replace(str(password), "***")
    return text


def describe_error(exc: BaseException, url: str) -> str:
    """One line about a storage failure, without credentials."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return redact(f"{type(exc).__name__}: {first}", url)[:512]


def engine_kwargs(url: str, pool_size: int, connect_timeout_s: int) -> dict[str, Any]:
    """SQLAlchemy engine settings: a checked, bounded pool for servers; defaults for SQLite."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        return kwargs
    kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=300)
    if url.startswith(("postgresql", "mysql")):
        kwargs["connect_args"] = {"connect_timeout": connect_timeout_s}
    return kwargs


def distributions(spec: TuningStudySpec) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions, keyed by the trainer field names."""
    out: dict[str, BaseDistribution] = {}
    for p in spec.parameters:
        if p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices or []))
        elif p.type == "int":
            assert p.min is not None and p.max is not None
            out[p.name] = IntDistribution(int(p.min), int(p.max), log=p.log, step=int(p.step or 1))
        else:
            assert p.min is not None and p.max is not None
            out[p.name] = FloatDistribution(p.min, p.max, log=p.log, step=p.step)
    return out


def build_sampler(spec: TuningStudySpec, seed: int) -> optuna.samplers.BaseSampler:
    algo = spec.algorithm
    startup = {} if algo.startup_trials is None else {"n_startup_trials": algo.startup_trials}
    if algo.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algo.name == "grid":
        space = {p.name: p.grid_values() for p in spec.parameters}
        return optuna.samplers.GridSampler(space, seed=seed)
    if algo.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **startup)
    # Constant liar: running trials count as bad ones, so parallel asks spread out.
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=spec.parallelism > 1, **startup
    )


def max_epochs(spec: TuningStudySpec) -> int:
    """The most epochs a trial may run: the template's, or the top of a tuned epochs range."""
    tuned = next((p for p in spec.parameters if p.name == "epochs"), None)
    if tuned is None:
        return spec.template.trainer.epochs
    if tuned.type == "categorical":
        return max(int(c) for c in tuned.choices or [1])
    return int(tuned.max or 1)


def build_pruner(spec: TuningStudySpec) -> optuna.pruners.BasePruner:
    """The pruner the trainers use (the contract builds both); the operator's study needs it
    for Hyperband's brackets, which TPE samples within."""
    settings = contract.PrunerSettings(**spec.pruner.model_dump())
    return contract.build_pruner(settings, max_epochs(spec))


def ask_seed(spec: TuningStudySpec, trials_so_far: int) -> int:
    """The seed rule (see the module docstring)."""
    if spec.algorithm.name == "grid":
        return spec.algorithm.seed
    return (spec.algorithm.seed + trials_so_far) % (2**32)


def to_record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    value = trial.values[0] if trial.values else None
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        params=dict(trial.params),
        value=float(value) if value is not None else None,
        user_attrs=dict(trial.user_attrs),
        intermediate={int(k): float(v) for k, v in trial.intermediate_values.items()},
        started=trial.datetime_start.isoformat() if trial.datetime_start else None,
    )


class StudyStore:
    """Optuna studies in relational databases, one cached storage per URL."""

    def __init__(self, pool_size: int = 2, connect_timeout_s: int = 10) -> None:
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self._storages: dict[str, optuna.storages.RDBStorage] = {}
        self._lock = threading.Lock()

    def storage(self, url: str) -> optuna.storages.RDBStorage:
        """The cached storage of `url`; made (tables created) on first use."""
        with self._lock:
            cached = self._storages.get(url)
        if cached is not None:
            return cached
        # Outside the lock: connecting may take connect_timeout_s and must not stall other
        # studies. Two first uses at once both connect; one storage is kept.
        made = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs(url, self.pool_size, self.connect_timeout_s)
        )
        with self._lock:
            return self._storages.setdefault(url, made)

    def close(self) -> None:
        with self._lock:
            storages, self._storages = list(self._storages.values()), {}
        for storage in storages:
            storage.engine.dispose()

    # ---- studies

    def open_study(self, url: str, name: str, direction: str, owner_uid: str) -> StudyHandle:
        """Create the study or load it; StudyConflict when it belongs to another TuningStudy."""
        storage = self.storage(url)
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, load_if_exists=True
        )
        study_id = storage.get_study_id_from_name(name)
        attrs = storage.get_study_user_attrs(study_id)
        owner = attrs.get(ATTR_UID)
        if owner is None and owner_uid:
            storage.set_study_user_attr(study_id, ATTR_UID, owner_uid)
            attrs[ATTR_UID] = owner_uid
        elif owner_uid and owner != owner_uid:
            raise StudyConflict(
                f"the database already holds an Optuna study {name!r} of an earlier TuningStudy "
                f"(uid {owner}); delete it (optuna delete-study --study-name {name}) or use "
                "another name"
            )
        actual = study.direction.name.lower()
        if actual != direction:
            raise StudyConflict(f"the Optuna study {name!r} exists with direction {actual}, not {direction}")
        return StudyHandle(url, name, study_id, direction, attrs)

    def set_user_attr(self, handle: StudyHandle, key: str, value: Any) -> StudyHandle:
        self.storage(handle.url).set_study_user_attr(handle.study_id, key, value)
        attrs = {**handle.user_attrs, key: value}
        return StudyHandle(handle.url, handle.name, handle.study_id, handle.direction, attrs)

    def delete_study(self, url: str, name: str, owner_uid: str) -> bool:
        """Delete the study if it is this TuningStudy's; False when there is none (or not ours)."""
        storage = self.storage(url)
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            return False
        owner = storage.get_study_user_attrs(study_id).get(ATTR_UID)
        if owner_uid and owner not in (None, owner_uid):
            return False
        storage.delete_study(study_id)
        return True

    # ---- trials

    def list_trials(self, handle: StudyHandle) -> list[TrialRecord]:
        """Every trial, read from the database itself (no cache: trainers write there too)."""
        trials = self.storage(handle.url).get_all_trials(handle.study_id, deepcopy=False)
        return [to_record(t) for t in trials]

    def _study(self, handle: StudyHandle, sampler: optuna.samplers.BaseSampler, pruner: Any = None) -> Any:
        storage = self.storage(handle.url)
        return optuna.load_study(study_name=handle.name, storage=storage, sampler=sampler, pruner=pruner)

    def ask(self, handle: StudyHandle, spec: TuningStudySpec) -> TrialRecord:
        """A new RUNNING trial with sampled values, as the database now holds it."""
        storage = self.storage(handle.url)
        seed = ask_seed(spec, storage.get_n_trials(handle.study_id))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study = self._study(handle, build_sampler(spec, seed), build_pruner(spec))
            trial = study.ask(fixed_distributions=distributions(spec))
        return to_record(storage.get_trial(trial._trial_id))

    def asker(
        self, handle: StudyHandle, spec: TuningStudySpec, trials_so_far: int
    ) -> Callable[[], TrialRecord]:
        """`ask`, for several trials in a row: each call asks one more, seeded as `ask` would
        with `trials_so_far` trials in the study before the first (the caller has just listed
        them), through one Study on the database itself (see the module's docstring)."""
        storage = self.storage(handle.url)
        pruner = build_pruner(spec)
        study: Any = None
        asked = 0

        def ask_next() -> TrialRecord:
            nonlocal study, asked
            sampler = build_sampler(spec, ask_seed(spec, trials_so_far + asked))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                if study is None:
                    study = self._study(handle, sampler, pruner)
                    # Optuna wraps the storage in a per-Study cache that re-reads every
                    # unfinished trial on each ask (to look for WAITING ones, which the
                    # operator never enqueues): the database itself answers that in one
                    # filtered query. Samplers that need history read it all the same.
                    study._storage = storage
                else:
                    study.sampler = sampler
                trial = study.ask(fixed_distributions=distributions(spec))
            asked += 1
            return to_record(storage.get_trial(trial._trial_id))

        return ask_next

    def tell(self, handle: StudyHandle, number: int, state: str, value: float | None) -> bool:
        """Finish trial `number` once: False when it is not RUNNING (any more)."""
        storage = self.storage(handle.url)
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(handle.study_id, number))
        if trial.state != TrialState.RUNNING:
            return False
        if state == T_COMPLETE and (value is None or not math.isfinite(value)):
            state, value = T_FAIL, None
        target = {T_COMPLETE: TrialState.COMPLETE, T_PRUNED: TrialState.PRUNED, T_FAIL: TrialState.FAIL}
        target_state = target[state]
        # A plain sampler: samplers' after_trial hooks are for Study.optimize (GridSampler's
        # calls study.stop(), which ask-and-tell must not).
        study = self._study(handle, optuna.samplers.RandomSampler())
        try:
            study.tell(
                number,
                values=value if target_state == TrialState.COMPLETE else None,
                state=target_state,
                skip_if_finished=True,
            )
        except UpdateFinishedTrialError:
            return False
        return True
