"""The label-error model: two views (words, a pretrained model's features), withheld when too weak to judge."""

from __future__ import annotations

import numpy as np

from tunesmith.data.label_noise import find_label_errors


def _clusters(n_per: int = 100, seed: int = 0):
    """Three well separated classes in feature space; texts that carry no class signal (random words)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 4
    feats = np.concatenate([c + rng.normal(size=(n_per, 16)) for c in centres])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = [name for name in ("a", "b", "c") for _ in range(n_per)]
    vocab = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choice(vocab, 8)) for _ in labels]
    return texts, labels, feats


def _plant(labels: list[str], n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    out = list(labels)
    flipped = set(rng.choice(len(out), n, replace=False).tolist())
    for i in flipped:
        out[i] = {"a": "b", "b": "c", "c": "a"}[out[i]]
    return out, flipped


def test_features_find_planted_flips_that_words_cannot():
    texts, clean, feats = _clusters()
    labels, flipped = _plant(clean, 15)
    rows = list(range(len(texts)))
    with_features = find_label_errors(texts, labels, rows, 5, 42, features=feats, feature_name="toy")
    flagged = {i.row for i in with_features.issues}
    precision, recall = len(flagged & flipped) / max(1, len(flagged)), len(flagged & flipped) / len(flipped)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert with_features.model == "tfidf + toy" and set(with_features.view_accuracy) == {"tfidf", "toy"}
    assert with_features.view_accuracy["toy"] > 0.85 > 0.5 > with_features.view_accuracy["tfidf"]
    assert 0 < with_features.estimated_precision <= 1 and with_features.withheld is None
    # the suggested label of a flipped row is its true one
    assert all(i.suggested == clean[i.row] for i in with_features.issues if i.row in flipped)

    words_only = find_label_errors(texts, labels, rows, 5, 42)
    assert words_only.issues == [] and words_only.kappa < 0.6 and "too weak" in words_only.withheld
    assert words_only.withheld_count > 0
    listed = find_label_errors(texts, labels, rows, 5, 42, min_kappa=0.0)  # forced: a long list of mostly clean rows
    assert len(listed.issues) > 0 and len({i.row for i in listed.issues} & flipped) / len(listed.issues) < 0.5


def test_rare_labels_are_left_out_with_their_features():
    texts, clean, feats = _clusters(n_per=40)
    texts, clean, feats = texts + ["odd one", "odd two"], clean + ["d", "d"], np.vstack([feats, feats[:2]])
    found = find_label_errors(texts, clean, list(range(len(texts))), 5, 42, features=feats)
    assert found.excluded_labels == ["d"] and found.checked_rows == 120
