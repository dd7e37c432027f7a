import numpy as np
import pytest
from dmlt_trainer.metrics import binary_metrics
from sklearn import metrics as skm

pytestmark = pytest.mark.unit


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    prob = np.clip(y * 0.3 + rng.uniform(0, 0.7, 500), 0, 1)
    m = binary_metrics(y, prob)
    pred = prob >= 0.5
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, prob))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    assert binary_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))["auc"] == 1.0
    assert binary_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))["auc"] == 0.0
