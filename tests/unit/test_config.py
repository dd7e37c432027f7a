import pytest
from dmlt_trainer.cli import parse_config
from dmlt_trainer.config import build_config, parse_hidden_dims, replace
from dmlt_trainer.errors import ConfigError

pytestmark = pytest.mark.unit


def test_seed_flags_map_to_typed_fields():
    cfg = parse_config(
        [
            "--mode",
            "ddp",
            "--run-name",
            "x",
            "--dataset",
            "synthetic_large",
            "--epochs",
            "7",
            "--world-size",
            "4",
            "--hp-trials",
            "9",
        ]
    )
    assert (cfg.mode, cfg.run_name, cfg.data.dataset) == ("ddp", "x", "synthetic_large")
    assert cfg.train.epochs == 7 and cfg.dist.world_size == 4 and cfg.hpo.hp_trials == 9


def test_defaults_match_the_spec():
    cfg = build_config()
    assert cfg.model.hidden_dims == [512, 256, 128]
    assert cfg.mode == "single" and cfg.hpo.sampler == "tpe" and cfg.hpo.pruner == "median"


def test_yaml_file_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 64\nmodel:\n  hidden_dims: [32, 16]\nlr: 0.01\n")
    cfg = parse_config(["--config", str(path), "--epochs", "5", "--set", "dropout=0.1"])
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 64
    assert cfg.model.hidden_dims == [32, 16] and cfg.optim.lr == 0.01 and cfg.model.dropout == 0.1


def test_hidden_dims_forms():
    assert parse_hidden_dims("512,256,128") == [512, 256, 128]
    assert parse_hidden_dims("64-32") == [64, 32]
    assert parse_hidden_dims([8]) == [8]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dataset", "mnist"], "dataset must be one of"),
        (["--hidden-dims", "512,x"], "hidden_dims must be integers"),
        (["--hidden-dims", "0,4"], "positive"),
        (["--world-size", "0"], "world_size must be >= 1"),
        (["--mode", "train"], "mode must be one of"),
        (["--epochs", "two"], "epochs: cannot read 'two' as int"),
        (["--set", "nonsense=1"], "unknown config field 'nonsense'"),
        (["--dataset", "file"], "needs --data-path"),
    ],
)
def test_bad_input_is_a_specific_error(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_config(argv)


def test_replace_revalidates():
    cfg = build_config()
    assert replace(cfg, lr=0.5).optim.lr == 0.5
    with pytest.raises(ConfigError):
        replace(cfg, dropout=1.5)


def test_flat_params_cover_every_section():
    params = build_config().flat_params()
    assert params["model.hidden_dims"] == [512, 256, 128]
    assert {"optim.lr", "train.epochs", "dist.backend", "data.dataset", "mode"} <= params.keys()


def test_none_words_lists_and_numbers_from_text():
    cfg = build_config(
        {}, {"threads": "none", "world_sizes": "1,4", "datasets": "synthetic,file", "run_name": 7}
    )
    assert cfg.train.threads is None and cfg.benchmark.world_sizes == [1, 4]
    assert cfg.benchmark.datasets == ["synthetic", "file"] and cfg.run_name == "7"
    assert build_config({}, {"register_model": "none"}).tracking.register_model == "none"  # a name


@pytest.mark.parametrize(
    "values, message",
    [
        ({"val_fraction": "0.5"}, "val_fraction must be in (0, 0.5); got 0.5"),
        ({"dropout": 1}, "dropout must be in [0, 1); got 1.0"),
        ({"world_sizes": "1,0"}, "world_sizes must be >= 1; got 0"),
        ({"datasets": "mnist"}, "datasets must be one of synthetic, synthetic_large, breast_cancer"),
        ({"epochs": 2.5}, "epochs: cannot read 2.5 as int"),
        ({"run_name": "a/b"}, "run_name must be non-empty without '/'; got 'a/b'"),
        ({"model_sizes": "64-x"}, "hidden_dims must be integers"),
    ],
)
def test_validation_errors_are_one_line_naming_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        build_config({}, values)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_yaml_sections_refuse_fields_of_other_sections():
    with pytest.raises(ConfigError, match="unknown config field data.lr"):
        build_config({"data": {"lr": 0.1}})
    assert build_config({"optim": {"lr": 0.1}}).optim.lr == 0.1


def test_a_section_built_directly_fails_with_a_config_error():
    from dmlt_trainer.config import DataConfig

    with pytest.raises(ConfigError, match="dataset 'file' needs --data-path"):
        DataConfig(dataset="file")
