"""Robustness: the test metric under perturbed inputs (typos, case, punctuation, dropped words), as a drop.

Each perturbation is seeded and applied to the same stratified sample of test items; the clean
predictions on that sample are the reference, so the drop isolates the effect of the perturbation.
"""

from __future__ import annotations

import random
import re
import unicodedata

import numpy as np

from ..utils import atomic_write_figure
from .stats import metric_value


def typos(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Swap two different adjacent inner letters in ~rate of the words of 4+ letters (at least one such word)."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 4]
    for i in [i for i in long if rng.random() < rate] or long[:1]:
        w = words[i]
        spots = [j for j in range(1, len(w) - 2) if w[j] != w[j + 1] and w[j].isalpha() and w[j + 1].isalpha()]
        if spots:
            j = rng.choice(spots)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def upper_case(text: str, rng: random.Random) -> str:
    return text.upper()


def no_punctuation(text: str, rng: random.Random) -> str:
    stripped = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    return re.sub(r"\s+", " ", stripped).strip() or text


def drop_words(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Drop ~rate of the words (at least one when there are 2+), never all of them."""
    words = text.split()
    if len(words) < 2:
        return text
    drop = {i for i in range(len(words)) if rng.random() < rate} or {rng.randrange(len(words))}
    return " ".join(w for i, w in enumerate(words) if i not in drop)


PERTURBATIONS = {"typos": typos, "uppercase": upper_case, "no_punctuation": no_punctuation, "dropped_words": drop_words}


def sample_rows(y, n: int, seed: int) -> np.ndarray:
    """A stratified sample of n row indices (all rows when n is 0 or at least the size of the set)."""
    y = np.asarray(y)
    if not n or n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(
        np.arange(len(y)), train_size=n, random_state=seed, stratify=y if np.bincount(y).min() >= 2 else None
    )
    return np.sort(rows)


def robustness(
    texts: list[str], y, clean_probs: np.ndarray, predict, k: int, samples: int = 500, seed: int = 0
) -> dict:
    """{perturbation: macro-F1/accuracy on perturbed inputs, drop vs clean, share of predictions flipped}."""
    rows = sample_rows(y, samples, seed)
    y = np.asarray(y)[rows]
    clean_pred = clean_probs[rows].argmax(1)
    clean = {m: float(metric_value(m, y, clean_pred, k)) for m in ("macro_f1", "accuracy")}
    out = {"n": int(len(rows)), "clean": clean, "perturbations": {}}
    for name, fn in PERTURBATIONS.items():
        rng = random.Random(f"{seed}-{name}")
        changed = [fn(texts[i], rng) for i in rows]
        pred = predict(changed).argmax(1)
        scores = {m: float(metric_value(m, y, pred, k)) for m in ("macro_f1", "accuracy")}
        out["perturbations"][name] = {
            **scores,
            "macro_f1_drop": clean["macro_f1"] - scores["macro_f1"],
            "accuracy_drop": clean["accuracy"] - scores["accuracy"],
            "flipped": float((pred != clean_pred).mean()),
            "texts_changed": float(np.mean([c != texts[i] for c, i in zip(changed, rows)])),
        }
    return out


def plot_robustness(report: dict, path, title: str) -> None:
    """Bars: macro-F1 on clean inputs and under each perturbation (same items)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["clean", *report["perturbations"]]
    values = [report["clean"]["macro_f1"], *(p["macro_f1"] for p in report["perturbations"].values())]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(names, values, color=["C2"] + ["C0"] * (len(names) - 1))
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_ylabel("macro-F1"), ax.set_ylim(0, 1.05), ax.set_title(f"{title} (n={report['n']})", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)
