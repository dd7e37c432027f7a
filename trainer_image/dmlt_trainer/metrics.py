"""Binary-classification metrics over a whole split (scikit-learn does the maths)."""

from __future__ import annotations

import numpy as np


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC-ROC, PR-AUC, F1, accuracy, precision, recall, specificity, MCC, log loss, Brier."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(np.int64)
    prob = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (prob >= threshold).astype(np.int64)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y_true)) == 2
    return {
        "auc": float(skm.roc_auc_score(y_true, prob)) if both_classes else float("nan"),
        "pr_auc": float(skm.average_precision_score(y_true, prob)) if both_classes else float("nan"),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "mcc": float(skm.matthews_corrcoef(y_true, pred)),
        "log_loss": float(skm.log_loss(y_true, prob, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, prob)),
        "tp": float(tp),
        "fp": float(fp),
        "tn": float(tn),
        "fn": float(fn),
    }
