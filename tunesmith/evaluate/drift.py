"""Two-sample drift statistics: is a recent window of model inputs/outputs drawn like the reference sample?

Every function takes the reference sample first and the current window second (lists or numpy arrays) and
returns plain floats / dicts of floats, ready for JSON. The p-value tests are calibrated: at level alpha they
false-alarm on about alpha of the windows that come from the reference distribution (tests/unit/test_drift.py
measures it), so a family of tests needs `holm`. PSI is a descriptive size of a shift, not a test.

- `psi`, `ks_test`, `feature_tests`: numeric features (population stability index, Kolmogorov-Smirnov).
- `categorical_test`: labels or predicted classes (chi-square test of homogeneity + PSI over the categories).
- `mmd_test`, `classifier_test`: embeddings, one row per vector (kernel MMD, classifier two-sample test).
- `holm`, `psi_level`: adjust a family of p-values; read a PSI value.

Tiny samples (fewer than 2 values on a side) give p=1.0 and a "note" instead of an error. Deterministic given
`seed`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import stats as sps
from threadpoolctl import threadpool_limits

from ..errors import DataError
from . import stats

EPS = 1e-4  # share given to an empty bin/category, so that PSI stays finite
PSI_LEVELS = (0.1, 0.25)  # the usual reading: < 0.1 stable, 0.1-0.25 moderate shift, >= 0.25 major shift
TINY = "fewer than 2 values on a side: no test (p=1.0)"
# The embedding tests run on one BLAS/OpenMP thread: their matrices are small, and next to torch's OpenMP pool
# (a monitor has a model loaded) several threads made the classifier test 10x slower on 2 cores, not faster.
_one_thread = threadpool_limits.wrap(limits=1)


def _numeric(values) -> np.ndarray:
    """A flat float array without NaN/inf (missing values are not a distribution to compare)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _rows(values) -> np.ndarray:
    """A 2-D float array, one row per vector (a 1-D input is one value per row)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        return a[:, None]
    return a.reshape(len(a), -1) if a.size else a.reshape(len(a), 0)


def _subsample(a: np.ndarray, max_n: int, rng: np.random.Generator) -> np.ndarray:
    return a if len(a) <= max_n else a[np.sort(rng.choice(len(a), max_n, replace=False))]


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """sum((c - r) * ln(c / r)) over bins of shares r (reference) and c (current), empty bins given EPS."""
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return 0.0
    r = np.maximum(ref_counts / ref_counts.sum(), EPS)
    c = np.maximum(cur_counts / cur_counts.sum(), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def psi(ref, cur, bins: int = 10) -> float:
    """Population stability index of a numeric feature: how far the current shares of the reference's
    quantile bins moved (0 = same shares; read it with `psi_level`). Bin edges are the unique reference
    quantiles with -inf/+inf ends, so ties merge bins; a constant reference gives the bins <c, =c, >c (0.0
    while the current window stays at c). Not a test: no p-value, and sampling noise alone gives it about
    (bins - 1) * (1/n_ref + 1/n_cur) on same-distribution samples (0.18 for 100 vs 100 with 10 bins), so
    read PSI levels only on windows of several hundred values."""
    r, c = _numeric(ref), _numeric(cur)
    if not len(r) or not len(c):
        return 0.0
    if r.min() == r.max():
        edges = np.array([r[0], np.nextafter(r[0], np.inf)])  # [c, c+ulp): exactly the constant
        return _psi_from_counts(*(np.bincount(np.searchsorted(edges, v, "right"), minlength=3) for v in (r, c)))
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)[1:-1]))
    k = len(edges) + 1
    return _psi_from_counts(*(np.bincount(np.searchsorted(edges, v, "right"), minlength=k) for v in (r, c)))


def psi_level(value: float) -> str:
    """ "stable" (< 0.1), "moderate" (< 0.25) or "major" shift: the usual industry reading of PSI."""
    return "stable" if value < PSI_LEVELS[0] else "moderate" if value < PSI_LEVELS[1] else "major"


def ks_test(ref, cur) -> dict:
    """Two-sided Kolmogorov-Smirnov test: statistic = the largest gap between the two empirical CDFs
    (0..1); p = chance of a gap at least that large when both samples come from one continuous distribution
    (ties make it conservative)."""
    r, c = _numeric(ref), _numeric(cur)
    if len(r) < 2 or len(c) < 2:
        return {"statistic": 0.0, "p": 1.0, "note": TINY}
    res = sps.ks_2samp(r, c)
    return {"statistic": float(res.statistic), "p": float(res.pvalue)}


def categorical_test(ref, cur, categories: list[str] | None = None) -> dict:
    """Chi-square test of homogeneity on the 2 x K table of category counts (reference vs current; Pearson,
    no continuity correction): p = chance of shares this different when both come from one distribution.
    Values are compared as strings; `categories` fixes the order (values outside it are added after it).
    Categories absent from both samples leave the test; with one category left, p=1.0. Also PSI over the
    categories and each side's shares."""
    r, c = Counter(map(str, ref)), Counter(map(str, cur))
    names = list(dict.fromkeys([*(categories or []), *sorted(set(r) | set(c))]))
    table = np.array([[r[k] for k in names], [c[k] for k in names]], dtype=np.float64).reshape(2, len(names))
    shares = {
        side: {k: float(v / row.sum()) if row.sum() else 0.0 for k, v in zip(names, row, strict=True)}
        for side, row in (("ref", table[0]), ("cur", table[1]))
    }
    out = {"chi2": 0.0, "p": 1.0, "psi": _psi_from_counts(table[0], table[1]), **shares}
    seen = table[:, table.sum(0) > 0]
    if table[0].sum() < 2 or table[1].sum() < 2:
        out["note"] = TINY
    elif seen.shape[1] > 1:
        res = sps.chi2_contingency(seen, correction=False)
        out["chi2"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def _sq_distances(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)


@_one_thread
def mmd_test(x, y, permutations: int = 500, seed: int = 0, max_n: int = 1000) -> dict:
    """Kernel two-sample test (Gretton et al. 2012) on embeddings x (reference) and y (current), rows =
    vectors. mmd2 = the unbiased estimate of the squared maximum mean discrepancy with a Gaussian RBF kernel
    exp(-d^2 / (2 bandwidth^2)), bandwidth = the median pairwise distance of the pooled sample (0 in
    expectation when the distributions are equal, so it can be slightly negative). p = (1 + #permutations of
    the pooled rows with mmd2 >= the observed) / (1 + permutations): an exact-level permutation test.
    Each side is subsampled to at most `max_n` rows (seeded)."""
    a, b = _rows(x), _rows(y)
    if len(a) and len(b) and a.shape[1] != b.shape[1]:
        raise DataError(f"mmd_test: reference vectors have {a.shape[1]} dims, current {b.shape[1]}; embed both alike")
    if len(a) < 2 or len(b) < 2:
        return {"mmd2": 0.0, "p": 1.0, "bandwidth": 0.0, "n_ref": len(a), "n_cur": len(b), "note": TINY}
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_n, rng), _subsample(b, max_n, rng)
    n, m = len(a), len(b)
    d2 = _sq_distances(np.vstack([a, b]))
    median = float(np.sqrt(np.median(d2[np.triu_indices(n + m, 1)])))
    bandwidth = median if median > 0 else 1.0
    kernel = np.exp(-d2 / (2.0 * bandwidth**2))
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimate leaves out k(x_i, x_i)
    total = kernel.sum()
    # Row p of `labels` marks which pooled rows play "reference" in labelling p (row 0: the observed one).
    labels = np.zeros((permutations + 1, n + m))
    labels[:, :n] = 1.0
    labels[1:] = rng.permuted(labels[1:], axis=1)
    ks = labels @ kernel  # [P, N]: for each labelling, each row's kernel sum over the "reference" rows
    within_ref = np.einsum("pi,pi->p", ks, labels)
    between = ks.sum(1) - within_ref
    within_cur = total - within_ref - 2.0 * between
    mmd2 = within_ref / (n * (n - 1)) + within_cur / (m * (m - 1)) - 2.0 * between / (n * m)
    observed = mmd2[0]
    p = (1 + int(np.sum(mmd2[1:] >= observed - 1e-12))) / (permutations + 1)
    return {"mmd2": float(observed), "p": float(p), "bandwidth": float(bandwidth), "n_ref": n, "n_cur": m}


def _higher(scores: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(AUC, one-sided Mann-Whitney p) of the scores of target-1 rows being higher than those of target-0 rows."""
    hi, lo = scores[target == 1], scores[target == 0]
    res = sps.mannwhitneyu(hi, lo, alternative="greater")
    return float(res.statistic / (len(hi) * len(lo))), float(res.pvalue)


@_one_thread
def classifier_test(x, y, folds: int = 5, seed: int = 0, max_n: int = 1000) -> dict:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017): a logistic regression (standardised features,
    balanced classes) learns to tell current rows (y) from reference rows (x). auc = the AUC of its
    out-of-fold scores over `folds` stratified folds (0.5 = indistinguishable, 1 = fully separable): the
    size of the shift. p = one-sided Mann-Whitney U test that current rows score higher, on a held-out half
    scored by a model fit on the other half (auc_holdout = that half's AUC). Held-out scores are independent
    given the model, so p is exact; the pooled out-of-fold scores are not (each fold's model saw the other
    folds), and a Mann-Whitney test on them false-alarms on ~12% of same-distribution windows at 0.05.
    Each side is subsampled to at most `max_n` rows (seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = _rows(x), _rows(y)
    if len(a) and len(b) and a.shape[1] != b.shape[1]:
        raise DataError(f"classifier_test: reference vectors have {a.shape[1]} dims, current {b.shape[1]}")
    folds = min(folds, len(a), len(b))
    if folds < 2:
        return {"auc": 0.5, "p": 1.0, "auc_holdout": 0.5, "note": TINY}
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_n, rng), _subsample(b, max_n, rng)
    features, target = np.vstack([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))]
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    auc, _ = _higher(cross_val_predict(model, features, target, cv=split, method="decision_function"), target)
    fit_x, test_x, fit_t, test_t = train_test_split(features, target, test_size=0.5, stratify=target, random_state=seed)
    auc_holdout, p = _higher(model.fit(fit_x, fit_t).decision_function(test_x), test_t)
    return {"auc": auc, "p": p, "auc_holdout": auc_holdout}


def _mean(a: np.ndarray) -> float | None:
    return float(a.mean()) if len(a) else None


def feature_tests(ref: dict, cur: dict) -> dict[str, dict]:
    """{name: {"psi", "ks", "p", "ref_mean", "cur_mean"}} for every numeric feature in both `ref` and `cur`
    ({name: values}; in ref's order). ks/p: the two-sided KS statistic and its p-value (adjust the family
    with `holm`); a mean of an empty side is None."""
    out = {}
    for name in (k for k in ref if k in cur):
        r, c = _numeric(ref[name]), _numeric(cur[name])
        test = ks_test(r, c)
        row = {"psi": psi(r, c), "ks": test["statistic"], "p": test["p"], "ref_mean": _mean(r), "cur_mean": _mean(c)}
        out[name] = row | ({"note": test["note"]} if "note" in test else {})
    return out


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values of a family of tests (each >= its raw p; the chance of any false alarm in the
    family stays <= alpha when every adjusted p is compared with alpha)."""
    names = list(pvalues)
    return dict(zip(names, stats.holm([float(pvalues[k]) for k in names]), strict=True))
