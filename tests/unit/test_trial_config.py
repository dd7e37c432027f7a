"""The config fields of a TuningStudy trial run: objective, direction, pruner settings, trial
number, parent run; and passwords kept out of what is logged."""

import pytest
from dmlt_trainer.cli import parse_config
from dmlt_trainer.config import EPOCH_METRICS, build_config, redact_url
from dmlt_trainer.errors import ConfigError

pytestmark = pytest.mark.unit


def test_trial_flags_map_to_typed_fields():
    cfg = parse_config(
        [
            "--study-name",
            "ns.study",
            "--trial-number",
            "3",
            "--objective",
            "val_loss",
            "--direction",
            "minimize",
            "--pruner",
            "hyperband",
            "--pruner-startup-trials",
            "5",
            "--pruner-warmup-steps",
            "0",
            "--pruner-min-resource",
            "2",
            "--pruner-reduction-factor",
            "4",
            "--parent-run-id",
            "abc123",
        ]
    )
    hpo = cfg.hpo
    assert (hpo.study_name, hpo.trial_number, hpo.objective, hpo.direction) == (
        "ns.study",
        3,
        "val_loss",
        "minimize",
    )
    assert (hpo.pruner, hpo.pruner_startup_trials, hpo.pruner_warmup_steps) == ("hyperband", 5, 0)
    assert (hpo.pruner_min_resource, hpo.pruner_reduction_factor) == (2, 4)
    assert cfg.tracking.parent_run_id == "abc123"


def test_trial_defaults_leave_every_other_run_alone():
    cfg = build_config()
    assert cfg.hpo.trial_number is None and cfg.tracking.parent_run_id is None
    assert (cfg.hpo.objective, cfg.hpo.direction) == ("val_auc", "maximize")
    # hp_search's pruning as before: median, 3 startup trials, 1 warm-up epoch
    assert (cfg.hpo.pruner, cfg.hpo.pruner_startup_trials, cfg.hpo.pruner_warmup_steps) == ("median", 3, 1)


def test_ddp_mode_may_run_a_trial():
    cfg = parse_config(["--mode", "ddp", "--study-name", "s", "--trial-number", "0"])
    assert cfg.mode == "ddp" and cfg.hpo.trial_number == 0


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--objective", "val_auroc"], "objective 'val_auroc' is not a metric the trainer logs per epoch"),
        (["--direction", "up"], "direction must be one of maximize, minimize; got 'up'"),
        (["--pruner", "asha"], "pruner must be one of median, percentile, hyperband, none"),
        (["--pruner-percentile", "100"], "pruner_percentile must be in \\(0, 100\\); got 100.0"),
        (["--pruner-percentile", "0"], "pruner_percentile must be in \\(0, 100\\); got 0.0"),
        (["--pruner-startup-trials", "-1"], "pruner_startup_trials must be >= 0"),
        (["--pruner-warmup-steps", "-2"], "pruner_warmup_steps must be >= 0"),
        (["--pruner-min-resource", "0"], "pruner_min_resource must be > 0"),
        (["--pruner-reduction-factor", "1"], "pruner_reduction_factor must be >= 2"),
        (["--trial-number", "two", "--study-name", "s"], "trial_number: cannot read 'two' as int"),
        (["--trial-number", "-1", "--study-name", "s"], "trial_number must be >= 0"),
        (["--trial-number", "1"], "trial_number needs --study-name"),
        (["--mode", "hp_search", "--study-name", "s", "--trial-number", "1"], "modes single and ddp"),
        (["--hp-engine", "ray", "--objective", "val_loss", "--direction", "minimize"], "ray engine"),
    ],
)
def test_bad_trial_input_is_a_specific_error(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_config(argv)


def test_unknown_objective_error_lists_the_available_metrics():
    with pytest.raises(ConfigError) as info:
        parse_config(["--objective", "accuracy"])
    message = str(info.value)
    assert "'accuracy'" in message
    assert all(name in message for name in EPOCH_METRICS)


@pytest.mark.parametrize("name", EPOCH_METRICS)
def test_every_epoch_metric_is_a_valid_objective(name):
    assert build_config({}, {"objective": name}).hpo.objective == name


def test_passwords_in_urls_are_masked_in_logged_params_only():
    url = "postgresql+psycopg2://optuna:s3cret@db.dmlt.svc:5432/optuna"
    cfg = build_config({}, {"storage": url, "tracking_uri": "http://u:pw@mlflow:5000"})
    params = cfg.flat_params()
    assert params["hpo.storage"] == "postgresql+psycopg2://optuna:***@db.dmlt.svc:5432/optuna"
    assert params["tracking.tracking_uri"] == "http://u:***@mlflow:5000"
    assert "s3cret" not in str(cfg.redacted_dict())
    assert cfg.hpo.storage == url and cfg.to_dict()["hpo"]["storage"] == url  # the run itself keeps it


@pytest.mark.parametrize(
    "url",
    ["sqlite:///optuna.db", "postgresql://host/db", "postgresql://user@host/db", "http://mlflow:5000/a@b"],
)
def test_urls_without_a_password_are_unchanged(url):
    assert redact_url(url) == url
