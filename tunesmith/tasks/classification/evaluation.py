"""The extended evaluation of a text-classification run: intervals, extra sets, slices, fairness, calibration,
robustness and efficiency. `extended_evaluation` returns what goes into metrics.json (new keys only) and
writes the plots; `extended_markdown` renders it for report.md and MODEL_CARD.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...data.loaders import label_key, label_str, load_table, pick_split, require_columns
from ...errors import DataError, TunesmithError
from ...evaluate.calibration import calibration_report, plot_reliability
from ...evaluate.efficiency import measure_efficiency
from ...evaluate.figures import plot_run_slices
from ...evaluate.metrics import classification_metrics
from ...evaluate.robustness import plot_robustness, robustness
from ...evaluate.slices import column_values, fairness, length_buckets, slice_metrics
from ...evaluate.stats import metric_cis, metric_value
from .batches import predict_probs, texts_predictor


def extended_evaluation(
    cfg, run_dir: Path, model, trained, data: dict, tokenizer, splits, probs: np.ndarray, acc, say=print
) -> dict:
    """Everything beyond the headline test metrics, each part timed; a part the user misconfigured is reported, not fatal."""
    ev, k, y = cfg.eval, len(splits.label_names), splits.test.labels
    predict = texts_predictor(model, tokenizer, cfg.data.max_length, ev.batch_size, acc.autocast)
    out: dict = {}
    seconds: dict[str, float] = {}

    def part(name: str, fn):
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except TunesmithError as err:
            out[name] = {"error": str(err)}
            say(f"evaluation: {name} skipped: {err}")
        seconds[name] = round(time.perf_counter() - t0, 2)

    part(
        "test_ci",
        lambda: {
            "level": ev.ci_level,
            "resamples": ev.bootstrap_resamples,
            **metric_cis(y, probs, ev.ci_level, ev.bootstrap_resamples, cfg.seed),
        },
    )
    if ev.sets:
        part("sets", lambda: evaluate_sets(cfg, splits.label_names, predict))
    if ev.slice_by or ev.length_buckets or ev.sensitive_column:
        part("slices", lambda: _slices(cfg, splits, probs, run_dir))
    if ev.calibration:

        def calibration():  # the validation pass (for the temperature) counts in this part's time
            val = None
            if ev.temperature_scaling and len(splits.validation):
                val = predict_probs(trained, data["validation"], ev.batch_size, acc.autocast)
            return _calibration(y, probs, splits.validation.labels, val, run_dir)

        part("calibration", calibration)
    if ev.robustness:

        def robust():
            r = robustness(splits.test.texts, y, probs, predict, k, ev.robustness_samples, cfg.seed)
            plot_robustness(r, run_dir / "robustness.png", "test macro-F1 under perturbations")
            return r

        part("robustness", robust)
    if ev.efficiency:
        part(
            "efficiency",
            lambda: measure_efficiency(predict, splits.test.texts, ev.efficiency_batches, run_dir / "model"),
        )
    seconds["total"] = round(sum(seconds.values()), 2)
    out["extended_seconds"] = seconds
    say(
        f"evaluation: intervals, {'sets, ' if ev.sets else ''}slices, calibration, robustness, efficiency in {seconds['total']:.1f}s"
    )
    return out


def evaluate_sets(cfg, label_names: list[str], predict) -> dict:
    """Metrics (with intervals) on each `eval.sets` file; a set with unknown labels or columns is reported as an error."""
    out = {}
    for name, spec in cfg.eval.sets.items():
        try:
            texts, y = load_labelled(cfg.data, spec, label_names)
            probs = predict(texts)
            m = classification_metrics(y, probs, label_names)
            m["ci"] = metric_cis(y, probs, cfg.eval.ci_level, cfg.eval.bootstrap_resamples, cfg.seed)
            out[name] = {"data": spec, **m}
        except TunesmithError as err:
            out[name] = {"data": spec, "error": str(err)}
    return out


def load_labelled(
    data_cfg, spec: str, label_names: list[str], text_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], list[int]]:
    """Texts and label ids of another labelled file, with the run's columns (or the given ones) and label order."""
    df = pick_split(
        load_table(spec, "auto", data_cfg.encoding, data_cfg.encoding_errors, data_cfg.delimiter), "test", spec
    )
    require_columns(
        df,
        {"text": text_column or data_cfg.text_column, "label": label_column or data_cfg.label_column},
        spec,
        "pass --{role}-column (or use the data.{role}_column of the run)",
    )
    text_column, label_column = text_column or data_cfg.text_column, label_column or data_cfg.label_column
    df = df.dropna(subset=[text_column, label_column])
    labels = df[label_column].map(label_str)
    df, labels = df[labels.notna()], labels[labels.notna()]
    if data_cfg.normalize_labels:  # the spelling variants the run merged are merged here too
        known = {label_key(n): n for n in label_names}
        labels = labels.map(lambda v: v if v in label_names else known.get(label_key(v), v))
    unseen = sorted(set(labels) - set(label_names))
    if unseen:
        alike = {v: n for v in unseen for n in label_names if label_key(v) == label_key(n)}
        hint = f" ({', '.join(f'{v!r} is {n!r} spelt otherwise' for v, n in alike.items())}: set data.normalize_labels: true)"
        raise DataError(
            f"{spec}: labels {unseen} were not trained (the run knows {label_names}){hint if alike else ''}; "
            f"remove those rows"
        )
    if df.empty:
        raise DataError(f"{spec}: no labelled rows")
    index = {n: i for i, n in enumerate(label_names)}
    return df[text_column].astype(str).tolist(), [index[v] for v in labels]


def test_slices(cfg, splits, probs: np.ndarray) -> dict:
    """{slicing: per-slice metrics, worst, gap} plus fairness across eval.sensitive_column."""
    ev, texts, y, pred = cfg.eval, splits.test.texts, splits.test.labels, probs.argmax(1)
    k = len(splits.label_names)
    columns = list(dict.fromkeys([*ev.slice_by, *([ev.sensitive_column] if ev.sensitive_column else [])]))
    values = column_values(cfg.data, texts, columns) if columns else {}
    groups = {
        **({"text length": length_buckets(texts, ev.length_buckets)} if ev.length_buckets else {}),
        **{c: values[c] for c in ev.slice_by},
    }
    out = {name: slice_metrics(y, pred, g, k, ev.min_slice_size) for name, g in groups.items()}
    if ev.sensitive_column:
        out["fairness"] = {
            "column": ev.sensitive_column,
            **fairness(y, pred, values[ev.sensitive_column], splits.label_names),
        }
    return out


def _slices(cfg, splits, probs: np.ndarray, run_dir: Path) -> dict:
    out = test_slices(cfg, splits, probs)
    plot_run_slices(
        {
            "slices": out,
            "test": {"macro_f1": float(metric_value("macro_f1", splits.test.labels, probs.argmax(1), probs.shape[1]))},
        },
        run_dir / "slices.png",
    )
    return out


def _calibration(y, probs, y_val, probs_val, run_dir: Path) -> dict:
    report = calibration_report(y, probs, y_val, probs_val)
    plot_reliability(report, run_dir / "reliability.png", "test reliability")
    return report
