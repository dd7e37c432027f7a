"""The Optuna side of a TuningStudy against a real SQLite Optuna storage (one process, so SQLite
is fine here; the cluster uses PostgreSQL through the same code)."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from dmlt_operator.tuningstudy import trials as tr
from dmlt_operator.tuningstudy.spec import parse_study_spec
from dmlt_operator.tuningstudy.store import (
    StudyConflict,
    StudyStore,
    ask_seed,
    build_pruner,
    build_sampler,
    describe_error,
    engine_kwargs,
    max_epochs,
    redact,
)

pytestmark = pytest.mark.unit

PARAMETERS = [
    {"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "log": True},
    {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5},
    {"name": "hiddenDims", "type": "categorical", "choices": ["64-32", "128-64", "256-128"]},
    {"name": "batchSize", "type": "int", "min": 64, "max": 512, "step": 64},
]


def spec(**overrides: Any):
    raw = {"parameters": PARAMETERS, "trialTemplate": {"image": "i"}, "maxTrials": 8, "parallelism": 2}
    raw.update(overrides)
    return parse_study_spec(raw)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.fixture
def store():
    s = StudyStore()
    yield s
    s.close()


def test_open_creates_once_and_resumes(store, url):
    h1 = store.open_study(url, "ns.study", "maximize", "uid-1")
    h2 = StudyStore().open_study(url, "ns.study", "maximize", "uid-1")  # an operator restart
    assert h1.study_id == h2.study_id and h2.user_attrs["dmlt.uid"] == "uid-1"
    assert optuna.load_study(study_name="ns.study", storage=url).direction.name == "MAXIMIZE"


def test_a_study_of_another_tuning_study_is_never_resumed(store, url):
    store.open_study(url, "ns.study", "maximize", "uid-1")
    with pytest.raises(StudyConflict, match="earlier TuningStudy"):
        store.open_study(url, "ns.study", "maximize", "uid-2")
    with pytest.raises(StudyConflict, match="direction maximize"):
        store.open_study(url, "ns.study", "minimize", "uid-1")


def test_storage_is_cached_per_url_with_a_checked_pool(store, url):
    assert store.storage(url) is store.storage(url)
    assert engine_kwargs(url, 2, 10) == {"pool_pre_ping": True}
    pg = engine_kwargs("postgresql+psycopg2://u:p@h/db", 3, 7)
    assert pg["pool_pre_ping"] is True and pg["pool_size"] == 3 and pg["max_overflow"] == 3
    assert pg["connect_args"] == {"connect_timeout": 7} and pg["pool_recycle"] == 300


def test_ask_samples_the_search_space(store, url):
    s = spec()
    h = store.open_study(url, "ns.s", "maximize", "u")
    for expected in range(6):
        trial = store.ask(h, s)
        number, params = trial.number, trial.params
        assert number == expected and trial.state == tr.T_RUNNING and trial.started
        assert set(params) == {"lr", "dropout", "hiddenDims", "batchSize"}
        assert 1e-4 <= params["lr"] <= 1e-1 and 0.0 <= params["dropout"] <= 0.5
        assert params["hiddenDims"] in ("64-32", "128-64", "256-128")
        assert params["batchSize"] in range(64, 513, 64)
    listed = store.list_trials(h)
    assert [t.state for t in listed] == [tr.T_RUNNING] * 6
    assert listed[-1] == trial  # what ask returns is what the database holds


def test_the_seed_rule_is_restart_safe_and_never_repeats(tmp_path):
    s = spec(algorithm={"name": "random", "seed": 7})
    assert [ask_seed(s, n) for n in range(3)] == [7, 8, 9]
    straight = StudyStore()
    h = straight.open_study(f"sqlite:///{tmp_path / 'a.db'}", "ns.s", "maximize", "u")
    uninterrupted = [straight.ask(h, s).params for _ in range(4)]
    url = f"sqlite:///{tmp_path / 'b.db'}"
    first = StudyStore()
    h1 = first.open_study(url, "ns.s", "maximize", "u")
    before = [first.ask(h1, s).params for _ in range(2)]
    second = StudyStore()  # the operator restarted
    h2 = second.open_study(url, "ns.s", "maximize", "u")
    after = [second.ask(h2, s).params for _ in range(2)]
    assert before + after == uninterrupted
    assert len({p["lr"] for p in uninterrupted}) == 4  # a fresh seed every ask


@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_asking_in_a_row_samples_what_asking_one_by_one_does(tmp_path, algorithm):
    """`asker` (one Study for a reconcile's asks) keeps the seed rule of `ask`."""
    s = spec(algorithm={"name": algorithm, "seed": 3, "startupTrials": 2}, maxTrials=20)
    one_by_one, in_a_row = StudyStore(), StudyStore()
    h1 = one_by_one.open_study(f"sqlite:///{tmp_path / 'a.db'}", "ns.s", "maximize", "u")
    h2 = in_a_row.open_study(f"sqlite:///{tmp_path / 'b.db'}", "ns.s", "maximize", "u")
    expected = []
    for batch in (3, 2):
        expected += [one_by_one.ask(h1, s) for _ in range(batch)]
        for trial in expected[-batch:]:
            one_by_one.tell(h1, trial.number, "COMPLETE", trial.params["lr"])
    got = []
    for batch in (3, 2):
        ask = in_a_row.asker(h2, s, len(in_a_row.list_trials(h2)))
        got += [ask() for _ in range(batch)]
        for trial in got[-batch:]:
            in_a_row.tell(h2, trial.number, "COMPLETE", trial.params["lr"])
    assert [(t.number, t.params) for t in got] == [(t.number, t.params) for t in expected]
    assert len({t.params["lr"] for t in got}) == 5


def test_tell_is_exactly_once(store, url):
    h = store.open_study(url, "ns.s", "maximize", "u")
    n = store.ask(h, spec()).number
    assert store.tell(h, n, tr.T_COMPLETE, 0.91) is True
    assert store.tell(h, n, tr.T_COMPLETE, 0.99) is False
    assert store.tell(h, n, tr.T_FAIL, None) is False
    (trial,) = store.list_trials(h)
    assert (trial.state, trial.value) == (tr.T_COMPLETE, 0.91)


def test_pruned_failed_and_bad_values(store, url):
    h = store.open_study(url, "ns.s", "maximize", "u")
    study = optuna.load_study(study_name="ns.s", storage=url)
    numbers = [store.ask(h, spec()).number for _ in range(3)]
    # What the trainer does: per-epoch reports and the outcome as user attributes.
    trainer_trial = optuna.Trial(
        study, store.storage(url).get_trial_id_from_study_id_trial_number(h.study_id, 0)
    )
    for epoch, value in enumerate((0.6, 0.7)):
        trainer_trial.report(value, epoch)
    trainer_trial.set_user_attr("dmlt.outcome", "pruned")
    assert store.tell(h, numbers[0], tr.T_PRUNED, None)
    assert store.tell(h, numbers[1], tr.T_FAIL, None)
    assert store.tell(h, numbers[2], tr.T_COMPLETE, math.nan)  # not a value: failed instead
    records = {t.number: t for t in store.list_trials(h)}
    assert records[0].state == tr.T_PRUNED and records[0].value == 0.7  # Optuna keeps the last report
    assert records[0].intermediate == {0: 0.6, 1: 0.7} and records[0].outcome == "pruned"
    assert records[1].state == tr.T_FAIL and records[2].state == tr.T_FAIL


@pytest.mark.parametrize("algorithm", ["tpe", "random", "cmaes"])
def test_every_sampler_asks_after_its_startup_trials(store, url, algorithm):
    s = spec(algorithm={"name": algorithm, "startupTrials": 2}, pruner={"name": "hyperband"})
    h = store.open_study(url, "ns.s", "maximize", "u")
    for i in range(5):
        trial = store.ask(h, s)
        assert store.tell(h, trial.number, tr.T_COMPLETE, 0.5 + trial.params["dropout"] / 10 + i / 100)
    assert len(store.list_trials(h)) == 5


def test_the_grid_visits_every_point_once_across_restarts_and_failures(url):
    grid = spec(
        parameters=[
            {"name": "dropout", "type": "float", "min": 0.0, "max": 0.2, "step": 0.1},
            {"name": "batchSize", "type": "categorical", "choices": [64, 128]},
        ],
        algorithm={"name": "grid", "seed": 3},
        maxTrials=6,
    )
    seen = []
    for restart in range(3):  # a new operator process every two asks
        store = StudyStore()
        h = store.open_study(url, "ns.grid", "maximize", "u")
        for i in range(2):
            trial = store.ask(h, grid)
            seen.append((round(trial.params["dropout"], 6), trial.params["batchSize"]))
            store.tell(h, trial.number, tr.T_FAIL if (restart, i) == (0, 1) else tr.T_COMPLETE, 0.5)
        store.close()
    assert len(seen) == len(set(seen)) == grid.grid_size() == 6


def test_samplers_and_pruners_by_name():
    assert isinstance(build_sampler(spec(algorithm={"name": "random"}), 1), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler(spec(), 1), optuna.samplers.TPESampler)
    assert isinstance(build_sampler(spec(algorithm={"name": "cmaes"}), 1), optuna.samplers.CmaEsSampler)
    assert isinstance(build_pruner(spec()), optuna.pruners.MedianPruner)
    hyperband = build_pruner(spec(pruner={"name": "hyperband", "minResource": 2}))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource) == (2, 10)  # the template's epochs
    tuned = spec(
        pruner={"name": "hyperband"},
        parameters=[*PARAMETERS, {"name": "epochs", "type": "categorical", "choices": [4, "12"]}],
    )
    assert max_epochs(tuned) == 12
    assert isinstance(build_pruner(spec(pruner={"name": "none"})), optuna.pruners.NopPruner)
    percentile = build_pruner(spec(pruner={"name": "percentile", "percentile": 10, "startupTrials": 1}))
    assert isinstance(percentile, optuna.pruners.PercentilePruner)
    assert (percentile._percentile, percentile._n_startup_trials) == (10.0, 1)


def test_delete_only_our_own_study(store, url):
    store.open_study(url, "ns.s", "maximize", "uid-1")
    assert store.delete_study(url, "ns.s", "uid-2") is False
    assert store.delete_study(url, "ns.s", "uid-1") is True
    assert store.delete_study(url, "ns.s", "uid-1") is False
    assert optuna.study.get_all_study_names(url) == []


def test_errors_never_show_the_password():
    url = "postgresql+psycopg2://dmlt:s3cret@db.svc:5432/optuna"
    assert "s3cret" not in redact(f"could not connect to {url}", url)
    assert "s3cret" not in redact("password s3cret rejected", url)
    assert describe_error(ValueError(f"bad {url}\nmore"), url) == "ValueError: bad <storage url>"


def test_an_unreachable_database_raises_a_storage_error(tmp_path):
    from dmlt_operator.tuningstudy.store import STORAGE_ERRORS

    store = StudyStore(connect_timeout_s=1)
    with pytest.raises(STORAGE_ERRORS):
        store.open_study("postgresql+psycopg2://u:p@127.0.0.1:1/db", "ns.s", "maximize", "u")
    assert store._storages == {}  # nothing half-made is cached
