"""A strong classical baseline on the same split: TF-IDF word 1-2-grams + logistic regression."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from .metrics import classification_metrics


def tfidf_baseline(train_texts, train_labels, test_texts, test_labels, label_names, seed: int = 0) -> dict:
    pipe = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed),
    )
    pipe.fit(train_texts, train_labels)
    probs = np.zeros((len(test_texts), len(label_names)))
    probs[:, pipe.classes_] = pipe.predict_proba(test_texts)
    return classification_metrics(test_labels, probs, label_names)
