"""Run artifacts: resolved config, ROC/PR curves, confusion matrix, history."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    from dmlt_trainer.config import RunConfig
    from dmlt_trainer.tracking import NullTracker
    from dmlt_trainer.train import FitResult


def plot_curves(y_true: np.ndarray, prob: np.ndarray, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import (
        ConfusionMatrixDisplay,
        PrecisionRecallDisplay,
        RocCurveDisplay,
    )

    paths = []
    for name, display in (
        ("roc_curve.png", lambda ax: RocCurveDisplay.from_predictions(y_true, prob, ax=ax)),
        ("pr_curve.png", lambda ax: PrecisionRecallDisplay.from_predictions(y_true, prob, ax=ax)),
        (
            "confusion_matrix.png",
            lambda ax: ConfusionMatrixDisplay.from_predictions(
                y_true.astype(int), (prob >= 0.5).astype(int), ax=ax, colorbar=False
            ),
        ),
    ):
        fig, ax = plt.subplots(figsize=(5, 4))
        display(ax)
        ax.set_title(name.removesuffix(".png").replace("_", " ") + " (test)")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def log_run_artifacts(
    tracker: NullTracker, cfg: RunConfig, result: FitResult, y_test: np.ndarray, test_prob: np.ndarray
) -> None:
    with tempfile.TemporaryDirectory(prefix="dmlt-artifacts-") as tmp:
        out = Path(tmp)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.redacted_dict(), sort_keys=False))
        m = result.test_metrics
        confusion = {"tn": m["tn"], "fp": m["fp"], "fn": m["fn"], "tp": m["tp"]}
        (out / "confusion_matrix.json").write_text(json.dumps(confusion, indent=2))
        summary = {
            "status": result.status,
            "epochs_run": result.epochs_run,
            "best_val_auc": result.best_val_auc,
            "best_epoch": result.best_epoch,
            "test_metrics": result.test_metrics,
            "train_seconds": result.train_seconds,
            "time_to_target_s": result.time_to_target_s,
            "weights_sha256": result.weights_sha256,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "history.json").write_text(json.dumps(result.history, indent=2))
        files = [out / n for n in ("config.yaml", "confusion_matrix.json", "summary.json", "history.json")]
        files += plot_curves(y_test, test_prob, out)
        for path in files:
            tracker.log_artifact(path)
