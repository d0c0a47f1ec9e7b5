"""Likely label errors: confident learning (`cleanlab`) on out-of-fold probabilities.

Confident learning is only as good as the probabilities it reads, so they come from two views of
each text, each from a model that never saw the row (`cross_val_predict`):
  - words: TF-IDF (word 1-2 grams) + logistic regression;
  - meaning: logistic regression on the frozen features of the pretrained model the run fine-tunes
    (mean-pooled, cached), when one is at hand.
Their average is the out-of-fold model. `cleanlab.filter.find_label_issues(filter_by="prune_by_class")`
flags, per class, the estimated number of wrong labels with the lowest probability of their label; rows
are ranked by self-confidence (the out-of-fold probability of the given label, lowest first).

Two figures say how far to trust the list: the out-of-fold accuracy and Cohen's kappa (accuracy beyond
what the class shares give for free), and an estimated precision (cleanlab's own estimate of how many
labels are wrong, over the number flagged). When the kappa is low the model cannot tell a wrong label
from a hard example, and the list is withheld with the reason: a list that is mostly wrong teaches users
to ignore it.

Measured (`benchmarks/label_errors.py`, 80 flips planted in 2,520 Debian package descriptions of 9
topics, 5 seeds): the old audit (TF-IDF alone, cleanlab's default filter) flagged 112 rows at precision
0.52 / recall 0.73; both views flag 96 at 0.70 / 0.84. On fuzzy sections (Debian utils/admin/net/x11, kappa
0.71) and tweet sentiment (kappa 0.54) the old audit's lists were 80-90% unplanted; they are now withheld.
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
    model: str = ""
    """What gave the out-of-fold probabilities (e.g. `tfidf + minilm features`)."""
    model_accuracy: float | None = None
    """Out-of-fold accuracy of the model against the given labels (how much signal it had)."""
    view_accuracy: dict[str, float] = field(default_factory=dict)
    """Out-of-fold accuracy of each view alone (tfidf, features)."""
    kappa: float | None = None
    """Cohen's kappa of the out-of-fold predictions: 0 = no better than the class shares, 1 = perfect."""
    estimated_errors: int | None = None
    """cleanlab's estimate of how many training labels are wrong (from the confident joint)."""
    estimated_precision: float | None = None
    """Estimated share of the flagged rows whose label really is wrong: estimated_errors / flagged, at most 1."""
    issues: list[LabelIssue] = field(default_factory=list)
    """Every flagged row, most suspicious first (empty when withheld)."""
    withheld: str | None = None
    """Why the flagged rows are not listed (the out-of-fold model is too weak to judge), if they are not."""
    withheld_count: int = 0
    """How many rows the weak model would have flagged."""
    excluded_labels: list[str] = field(default_factory=list)
    """Labels with fewer rows than folds, left out of the check."""
    skipped: str | None = None
    """Why the check did not run (too few rows per label), if it did not."""


def out_of_fold_probs(
    texts: list[str],
    labels: np.ndarray,
    folds: int,
    seed: int,
    features: np.ndarray | None = None,
    feature_name: str = "features",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(averaged probabilities, {view: probabilities}) for each row, from models that did not see the row."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # The vectoriser sits inside the pipeline so that each fold learns its vocabulary from its own training part.
    words = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=200_000),
        # saga converges in a few dozen passes on L2-normalised TF-IDF rows: ~7x faster than lbfgs here.
        LogisticRegression(max_iter=1000, C=4.0, solver="saga", random_state=seed),
    )
    views = {"tfidf": cross_val_predict(words, texts, labels, cv=cv, method="predict_proba", n_jobs=1)}
    if features is not None:
        # Unit-length features, C=1: stronger regularisation gives better-calibrated probabilities (measured: C=10 or
        # standardised features flag 2-3x more rows at half the precision).
        meaning = LogisticRegression(C=1.0, max_iter=2000)
        views[feature_name] = cross_val_predict(meaning, features, labels, cv=cv, method="predict_proba", n_jobs=1)
    return np.mean(list(views.values()), axis=0), views


def find_label_errors(
    texts: list[str],
    labels: list[str],
    rows: list[int],
    folds: int,
    seed: int,
    features: np.ndarray | None = None,
    feature_name: str = "features",
    min_kappa: float = 0.75,
) -> LabelNoiseFindings:
    """Rank likely label errors among `texts` with string `labels`; `rows` are their 1-based row numbers.

    `features`: one vector per text from a pretrained model (the meaning view); without it, TF-IDF alone.
    `min_kappa`: below this chance-corrected accuracy the out-of-fold model is too weak and the list is withheld
    (measured: at kappa 0.71 the flagged rows were 75% unplanted; at 0.87, 30%).
    """
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from sklearn.metrics import cohen_kappa_score

    counts = Counter(labels)
    rare = sorted(name for name, n in counts.items() if n < folds)
    if rare:  # too few rows to appear in every fold: left out of the check, and said so
        keep = [i for i, v in enumerate(labels) if counts[v] >= folds]
        texts, labels, rows = [texts[i] for i in keep], [labels[i] for i in keep], [rows[i] for i in keep]
        features = features[keep] if features is not None else None
    names = sorted(set(labels))
    if len(names) < 2:
        why = f"labels {rare} have fewer than {folds} rows (one per fold)" if rare else "fewer than 2 labels"
        return LabelNoiseFindings(checked_rows=0, skipped=why)
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[v] for v in labels], dtype=int)
    probs, views = out_of_fold_probs(texts, y, folds, seed, features, feature_name)
    predicted = probs.argmax(axis=1)
    # n_jobs=1: cleanlab would otherwise fork one worker per core (the trainer may be using them).
    ranked = find_label_issues(
        y, probs, filter_by="prune_by_class", return_indices_ranked_by="self_confidence", n_jobs=1
    )
    estimated = int(num_label_issues(y, probs))
    kappa = float(cohen_kappa_score(y, predicted))
    found = LabelNoiseFindings(
        checked_rows=len(texts),
        folds=folds,
        model=" + ".join(views),
        model_accuracy=round(float((predicted == y).mean()), 4),
        view_accuracy={k: round(float((p.argmax(1) == y).mean()), 4) for k, p in views.items()},
        kappa=round(kappa, 4),
        estimated_errors=estimated,
        estimated_precision=round(min(1.0, estimated / len(ranked)), 3) if len(ranked) else None,
        excluded_labels=rare,
    )
    if min_kappa > 0 and kappa < min_kappa:  # 0: always list
        found.withheld = (
            f"the out-of-fold model is too weak to tell a wrong label from a hard example (accuracy "
            f"{found.model_accuracy:.2f}, kappa {kappa:.2f} < audit.label_error_min_kappa {min_kappa})"
        )
        found.withheld_count = len(ranked)
        return found
    found.issues = [
        LabelIssue(rows[i], names[y[i]], names[int(predicted[i])], round(float(probs[i, y[i]]), 4), texts[i])
        for i in ranked
    ]
    return found


def label_errors_from_features(
    features: np.ndarray,
    labels: list[str],
    refs: list[str],
    folds: int,
    seed: int,
    feature_name: str = "features",
    min_kappa: float = 0.75,
) -> LabelNoiseFindings:
    """`label_noise.find_label_errors` with the features as the only view (it always adds TF-IDF of texts, and image
    refs are paths whose folder names would give the labels away). Same filter, ranking, kappa gate and fields; rows
    are 1-based positions."""
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows for {len(labels)} training images")
    counts = Counter(labels)
    rare = sorted(name for name, n in counts.items() if n < folds)
    keep = [i for i, v in enumerate(labels) if counts[v] >= folds]
    names = sorted({labels[i] for i in keep})
    if len(names) < 2:
        why = f"labels {rare} have fewer than {folds} images (one per fold)" if rare else "fewer than 2 labels"
        return LabelNoiseFindings(checked_rows=0, skipped=why)
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[labels[i]] for i in keep], dtype=int)
    x = np.asarray(features, np.float64)[keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # unit length, C=1: as label_noise measured
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(C=1.0, max_iter=2000), x, y, cv=cv, method="predict_proba", n_jobs=1)
    predicted = probs.argmax(axis=1)
    ranked = find_label_issues(
        y, probs, filter_by="prune_by_class", return_indices_ranked_by="self_confidence", n_jobs=1
    )
    estimated, kappa = int(num_label_issues(y, probs)), float(cohen_kappa_score(y, predicted))
    accuracy = round(float((predicted == y).mean()), 4)
    precision = round(min(1.0, estimated / len(ranked)), 3) if len(ranked) else None
    found = LabelNoiseFindings(
        len(keep), folds, feature_name, accuracy, {feature_name: accuracy}, round(kappa, 4), estimated, precision
    )
    found.excluded_labels = rare
    if min_kappa > 0 and kappa < min_kappa:
        found.withheld = (
            f"the out-of-fold model is too weak to tell a wrong label from a hard example (accuracy "
            f"{accuracy:.2f}, kappa {kappa:.2f} < audit.label_error_min_kappa {min_kappa})"
        )
        found.withheld_count = len(ranked)
        return found
    found.issues = [
        LabelIssue(keep[i] + 1, names[y[i]], names[int(predicted[i])], round(float(probs[i, y[i]]), 4), refs[keep[i]])
        for i in ranked
    ]
    return found


def label_errors_line(noise: LabelNoiseFindings) -> str:
    """The audit's one line on label errors: how many, how far to trust them, or why they are not listed."""
    if noise.withheld:
        return f"likely label errors not listed: {noise.withheld}"
    if noise.skipped:
        return f"label errors not checked: {noise.skipped}"
    est = f", estimated precision {noise.estimated_precision:.2f}" if noise.issues else ""
    return f"{len(noise.issues)} likely label errors in train{est}"
