import pytest
from dmlt_trainer.cli import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dataset", "imagenet"], "dataset must be one of"),
        (["--hidden-dims", "a,b"], "hidden_dims must be integers"),
        (["--world-size", "0", "--mode", "ddp"], "world_size must be >= 1"),
        (["--mode", "turbo"], "mode must be one of"),
        (["--config", "/nonexistent/c.yaml"], "config file not found: /nonexistent/c.yaml"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmlt-train: error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_covertype_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DMLT_COVERTYPE_PATH", raising=False)
    assert main(["--dataset", "covertype", "--no-enabled"]) == 2
    err = capsys.readouterr().err
    assert "covertype data not found at data/covertype.parquet" in err and err.count("\n") == 1


def test_ray_engine_without_ray_names_the_extra(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)
    assert (
        main(["--mode", "hp_search", "--hp-engine", "ray", "--dataset", "breast_cancer", "--no-enabled"]) == 2
    )
    err = capsys.readouterr().err
    assert "pip install '.[ray]'" in err and err.count("\n") == 1


def test_every_flag_has_a_help_text_with_its_default():
    from dmlt_trainer.cli import build_parser
    from dmlt_trainer.config import config_fields

    actions = {a.dest: a for a in build_parser()._actions}
    for name, field in config_fields().items():
        text = actions[name].help
        assert field.info.description and field.info.description in text, f"--{name} has no help text"
        default = field.info.get_default(call_default_factory=True)
        assert text.endswith(f"(default: {default!r})"), f"--{name} does not show its default"


@pytest.mark.parametrize(
    "argv, old_argv",
    [(["--no-mlflow"], ["--no-enabled"]), (["--target-column", "label"], ["--target", "label"])],
)
def test_renamed_flags_and_their_old_spelling_set_the_same_field(argv, old_argv):
    from dmlt_trainer.cli import parse_config

    base = ["--dataset", "file", "--data-path", "x.csv", "--target-column", "y"]
    assert parse_config([*base, *argv]) == parse_config([*base, *old_argv])
    assert parse_config([*base, *argv]) != parse_config(base)
