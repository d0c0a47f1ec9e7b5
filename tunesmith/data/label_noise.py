"""Likely label errors: confident learning (`cleanlab`) on out-of-fold probabilities of a cheap model.

The cheap model is TF-IDF (word 1-2 grams) + logistic regression. `cross_val_predict` gives every
row a probability vector from a model that never saw it; `cleanlab.filter.find_label_issues`
then flags rows whose given label is unlikely under the per-class thresholds of confident
learning, ranked by self-confidence (the out-of-fold probability of the given label, lowest first).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabelIssue:
    row: int
    """1-based row number in its set."""
    given: str
    suggested: str
    """The label the out-of-fold model finds most likely."""
    self_confidence: float
    """Out-of-fold probability of the given label (lower is more suspicious)."""
    text: str


@dataclass
class LabelNoiseFindings:
    checked_rows: int = 0
    """Rows the model saw (rows with a text and a label)."""
    folds: int = 0
    model_accuracy: float | None = None
    """Out-of-fold accuracy of the cheap model against the given labels (how much signal it had)."""
    issues: list[LabelIssue] = field(default_factory=list)
    """Every flagged row, most suspicious first."""
    excluded_labels: list[str] = field(default_factory=list)
    """Labels with fewer rows than folds, left out of the check."""
    skipped: str | None = None
    """Why the check did not run (too few rows per label), if it did not."""


def out_of_fold_probs(texts: list[str], labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Probabilities of each class for each row, from a TF-IDF + logistic-regression model that did not see the row."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    # The vectoriser sits inside the pipeline so that each fold learns its vocabulary from its own training part.
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=200_000),
        # saga converges in a few dozen passes on L2-normalised TF-IDF rows: ~7x faster than lbfgs here.
        LogisticRegression(max_iter=1000, C=4.0, solver="saga", random_state=seed),
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, texts, labels, cv=cv, method="predict_proba", n_jobs=1)


def find_label_errors(
    texts: list[str], labels: list[str], rows: list[int], folds: int, seed: int
) -> LabelNoiseFindings:
    """Rank likely label errors among `texts` with string `labels`; `rows` are their 1-based row numbers."""
    from cleanlab.filter import find_label_issues

    counts = Counter(labels)
    rare = sorted(name for name, n in counts.items() if n < folds)
    if rare:  # too few rows to appear in every fold: left out of the check, and said so
        keep = [i for i, v in enumerate(labels) if counts[v] >= folds]
        texts, labels, rows = [texts[i] for i in keep], [labels[i] for i in keep], [rows[i] for i in keep]
    names = sorted(set(labels))
    if len(names) < 2:
        why = f"labels {rare} have fewer than {folds} rows (one per fold)" if rare else "fewer than 2 labels"
        return LabelNoiseFindings(checked_rows=0, skipped=why)
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[v] for v in labels], dtype=int)
    probs = out_of_fold_probs(texts, y, folds, seed)
    # n_jobs=1: cleanlab would otherwise fork one worker per core (the trainer may be using them).
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    issues = [
        LabelIssue(rows[i], names[y[i]], names[int(probs[i].argmax())], round(float(probs[i, y[i]]), 4), texts[i])
        for i in ranked
    ]
    accuracy = float((probs.argmax(axis=1) == y).mean())
    return LabelNoiseFindings(len(texts), folds, round(accuracy, 4), issues, excluded_labels=rare)
