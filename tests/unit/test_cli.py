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
