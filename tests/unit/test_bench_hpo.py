import math

import pytest

from benchmarks.hpo import analysis as an
from benchmarks.hpo import summary as sm
from benchmarks.hpo.report import fmt, fmt_spread

pytestmark = pytest.mark.unit

INF = math.inf


def _trials(*pairs):
    return [{"value": v, "t_end": t} for v, t in pairs]


def test_time_to_target_is_the_first_finish_at_target_in_time_order():
    # Parallel trials finish out of number order: the earliest finish at target counts.
    trials = _trials((0.95, 9.0), (0.97, 7.0), (0.98, 5.0))
    assert an.time_to_target(trials, 0.97) == 5.0
    assert an.time_to_target(trials, 0.95) == 5.0


def test_time_to_target_never_reached_is_infinite_not_the_budget():
    trials = _trials((0.95, 1.0), (None, 2.0), (0.96, 3.0))
    assert an.time_to_target(trials, 0.97) == INF


def test_pruned_trials_never_count_toward_the_target():
    assert an.time_to_target(_trials((None, 1.0), (0.99, 4.0)), 0.97) == 4.0


def test_expected_time_to_target_over_random_grid_orders():
    import itertools

    values, seconds = [0.9, 0.99, 0.8, 0.99], [1.0, 2.0, 3.0, 4.0]
    by_order = [
        an.time_to_target(an.sequential_trials([values[i] for i in p], [seconds[i] for i in p]), 0.98)
        for p in itertools.permutations(range(4))
    ]
    exact = sum(by_order) / len(by_order)
    assert an.expected_time_to_target(values, seconds, 0.98) == pytest.approx(exact)
    assert an.expected_time_to_target(values, seconds, 0.995) == INF


def test_sequential_trials_accumulate_wall_time():
    trials = an.sequential_trials([0.9, None, 0.95], [2.0, 1.0, 3.0])
    assert [t["t_end"] for t in trials] == [2.0, 3.0, 6.0]
    assert an.time_to_target(trials, 0.95) == 6.0


def test_best_so_far_skips_pruned_and_is_nan_before_the_first_value():
    curve = an.best_so_far([None, 0.9, None, 0.85, 0.95])
    assert math.isnan(curve[0])
    assert curve[1:] == [0.9, 0.9, 0.9, 0.95]


def test_best_at_times_steps_at_each_finish():
    trials = _trials((0.9, 1.0), (0.95, 3.0), (None, 4.0))
    got = an.best_at_times(trials, [0.5, 1.0, 2.0, 3.0, 10.0])
    assert math.isnan(got[0])
    assert got[1:] == [0.9, 0.9, 0.95, 0.95]


def test_spread_median_quartiles_and_range():
    s = an.spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)


def test_spread_keeps_censored_values_last_and_drops_nan():
    s = an.spread([2.0, INF, 1.0, math.nan, INF, INF])
    assert s["n"] == 5
    assert s["median"] == INF  # most seeds never reached: the median is not reached
    assert s["min"] == 1.0
    assert an.spread([1.0, 2.0, INF])["median"] == 2.0


def test_band_is_per_position_across_seeds():
    b = an.band([[1.0, 3.0], [2.0, math.nan], [3.0, 5.0]])
    assert b["median"] == [2.0, 4.0]
    assert b["min"] == [1.0, 3.0] and b["max"] == [3.0, 5.0]
    with pytest.raises(ValueError):
        an.band([[1.0], [1.0, 2.0]])


def test_ratio_with_censored_times():
    assert an.ratio(100.0, 10.0) == 10.0
    assert an.ratio(INF, 10.0) == INF  # only the grid never got there
    assert an.ratio(100.0, INF) == 0.0  # only the tuned search never got there
    assert math.isnan(an.ratio(INF, INF))


def test_epochs_saved_and_points():
    assert an.epochs_saved(45, 75) == pytest.approx(0.4)
    assert an.points(0.0015) == pytest.approx(0.15)


def test_config_key_is_canonical():
    a = {"lr": 0.001, "batch_size": 512, "hidden_dims": "128-64"}
    b = {"hidden_dims": "128-64", "lr": 1e-3 * (1 + 1e-12), "batch_size": 512}
    assert an.config_key(a) == an.config_key(b) == "batch_size=512,hidden_dims=128-64,lr=0.001"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("median", {"kind": "median", "startup": 3, "warmup": 1}),
        ("median:startup=1:warmup=0", {"kind": "median", "startup": 1, "warmup": 0}),
        ("percentile:25:warmup=0", {"kind": "percentile", "percentile": 25.0, "startup": 3, "warmup": 0}),
        ("none", {"kind": "none"}),
    ],
)
def test_parse_pruner_spec(spec, expected):
    assert an.parse_pruner_spec(spec) == expected


@pytest.mark.parametrize("spec", ["hyperband", "percentile", "percentile:150", "median:patience=2", "none:1"])
def test_parse_pruner_spec_rejects(spec):
    with pytest.raises(ValueError):
        an.parse_pruner_spec(spec)


def _dataset():
    """A tiny dataset record: a grid of 4, two seeds, values chosen by hand."""
    grid = [
        {"params": {"x": i}, "value": v, "seconds": 10.0, "epochs_run": 5, "test_auc": v}
        for i, v in enumerate([0.90, 0.95, 0.97, 0.99])
    ]

    def run(seed, values, t_ends, epochs=10):
        trials = [
            {"value": v, "t_end": t, "status": "pruned" if v is None else "completed", "test_auc": v}
            for v, t in zip(values, t_ends, strict=True)
        ]
        return {"seed": seed, "trials": trials, "wall_s": max(t_ends), "epochs_run": epochs}

    runs = {
        sm.TPE: [run(0, [0.95, 0.99], [10.0, 20.0], 10), run(1, [0.97, 0.98], [10.0, 20.0], 10)],
        sm.TPE_PRUNED: [run(0, [0.95, None], [10.0, 12.0], 6), run(1, [0.97, 0.985], [10.0, 20.0], 8)],
        sm.TPE_PARALLEL: [run(0, [0.99, None], [2.0, 1.0], 6), run(1, [0.96, 0.97], [2.0, 4.0], 8)],
    }
    return {"grid": grid, "default": {"value": 0.93, "test_auc": 0.92}, "runs": runs}


def test_time_to_target_against_the_grid_in_each_seeds_order():
    ds = _dataset()
    grid = sm.grid_runs(ds["grid"], {0: [3, 0, 1, 2], 1: [0, 1, 2, 3]})
    ttt = sm.time_to_target(ds, grid, gap=0.001)  # best known 0.99 -> target 0.989
    assert ttt["grid_s"] == {0: 10.0, 1: 40.0}  # first config in order 0 is the 0.99 one
    assert ttt["tuned_s"] == {0: 2.0, 1: INF}
    assert ttt["speedup_per_seed"] == [5.0, 0.0]
    assert ttt["grid_configs_reaching"] == 1
    assert ttt["grid_exhaustive_s"] == 40.0
    assert ttt["seeds_at_10x"] == 0
    assert ttt["grid_expected_s"] == pytest.approx(30.0 / 2 + 10.0)  # 3 misses, 1 hit


def test_search_time_is_the_whole_grid_against_reaching_its_answer():
    ds = _dataset()
    ds["grid"][3]["value"] = 0.97  # the grid's answer is now 0.97 (two configs), below TPE's 0.99
    answer = sm.time_to_grid_answer(ds, gap=0.001)
    assert (answer["grid_best"], answer["grid_exhaustive_s"]) == (0.97, 40.0)
    assert answer["target"] == pytest.approx(0.969)
    assert answer["tuned_s"] == {0: 2.0, 1: 4.0}  # seed 1 reaches 0.97 with its second trial
    assert answer["speedup_per_seed"] == [20.0, 10.0]
    assert (answer["seeds_at_10x"], answer["tuned_reached"]) == (2, 2)


def test_pruning_and_tuned_vs_default_per_seed():
    ds = _dataset()
    p = sm.pruning(ds, sm.TPE_PRUNED, epochs=5)
    assert [r["saved"] for r in p["rows"]] == pytest.approx([0.4, 0.2])
    assert [r["auc_cost_points"] for r in p["rows"]] == pytest.approx([4.0, -0.5])
    t = sm.tuned_vs_default(ds)
    assert [r["val_auc"] for r in t["rows"]] == [0.99, 0.98]
    assert t["val_gain_points"]["median"] == pytest.approx(5.5)


def test_report_formats_censored_values():
    assert fmt(INF) == "not reached" and fmt("inf", inf="∞") == "∞" and fmt(None) == "–"
    assert fmt(0.4, ".0f", 100, "%") == "40%"
    s = {"median": 2.0, "q1": 1.5, "q3": 3.0, "min": 1.0, "max": "inf"}
    assert fmt_spread(s, ".1f", unit=" s") == "2.0 s [1.5 s–3.0 s] (1.0 s–not reached)"
