"""Calibration: expected calibration error, a reliability diagram, and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on the validation
set by minimising the negative log-likelihood; it changes confidences, never the predicted label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ..utils import atomic_write_figure


def reliability_bins(y_true, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of top-label confidence: items, mean confidence and accuracy per bin."""
    y = np.asarray(y_true)
    conf, correct = probs.max(1), probs.argmax(1) == y
    index = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "n": int(mask.sum()),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return out


def expected_calibration_error(y_true, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: |accuracy - confidence| per bin, weighted by the bin's share of items."""
    table = reliability_bins(y_true, probs, bins)
    n = sum(b["n"] for b in table)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in table))


def fit_temperature(y_true, probs: np.ndarray) -> float:
    """The T in [0.05, 20] minimising validation NLL of softmax(log p / T)."""
    y = np.asarray(y_true)
    logits = np.log(np.clip(probs, 1e-12, 1))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20)), method="bounded").x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.log(np.clip(probs, 1e-12, 1)) / temperature, axis=1)


def calibration_report(
    y_test, probs_test: np.ndarray, y_val=None, probs_val: np.ndarray | None = None, bins: int = 10
) -> dict:
    """ECE and reliability bins on test; with validation probabilities also T and the ECE after scaling."""
    nll = _nll(y_test, probs_test)
    out = {
        "ece": expected_calibration_error(y_test, probs_test, bins),
        "nll": nll,
        "bins": reliability_bins(y_test, probs_test, bins),
    }
    if probs_val is not None and len(probs_val):
        t = fit_temperature(y_val, probs_val)
        scaled = apply_temperature(probs_test, t)
        out["temperature"] = t
        out["after_scaling"] = {
            "ece": expected_calibration_error(y_test, scaled, bins),
            "nll": _nll(y_test, scaled),
            "bins": reliability_bins(y_test, scaled, bins),
        }
    return out


def plot_reliability(report: dict, path: Path, title: str) -> None:
    """Accuracy vs confidence per bin (the diagonal is perfect calibration), before and after scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    series = [("model", report)] + (
        [(f"temperature {report['temperature']:.2f}", report["after_scaling"])] if "after_scaling" in report else []
    )
    for k, (name, r) in enumerate(series):
        b = r["bins"]
        ax.plot(
            [x["confidence"] for x in b],
            [x["accuracy"] for x in b],
            "o-",
            color=f"C{k}",
            label=f"{name} (ECE {r['ece']:.3f})",
        )
    ax.set_xlabel("confidence (top label)"), ax.set_ylabel("accuracy"), ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
    ax.set_title(title), ax.legend(fontsize=8, loc="upper left"), ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)


def _nll(y, probs: np.ndarray) -> float:
    y = np.asarray(y)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)).mean())
