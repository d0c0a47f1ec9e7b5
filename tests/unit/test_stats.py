"""The statistics on constructed cases: identical models are never "significantly" different, a planted
better model is, the vectorised metrics equal scikit-learn's, and intervals cover what they should."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tunesmith.evaluate.stats import (
    confusion_batch,
    holm,
    mcnemar,
    metric_cis,
    metrics_from_confusion,
    paired_delta,
    verdict,
)


def _model(y: np.ndarray, accuracy: float, k: int, rng) -> np.ndarray:
    """Predictions that are right with probability `accuracy`, otherwise a random wrong class."""
    wrong = (y + rng.integers(1, k, len(y))) % k
    return np.where(rng.random(len(y)) < accuracy, y, wrong)


def test_vectorised_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300))
    pred[pred == 3] = 2  # a class that is never predicted: zero_division must give 0, as in scikit-learn
    got = metrics_from_confusion(confusion_batch(y, pred, 4))
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    for avg in ("macro", "weighted"):
        kw = dict(average=avg, labels=[0, 1, 2, 3], zero_division=0)
        assert got[f"{avg}_f1"] == pytest.approx(f1_score(y, pred, **kw))
        assert got[f"{avg}_precision"] == pytest.approx(precision_score(y, pred, **kw))
        assert got[f"{avg}_recall"] == pytest.approx(recall_score(y, pred, **kw))
    batch = confusion_batch(np.stack([y, y]), np.stack([pred, y]), 4)  # many resamples at once
    assert batch.shape == (2, 4, 4) and metrics_from_confusion(batch)["accuracy"][1] == 1.0


def test_identical_runs_show_no_significant_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 800)
    a = _model(y, 0.75, 3, rng)
    d = paired_delta(y, a, a.copy(), 3, "macro_f1", resamples=500)
    assert d["delta"] == 0 and d["p"] == 1.0
    assert verdict(d).startswith("no significant difference")
    assert mcnemar(y, a, a)["p"] == 1.0


def test_two_equally_good_models_are_not_significant():
    # Same accuracy, independent errors: a real difference of 0. At alpha 0.05 the test must not fire (seeded).
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 600)
    a, b = _model(y, 0.7, 3, rng), _model(y, 0.7, 3, rng)
    d = paired_delta(y, a, b, 3, "accuracy", resamples=1000, seed=1)
    assert d["p"] > 0.05 and d["low"] < 0 < d["high"]
    assert verdict(d).startswith("no significant difference")


def test_a_planted_better_model_is_significant():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1000)
    a = _model(y, 0.70, 3, rng)
    b = a.copy()
    fix = (a != y) & (rng.random(1000) < 0.3)  # B fixes 30% of A's errors and breaks nothing
    b[fix] = y[fix]
    d = paired_delta(y, a, b, 3, "macro_f1", resamples=1000)
    assert d["delta"] > 0.05 and d["low"] > 0 and d["p"] < 0.01
    line = verdict(d, name_b="B")
    assert line.startswith("B is better by") and "macro-F1 points" in line and "95% CI" in line
    m = mcnemar(y, a, b)
    assert m["fixed"] == int(fix.sum()) and m["broke"] == 0 and m["p"] < 1e-6
    worse = verdict(paired_delta(y, b, a, 3, "macro_f1", resamples=1000), name_b="A")
    assert worse.startswith("A is worse by")


def test_bootstrap_interval_covers_the_true_accuracy():
    # 200 items from a model that is right 80% of the time: the 95% CI should contain 0.8 in ~95% of datasets.
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(40):
        y = rng.integers(0, 2, 200)
        pred = _model(y, 0.8, 2, rng)
        probs = np.eye(2)[pred] * 0.9 + 0.05
        ci = metric_cis(y, probs, resamples=300, seed=int(rng.integers(1e6)))["accuracy"]
        hits += ci["low"] <= 0.8 <= ci["high"]
    assert hits >= 34  # 40 x 0.95 = 38 expected; a broken interval (too narrow or off-centre) fails this


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
