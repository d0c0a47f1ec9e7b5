"""What every classification task (text, images) writes and tracks at the end of a run, whatever its inputs are."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.figures import tracked_figures
from ..evaluate.markdown import add_to_report
from ..evaluate.metrics import headline, plot_confusion
from ..utils import atomic_write_json, atomic_write_text
from .model_card import write_model_card
from .report import write_report


def write_classification_outputs(
    run_dir: Path, cfg, info: dict, metrics: dict, names: list[str], column: str, items: list, labels, probs: np.ndarray
) -> None:
    """labels.json, test_predictions.csv (`column`: what each test item is: its text, or its image's path), the
    confusion matrix, report.md with the extended evaluation, MODEL_CARD.md (each written atomically)."""
    atomic_write_json(run_dir / "labels.json", names)
    preds = pd.DataFrame(
        {
            column: items,
            "label": [names[i] for i in labels],
            "predicted": [names[i] for i in probs.argmax(axis=1)],
            **{f"p_{n}": probs[:, k].round(5) for k, n in enumerate(names)},
        }
    )
    # Quote every field: pandas leaves a text with a bare "\r" unquoted, and readers split the row there.
    atomic_write_text(run_dir / "test_predictions.csv", preds.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))
    plot_confusion(
        metrics["test"]["confusion_matrix"], names, run_dir / "confusion_matrix.png", f"{info['name']}: test"
    )
    write_report(run_dir, cfg, info, metrics)
    add_to_report(run_dir, metrics)
    if (run_dir / "test_errors.png").is_file():  # an image task's grid of its most confident errors
        with open(run_dir / "report.md", "a", encoding="utf-8") as f:
            f.write("\n## The most confident test errors\n\n![most confident errors](test_errors.png)\n")
    write_model_card(run_dir)


def classification_tracked(metrics: dict) -> dict[str, float]:
    """The test and baseline headline metrics and the extended evaluation's figures, flat, for the tracker."""
    out = {f"test_{k}": v for k, v in headline(metrics.get("test") or {}).items()}
    base = (metrics.get("baseline") or {}).get("test")
    if base:
        out.update({f"baseline_test_{k}": v for k, v in headline(base).items()})
    return {**out, **tracked_figures(metrics)}


def classification_brief(metrics: dict) -> str:
    """One line for `tunesmith runs`: macro-F1, accuracy and the baseline's macro-F1."""
    test = metrics.get("test") or {}
    base = ((metrics.get("baseline") or {}).get("test") or {}).get("macro_f1")
    return f"F1 {_f(test.get('macro_f1'))}  acc {_f(test.get('accuracy'))}  baseline {_f(base)}"


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"
