"""Metrics per slice of the test set (data columns and text-length buckets) and fairness figures (fairlearn)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..data.loaders import load_table, pick_split
from ..errors import DataError
from ..utils import atomic_write_figure
from .stats import metric_value

UNKNOWN = "(missing)"


def length_buckets(texts: list[str], buckets: int = 3) -> list[str]:
    """Each text's word-count bucket, cut at quantiles so the buckets hold similar numbers of texts."""
    words = np.array([len(t.split()) for t in texts])
    edges = sorted(set(int(q) for q in np.quantile(words, np.linspace(0, 1, buckets + 1)[1:-1])))
    if not edges:
        return ["any length"] * len(texts)
    names, low = [], int(words.min())
    for e in edges + [None]:
        names.append(f"{low}-{e} words" if e is not None else f">{low - 1} words")
        low = (e or 0) + 1
    return [names[int(np.searchsorted(edges, w, side="left"))] for w in words]


def column_values(data_cfg, texts: list[str], columns: list[str]) -> dict[str, list[str]]:
    """The value of each column for each test text, looked up by text in the data file the test split came from."""
    source = data_cfg.test or data_cfg.path or data_cfg.train
    table = pick_split(
        load_table(source, data_cfg.format, data_cfg.encoding, data_cfg.encoding_errors, data_cfg.delimiter),
        "test",
        source,
    )
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{source}: no column {missing} for eval.slice_by/eval.sensitive_column (columns: "
            f"{', '.join(map(str, table.columns[:20]))}); fix the column names in eval:"
        )
    keyed = table.dropna(subset=[data_cfg.text_column]).drop_duplicates(data_cfg.text_column)
    keyed = keyed.set_index(keyed[data_cfg.text_column].astype(str))
    out = {}
    for c in columns:
        lookup = keyed[c].to_dict()
        out[c] = [UNKNOWN if pd.isna(v := lookup.get(t)) else str(v) for t in texts]
    return out


def slice_metrics(y, pred, groups: list[str], k: int, min_size: int = 20) -> dict:
    """Per value of one slicing: n, accuracy, macro-F1; the worst slice (of at least min_size items) and its gap."""
    y, pred, groups = np.asarray(y), np.asarray(pred), np.asarray(groups)
    overall = float(metric_value("macro_f1", y, pred, k))
    rows = {}
    for g in sorted(set(groups.tolist()), key=_natural):
        m = groups == g
        rows[g] = {
            "n": int(m.sum()),
            "accuracy": float(metric_value("accuracy", y[m], pred[m], k)),
            "macro_f1": float(metric_value("macro_f1", y[m], pred[m], k)),
        }
    eligible = {g: r for g, r in rows.items() if r["n"] >= min_size}
    worst = min(eligible, key=lambda g: eligible[g]["macro_f1"]) if eligible else None
    return {
        "slices": rows,
        "worst": worst,
        "gap": overall - eligible[worst]["macro_f1"] if worst else None,
        "min_size": min_size,
    }


def fairness(y, pred, sensitive: list[str], label_names: list[str]) -> dict:
    """Demographic-parity and equalized-odds differences (fairlearn) per class, one-vs-rest, and their maximum."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    y, pred, s = np.asarray(y), np.asarray(pred), np.asarray(sensitive)
    per_class = {}
    for k, name in enumerate(label_names):
        yt, yp = (y == k).astype(int), (pred == k).astype(int)
        per_class[name] = {
            "demographic_parity_difference": float(demographic_parity_difference(yt, yp, sensitive_features=s)),
            "equalized_odds_difference": float(equalized_odds_difference(yt, yp, sensitive_features=s)),
        }
    return {
        "groups": {g: int((s == g).sum()) for g in sorted(set(s.tolist()))},
        "per_class": per_class,
        "demographic_parity_difference": max(v["demographic_parity_difference"] for v in per_class.values()),
        "equalized_odds_difference": max(v["equalized_odds_difference"] for v in per_class.values()),
    }


def plot_slices(slices: dict, overall: float, path, title: str) -> None:
    """Horizontal bars of macro-F1 per slice, one panel per slicing; the overall value as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(slices),
        figsize=(4.2 * len(slices), 1.3 + 0.35 * max(len(s["slices"]) for s in slices.values())),
        squeeze=False,
    )
    for ax, (name, s) in zip(axes[0], slices.items()):
        keys = list(s["slices"])[:25]
        vals = [s["slices"][g]["macro_f1"] for g in keys]
        colors = ["C3" if g == s["worst"] else "C0" for g in keys]
        ax.barh([f"{g} (n={s['slices'][g]['n']})" for g in keys], vals, color=colors)
        ax.axvline(overall, color="k", ls="--", lw=1)
        ax.set_title(name, fontsize=9), ax.set_xlabel("macro-F1"), ax.set_xlim(0, 1), ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)


def _natural(text: str) -> list:
    """Sort key: "9-16 words" before "17-30 words", ">30 words" last."""
    return [(1, t) if not t.isdigit() else (0, int(t)) for t in re.split(r"(\d+)", text.lstrip("<=>"))] + [
        text.startswith(">")
    ]
