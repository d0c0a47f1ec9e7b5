"""`tunesmith monitor MODEL --log serve/predictions.jsonl`: has the traffic drifted from what the model was tested on?

The reference is the model's held-out test split (its texts, and the model's own predictions and confidences on
them, from test_predictions.csv): held out like live traffic, so a model that generalises shows no "drift" between
the two, whereas its training rows would look more confident than any new data. `--reference RUN|FILE` uses another
run's test split or a file instead. Recent traffic comes from the server's prediction log (`--log`, optionally one
`--served` name) or a file of inputs (`--data`, predicted now). It is cut into windows (`--window 500` items or
`--window 1h|30m|2d` of log time); each window is compared with the reference:

- input drift: words per text and out-of-vocabulary rate (words the model's training split never had; the
  tokenizer's vocabulary when the training data is not at hand) by KS test and PSI; the inputs' embeddings from
  the model's own fine-tuned encoder by an MMD permutation test, with a classifier two-sample AUC as its effect size;
- prediction drift: predicted-label shares (chi-square, PSI) and the confidence distribution (KS, PSI);
- live quality, where feedback labels exist (`tunesmith feedback import`): accuracy and macro-F1 with bootstrap
  intervals, against the test figure.

The window's five drift tests are one family: their Holm-adjusted p-values against `alpha` decide the alert, so a
window of unshifted traffic alerts with probability at most `alpha`. Live macro-F1 whose interval lies wholly below
the test figure alerts too. The latest window decides the exit code of the command (3 = alert), so a cron job acts
on what is happening now; every window is reported (monitor.md / .html / .json / .png).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError, RunError, TunesmithError
from ..evaluate import drift
from ..evaluate.predictions import read_predictions
from ..evaluate.stats import metric_cis
from ..runs.record import read_info
from ..runs.run import Run, load_run
from .feedback import feedback_path, logged_items, read_feedback
from .monitor_report import TEST_NAMES, write_monitor

WORD = re.compile(r"\w+", re.UNICODE)
UNITS = {"m": 60, "h": 3600, "d": 86400}


def monitor(
    model: str | Path,
    log: str | Path | None = None,
    data: str | Path | None = None,
    reference: str | Path | None = None,
    served: str | None = None,
    window: str | None = None,
    feedback: str | Path | None = None,
    alpha: float = 0.05,
    psi_alert: float | None = None,
    min_window: int = 30,
    permutations: int = 500,
    max_rows: int = 1000,
    out: str | Path = "monitor",
    text_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    say=print,
) -> dict:
    run = load_run(model)
    if not run.label_names or run.predictor.input_kind != "text":
        raise RunError(f"{model}: monitor watches text classifiers; this run is {run.task.name}")
    if bool(log) == bool(data):
        raise ConfigError("monitor: give the recent traffic as --log PREDICTION_LOG or --data FILE (one of them)")
    if not 0 < alpha < 1:
        raise ConfigError(f"monitor: --alpha must be in (0, 1) (got {alpha})")
    ref = reference_rows(run, reference)
    cur = log_rows(run, log, served, feedback) if log else file_rows(run, data, text_column, label_column)
    windows = cut(cur, window, min_window)
    vocab, vocab_from = vocabulary(run)
    rng = np.random.default_rng(seed)
    ref = ref.iloc[np.sort(rng.choice(len(ref), max_rows, replace=False))] if len(ref) > max_rows else ref
    ref_feats = features(ref["text"].tolist(), vocab)
    say(
        f"monitor: reference {len(ref)} rows ({ref.attrs['source']}); {len(cur)} recent items in {len(windows)} windows"
    )
    ref_emb = run.predictor.embed(ref["text"].tolist())
    if ref_emb is None:
        raise RunError(f"{model}: monitor needs the model's own encoder; this {run.task.name} run has none")
    test = (run.metrics.get("test") or {}).get("macro_f1")
    results = []
    for i, (label, rows) in enumerate(windows):
        if len(rows) < min_window:
            results.append({"window": label, "n": len(rows), "skipped": f"fewer than {min_window} items"})
            continue
        live = live_quality(rows, run.label_names, test, seed)  # on every labelled item of the window
        n = len(rows)
        rows = rows.iloc[np.sort(rng.choice(n, max_rows, replace=False))] if n > max_rows else rows
        emb = run.predictor.embed(rows["text"].tolist())
        result = compare_window(ref, ref_feats, ref_emb, rows, emb, vocab, run.label_names, permutations, seed + i)
        result.update(window=label, n=n, tested=len(rows), live=live)
        decide(result, alpha, psi_alert)
        results.append(result)
        last_rows = rows
        say(window_line(result))
    tested = [r for r in results if "skipped" not in r]
    if not tested:
        raise DataError(f"monitor: no window has {min_window} items or more; use a larger --window or --min-window")
    latest = tested[-1]
    report = {
        "model": str(model),
        "run": str(run.path),
        "reference": ref.attrs["source"],
        "reference_rows": len(ref),
        "traffic": str(log or data),
        "served": served,
        "window": window or "all",
        "vocabulary": vocab_from,
        "alpha": alpha,
        "psi_alert": psi_alert,
        "test_macro_f1": test,
        "created": time.time(),
        "windows": results,
        "alert": latest["alert"],
        "alert_line": latest["alert_line"],
    }
    write_monitor(report, ref, last_rows, Path(out))
    say(latest["alert_line"])
    say(f"wrote {Path(out) / 'monitor.md'}, monitor.html, monitor.json, monitor.png")
    return report


# ---- the two samples
def reference_rows(run: Run, reference: str | Path | None) -> pd.DataFrame:
    """Texts, predicted labels and confidences of the reference: a run's test split, or a file (predicted now)."""
    source = Path(reference) if reference else run.path
    if source.is_dir():
        preds = source / "test_predictions.csv"
        if not preds.is_file():
            raise RunError(f"{source}: no test_predictions.csv to stand as the reference; give a finished run")
        df = read_predictions(preds)
        probs = [f"p_{n}" for n in run.label_names]
        if source.resolve() != run.path.resolve() or not set(probs) <= set(df.columns):
            df = predicted(run, df[["text"]].copy())
        else:
            df["score"] = df[probs].max(axis=1)
        df.attrs["source"] = f"test split of {read_info(source).get('name') or source.name}"
        return df
    df = file_rows(run, source, None, None)
    df.attrs["source"] = str(source)
    return df


def log_rows(run: Run, log, served: str | None, feedback) -> pd.DataFrame:
    items = logged_items(log, served)
    items = items[items["endpoint"] == "classify"]
    if items.empty:
        raise DataError(f"{log}: no classify answers{f' of {served!r}' if served else ''} in the log")
    models = sorted(items["model"].dropna().unique())
    if served is None and len(models) > 1:
        raise ConfigError(f"{log}: the log holds answers of {', '.join(models)}; pick the one to watch with --served")
    df = pd.DataFrame(
        {"id": items["id"], "time": items["time"], "text": items["input"].astype(str), "predicted": items["predicted"]}
    )
    df["score"] = items["score"].astype(float)
    probs = np.array([[(p or {}).get(n, np.nan) for n in run.label_names] for p in items["probs"]])
    for j, n in enumerate(run.label_names):
        df[f"p_{n}"] = probs[:, j]
    path = Path(feedback) if feedback else feedback_path(log)
    if path.is_file():
        fb = read_feedback(path)
        df["label"] = df["id"].map(dict(zip(fb["id"].astype(str), fb["label"].astype(str))))
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def file_rows(run: Run, data, text_column: str | None, label_column: str | None) -> pd.DataFrame:
    table, texts = run.predictor.read_inputs(str(data), text_column)
    df = predicted(run, pd.DataFrame({"text": texts}))
    column = label_column or run.config.data.label_column
    if column in table.columns:
        df["label"] = table[column].astype(str).where(table[column].notna()).to_numpy()
    df.attrs["source"] = str(data)
    return df


def predicted(run: Run, df: pd.DataFrame) -> pd.DataFrame:
    probs = run.predictor.predict_probs(df["text"].tolist())
    df["predicted"] = [run.label_names[k] for k in probs.argmax(1)]
    df["score"] = probs.max(1)
    for j, n in enumerate(run.label_names):
        df[f"p_{n}"] = probs[:, j]
    return df


def cut(df: pd.DataFrame, window: str | None, min_window: int) -> list[tuple[str, pd.DataFrame]]:
    """[(label, rows)]: everything, consecutive `N` items (a short tail joins the window before), or time buckets."""
    if not window:
        return [("all", df)]
    spec = str(window).strip()
    if spec.isdigit():
        size = int(spec)
        if size < 2:
            raise ConfigError(f"monitor: --window {spec}: give at least 2 items (or a time span like 1h)")
        starts = list(range(0, len(df), size)) or [0]
        if len(starts) > 1 and len(df) - starts[-1] < min_window:
            starts.pop()
        bounds = [*starts[1:], len(df)]
        return [(f"items {a}-{b - 1}", df.iloc[a:b]) for a, b in zip(starts, bounds)]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", spec)
    if not m:
        raise ConfigError(f"monitor: --window {spec}: give a count of items (500) or a span (30m, 1h, 2d)")
    if "time" not in df.columns or df["time"].isna().all():
        raise ConfigError(f"monitor: --window {spec} needs times: read the traffic from a prediction log (--log)")
    span = float(m.group(1)) * UNITS[m.group(2)]
    bucket = ((df["time"] - df["time"].min()) // span).astype(int)
    out = []
    for _, rows in df.groupby(bucket, sort=True):
        start = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rows["time"].min()))
        out.append((f"{start} UTC +{spec}", rows))
    return out


# ---- features and tests
def vocabulary(run: Run) -> tuple[set[str], str]:
    """Words of the run's training split (re-read from its data), else the whole words of its tokenizer."""
    from ..data.splits import load_splits

    cfg = run.config
    try:
        splits = load_splits(cfg.data, cfg.seed, cfg.audit)
        return {w for t in splits.train.texts for w in WORD.findall(t.lower())}, "the run's training split"
    except (TunesmithError, AttributeError, TypeError):
        tokenizer = run.load().tokenizer
        vocab = {w.lower() for w in tokenizer.get_vocab() if w.isalnum()}
        return vocab, "the tokenizer's whole-word vocabulary (the training data could not be read)"


def features(texts: list[str], vocab: set[str]) -> dict[str, np.ndarray]:
    words = [WORD.findall(t.lower()) for t in texts]
    return {
        "length": np.array([len(w) for w in words], dtype=float),
        "oov": np.array([sum(x not in vocab for x in w) / len(w) if w else 0.0 for w in words]),
    }


def compare_window(ref, ref_feats, ref_emb, rows, emb, vocab, labels, permutations, seed) -> dict:
    """Every drift statistic of one window against the reference."""
    feats = features(rows["text"].tolist(), vocab)
    return {
        "tests": drift.feature_tests(
            {**ref_feats, "confidence": ref["score"].to_numpy(float)},
            {**feats, "confidence": rows["score"].to_numpy(float)},
        ),
        "labels": drift.categorical_test(ref["predicted"].astype(str), rows["predicted"].astype(str), labels),
        "embedding": {
            **drift.mmd_test(ref_emb, emb, permutations=permutations, seed=seed),
            "classifier": drift.classifier_test(ref_emb, emb, seed=seed),
        },
    }


def live_quality(rows: pd.DataFrame, labels: list[str], test: float | None, seed: int) -> dict | None:
    """Accuracy and macro-F1 (with intervals) on the window's items that have feedback labels."""
    if "label" not in rows.columns:
        return None
    known = rows[rows["label"].isin(labels)]
    if len(known) < 10:
        return {"n": len(known), "note": "fewer than 10 labelled items"}
    y = known["label"].map({n: i for i, n in enumerate(labels)}).to_numpy()
    probs = known[[f"p_{n}" for n in labels]].to_numpy(float)
    if np.isnan(probs).any():  # answers logged without probabilities: the predicted label as a one-hot
        probs = np.eye(len(labels))[known["predicted"].map({n: i for i, n in enumerate(labels)}).to_numpy()]
    pred = probs.argmax(1)
    from ..evaluate.stats import metric_value

    ci = metric_cis(y, probs, resamples=1000, seed=seed)
    out = {
        "n": len(known),
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(metric_value("macro_f1", y, pred, len(labels))),
        "ci": {m: ci[m] for m in ("accuracy", "macro_f1")},
        "test_macro_f1": test,
    }
    out["below_test"] = bool(test is not None and ci["macro_f1"]["high"] < test)
    return out


def decide(result: dict, alpha: float, psi_alert: float | None) -> None:
    """The window's alert: Holm-adjusted p of the five drift tests below alpha, a PSI over `psi_alert`, or live
    macro-F1 wholly below the test figure."""
    p = {name: result["tests"][name]["p"] for name in ("length", "oov", "confidence")}
    p.update(labels=result["labels"]["p"], embedding=result["embedding"]["p"])
    result["p_holm"] = drift.holm(p)
    reasons = [
        f"{TEST_NAMES[k]} p={v:.2g}" for k, v in sorted(result["p_holm"].items(), key=lambda kv: kv[1]) if v < alpha
    ]
    if psi_alert is not None:
        psis = {**{k: v["psi"] for k, v in result["tests"].items()}, "labels": result["labels"]["psi"]}
        reasons += [f"{TEST_NAMES[k]} PSI {v:.2f}" for k, v in psis.items() if v >= psi_alert]
    live = result.get("live") or {}
    if live.get("below_test"):
        ci = live["ci"]["macro_f1"]
        reasons.append(
            f"live macro-F1 {live['macro_f1']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] below the test "
            f"{live['test_macro_f1']:.3f}"
        )
    result["alert"] = bool(reasons)
    result["reasons"] = reasons
    result["alert_line"] = (
        f"ALERT {result['window']} ({result['n']} items): " + "; ".join(reasons)
        if reasons
        else f"ok {result['window']} ({result['n']} items): no drift at alpha {alpha:g} (Holm over {len(p)} tests)"
    )


def window_line(r: dict) -> str:
    e = r.get("embedding") or {}
    live = r.get("live") or {}
    parts = [
        f"{r['window']}: n={r['n']}",
        f"MMD p={e.get('p', float('nan')):.3g} (AUC {e.get('classifier', {}).get('auc', float('nan')):.2f})",
        f"labels PSI {r['labels']['psi']:.2f}",
        f"confidence PSI {r['tests']['confidence']['psi']:.2f}",
        f"length PSI {r['tests']['length']['psi']:.2f}",
    ]
    if "macro_f1" in live:
        parts.append(f"live F1 {live['macro_f1']:.3f} (n={live['n']})")
    return "  " + ", ".join(parts) + ("  <- ALERT" if r["alert"] else "")
