"""Uncertainty and significance for classification metrics (scipy's bootstrap and permutation tests).

- `metric_cis`: percentile bootstrap confidence intervals of every headline metric of one run.
- `paired_delta`: the difference B - A on the same test items, with a paired bootstrap CI and a
  paired permutation test (approximate randomisation: swap A's and B's prediction per item).
- `mcnemar`: the exact McNemar test on which items each model gets right.

The metrics are computed from confusion matrices for thousands of resamples at once; they equal
scikit-learn's (`labels=` all classes, `zero_division=0`), which tests/test_stats.py checks.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CI_METRICS = [
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "weighted_f1",
    "weighted_precision",
    "weighted_recall",
]
DEFAULT_RESAMPLES = 1000


def confusion_batch(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices [..., k, k] (rows: true) for label arrays of shape [..., n] (broadcast)."""
    y, pred = np.broadcast_arrays(np.asarray(y), np.asarray(pred))
    batch = y.shape[:-1]
    rows = int(np.prod(batch)) if batch else 1
    cell = (y.reshape(rows, -1) * k + pred.reshape(rows, -1)) + (np.arange(rows) * k * k)[:, None]
    return np.bincount(cell.ravel(), minlength=rows * k * k).reshape(*batch, k, k)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro/weighted precision, recall and F1 from confusion matrices [..., k, k]."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(-1), cm.sum(-2)
    n = support.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    out = {"accuracy": tp.sum(-1) / n}
    for name, value in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"macro_{name}"] = value.mean(-1)
        out[f"weighted_{name}"] = (value * support).sum(-1) / n
    return out


def metric_value(metric: str, y, pred, k: int) -> np.ndarray:
    """One metric for label arrays [..., n] (the last axis holds the items)."""
    return metrics_from_confusion(confusion_batch(y, pred, k))[metric]


def metric_cis(
    y_true, probs: np.ndarray, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict:
    """{metric: {"low", "high"}} percentile-bootstrap intervals for the headline metrics (+ log loss)."""
    y = np.asarray(y_true)
    pred, k = probs.argmax(1), probs.shape[1]
    item_loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1))

    def statistic(y_, p_, loss_, axis=-1):
        values = metrics_from_confusion(confusion_batch(np.moveaxis(y_, axis, -1), np.moveaxis(p_, axis, -1), k))
        return np.stack([values[m] for m in CI_METRICS] + [np.moveaxis(loss_, axis, -1).mean(-1)])

    res = stats.bootstrap(
        (y, pred, item_loss),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    names = CI_METRICS + ["loss"]
    return {
        m: {"low": float(lo), "high": float(hi)}
        for m, lo, hi in zip(names, res.confidence_interval.low, res.confidence_interval.high)
    }


def paired_delta(
    y_true,
    pred_a,
    pred_b,
    k: int,
    metric: str = "macro_f1",
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """B - A on the same items: the delta, its paired-bootstrap CI and a paired permutation-test p-value."""
    y, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    if not (len(y) == len(a) == len(b)):
        raise ValueError("paired_delta needs predictions of both models on the same items")
    rng = np.random.default_rng(seed)

    def boot_stat(y_, a_, b_, axis=-1):
        y_, a_, b_ = (np.moveaxis(v, axis, -1) for v in (y_, a_, b_))
        return metric_value(metric, y_, b_, k) - metric_value(metric, y_, a_, k)

    delta = float(boot_stat(y, a, b))
    if np.array_equal(a, b):  # nothing differs: every resample gives 0, the test cannot reject
        return {
            "metric": metric,
            "a": float(metric_value(metric, y, a, k)),
            "b": float(metric_value(metric, y, b, k)),
            "delta": 0.0,
            "low": 0.0,
            "high": 0.0,
            "p": 1.0,
            "level": level,
        }
    ci = stats.bootstrap(
        (y, a, b),
        boot_stat,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=rng,
    ).confidence_interval

    def perm_stat(a_, b_, axis=-1):  # positions stay fixed (permutation_type="samples"), so y lines up
        return metric_value(metric, y, np.moveaxis(b_, axis, -1), k) - metric_value(
            metric, y, np.moveaxis(a_, axis, -1), k
        )

    p = stats.permutation_test(
        (a, b),
        perm_stat,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        random_state=rng,
    ).pvalue
    return {
        "metric": metric,
        "a": float(metric_value(metric, y, a, k)),
        "b": float(metric_value(metric, y, b, k)),
        "delta": delta,
        "low": float(ci.low),
        "high": float(ci.high),
        "p": float(p),
        "level": level,
    }


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """Exact McNemar test: of the items exactly one model gets right, is the split 50/50?"""
    y, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    ok_a, ok_b = a == y, b == y
    fixed, broke = int((~ok_a & ok_b).sum()), int((ok_a & ~ok_b).sum())
    p = 1.0 if fixed + broke == 0 else float(stats.binomtest(fixed, fixed + broke, 0.5).pvalue)
    return {
        "fixed": fixed,
        "broke": broke,
        "both_right": int((ok_a & ok_b).sum()),
        "both_wrong": int((~ok_a & ~ok_b).sum()),
        "p": p,
    }


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (several comparisons against one reference run)."""
    order = np.argsort(pvalues)
    m, out, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(delta: dict, scale: float = 100.0, unit: str = "points", alpha: float = 0.05, name_b: str = "B") -> str:
    """One line: "B is better by 2.1 macro-F1 points (95% CI 0.8-3.4, p=0.003)" or "no significant difference (...)"."""
    label = delta["metric"].replace("_f1", "-F1").replace("_", "-")
    d, lo, hi = (scale * delta[k] for k in ("delta", "low", "high"))
    ci = f"{delta['level']:.0%} CI {lo:+.1f} to {hi:+.1f}, {p_text(delta['p'])}"
    if delta["p"] < alpha and (lo > 0 or hi < 0):
        return f"{name_b} is {'better' if d > 0 else 'worse'} by {abs(d):.1f} {label} {unit} ({ci})"
    return f"no significant difference in {label} ({name_b} {d:+.1f} {unit}, {ci})"


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
