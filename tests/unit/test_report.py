import pytest
from dmlt_trainer.report import render_markdown, scaling_efficiency, time_to_target

pytestmark = pytest.mark.unit


def test_time_to_target_counts_training_seconds_until_first_crossing():
    assert time_to_target([0.8, 0.9, 0.95], [1.0, 2.0, 3.0], 0.9) == 3.0
    assert time_to_target([0.8, None, 0.85], [1.0, 1.0, 1.0], 0.9) is None


def _cell(world, sps, model="m"):
    return {
        "dataset": "d",
        "model": model,
        "world_size": world,
        "samples_per_sec": sps,
        "threads_per_rank": 1,
        "wall_seconds": 1.0,
        "epochs": 2,
        "best_val_auc": 0.9,
        "test_auc": 0.9,
        "test_f1": 0.8,
        "test_accuracy": 0.85,
        "val_auc_per_epoch": [0.8, 0.9],
        "train_seconds_per_epoch": [1.0, 1.0],
    }


def test_scaling_efficiency():
    eff = scaling_efficiency([_cell(1, 100.0), _cell(2, 150.0)])
    assert eff[("d", "m", 2)] == pytest.approx(0.75)


def test_markdown_has_both_tables():
    payload = {
        "run_name": "r",
        "created": "now",
        "cells": [_cell(1, 100.0), _cell(2, 150.0)],
        "machine": {"cpu": "cpu", "cores": 2, "python": "3", "torch": "2", "cuda": False},
    }
    text = render_markdown(payload, ["p.png"])
    assert "| d | m | 2 | 1 | 150 | 0.75 |" in text
    assert "time to target" in text and "![p.png](p.png)" in text
