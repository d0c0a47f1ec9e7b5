"""How far a model's representations moved: linear CKA and the correlation of pairwise cosine similarities.

Both compare the embeddings of the same texts by the original and the fine-tuned encoder. Linear CKA
(Kornblith et al., 2019) is 1 for representations equal up to rotation and isotropic scaling and falls as they
drift; the cosine-similarity correlation asks whether the texts the original model found alike are still alike.
"""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two [n, d] representations of the same n items (feature dimensions may differ)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError("linear_cka needs the same items (at least 2) in both representations")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def cosine_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the pairwise cosine similarities of the items under `x` and under `y`."""
    a, b = (_pairwise_cosines(v) for v in (x, y))
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def drift(before: np.ndarray, after: np.ndarray) -> dict:
    """{rows, cka, cosine_correlation} between the original and the fine-tuned embeddings."""
    return {
        "rows": int(len(before)),
        "cka": linear_cka(before, after),
        "cosine_correlation": cosine_correlation(before, after),
    }


def _pairwise_cosines(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    sims = v @ v.T
    return sims[np.triu_indices(len(v), k=1)]
