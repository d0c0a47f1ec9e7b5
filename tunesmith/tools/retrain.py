"""`tunesmith retrain models:/sentiment@production --new new.csv --feedback serve/ --out runs/`: the next version.

The candidate continues from the production model (`--from production`: its weights, adapters merged in; or
`--from base`: the parent's pretrained model) and trains on

- the new data's training part (the new data is split like any data: train / validation / a NEW test set, with
  near duplicates kept on one side),
- the feedback (`tunesmith feedback import`: logged inputs with their corrected labels; the model's errors among them),
- a replay sample of the parent's own training split (`--replay R`: R x the added rows, stratified; re-read from
  the parent's data and checked against its recorded fingerprint), which keeps what v1 knew (see docs/forgetting.md
  for the other remedies, which apply as in any run: the parent's `regularize:`, or `"regularize=[{kind: l2sp}]"`),

with every training row that duplicates (exactly or nearly, as the audit decides) a row of either test set dropped,
so neither benchmark leaks into training; the run's own audit then checks the result again. The parent's test set is
kept as it was (its rows from test_predictions.csv) as a fixed benchmark beside the new test set: the candidate
reports both (`eval.sets.old_test`), and `tunesmith promote --if-better` compares both models on both.

Files: OUT/.retrain/<name>-<time>/ (train/validation/test/old_test CSVs, the starting model) and, in the run folder,
retrain.json: the parent, the data added (rows, fingerprints, feedback ids), the replay, the rows dropped.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.dump import config_to_dict
from ..data.dedup import NearIndex, cross_matches
from ..data.splits import load_splits
from ..data.textkeys import normalize_text
from ..errors import ConfigError, DataError, RunError, TunesmithError
from ..evaluate.predictions import read_predictions
from ..runs.registry import describe_model_uri
from ..runs.run import Run, load_run
from ..utils import atomic_write_json, atomic_write_text, fingerprint
from .feedback import read_feedback


def retrain(
    model: str,
    new: str | Path | None = None,
    feedback: str | Path | None = None,
    out: str | Path = "runs",
    start: str = "production",
    replay: float = 1.0,
    new_test_size: float = 0.2,
    new_validation_size: float = 0.1,
    overrides: list[str] = (),
    name: str | None = None,
    say=print,
) -> Run:
    from ..engine.pipeline import finetune

    parent = load_run(model)
    if not parent.task.supports_compare or not parent.label_names or parent.predictor.input_kind != "text":
        raise RunError(f"{model}: retrain works on text classifiers for now; this run is {parent.task.name}")
    if start not in ("production", "base"):
        raise ConfigError(f"retrain: --from {start}: give production (continue from the model) or base")
    if new is None and feedback is None:
        raise ConfigError("retrain: give new labelled data (--new FILE), feedback (--feedback LOG_DIR|FILE), or both")
    if replay < 0:
        raise ConfigError(f"retrain: --replay must be 0 or more (got {replay})")
    cfg, labels = parent.config, parent.label_names
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = name or f"{cfg.name.removesuffix('-retrain')}-retrain"
    folder = Path(out) / ".retrain" / f"{name}-{stamp}"
    old_test = old_test_rows(parent)
    parts, record = [], {"parent": parent_record(model, parent), "start": start}
    new_val = new_test = pd.DataFrame(columns=["text", "label"])
    if new is not None:
        data = dataclasses.replace(
            cfg.data,
            path=str(new),
            train=None,
            validation=None,
            test=None,
            mix=None,
            max_samples=None,
            labels=labels,
            test_size=new_test_size,
            validation_size=new_validation_size,
        )
        splits = load_splits(data, cfg.seed, cfg.audit)
        new_train, new_val, new_test = (_frame(s, labels) for s in (splits.train, splits.validation, splits.test))
        parts.append(new_train.assign(source="new"))
        record["new"] = {
            "file": str(new),
            **{
                s.name: {"rows": len(s), "fingerprint": s.fingerprint()}
                for s in (splits.train, splits.validation, splits.test)
            },
        }
    if feedback is not None:
        fb = feedback_rows(feedback, labels)
        parts.append(fb.assign(source="feedback"))
        record["feedback"] = {
            "file": str(fb.attrs["file"]),
            "rows": len(fb),
            "errors": int(fb["error"].sum()) if "error" in fb else None,
            "fingerprint": fingerprint(fb["text"].tolist(), fb["label"].tolist()),
            "ids": fb["id"].tolist() if "id" in fb else [],
        }
    added = sum(len(p) for p in parts)
    if replay > 0:
        old = old_train_rows(parent)
        k = min(len(old), round(replay * added))
        sample = _stratified(old, k, cfg.seed)
        parts.append(sample.assign(source="replay"))
        record["replay"] = {
            "rows": len(sample),
            "of": len(old),
            "ratio": replay,
            "fingerprint": fingerprint(sample["text"].tolist(), sample["label"].tolist()),
        }
    train = pd.concat(parts, ignore_index=True)
    train, dropped = drop_test_duplicates(train, {"old test": old_test, "new test": new_test}, cfg.audit)
    record["dropped"] = dropped
    if train.empty:
        raise DataError("retrain: no training rows are left after removing those that duplicate a test set")
    old_val = old_validation_rows(parent, len(new_val))
    validation = pd.concat([new_val, old_val], ignore_index=True)
    files = {
        "train": folder / "train.csv",
        "validation": folder / "validation.csv",
        "old_test": folder / "old_test.csv",
    }
    if len(new_test):
        files["test"] = folder / "test.csv"
    for key, df in (("train", train), ("validation", validation), ("old_test", old_test), ("test", new_test)):
        if key in files:
            atomic_write_text(files[key], df.to_csv(index=False))
    record["sets"] = {"new_test": str(files.get("test", "")) or None, "old_test": str(files["old_test"])}
    counts = train["source"].value_counts().to_dict()
    say(
        f"retrain: {len(train)} training rows ("
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("new", "feedback", "replay") if s in counts)
        + f"), {sum(dropped.values())} dropped as duplicates of a test set; validation {len(validation)}, "
        f"new test {len(new_test)}, old test {len(old_test)}"
    )
    child = config_to_dict(cfg)
    child.update(name=name, output_dir=str(out))
    child["data"].update(
        path=None,
        train=str(files["train"]),
        validation=str(files["validation"]),
        test=str(files.get("test", files["old_test"])),
        text_column="text",
        label_column="label",
        labels=labels,
        max_samples=None,
        mix=None,
    )
    child["eval"]["sets"] = {**(child["eval"].get("sets") or {}), "old_test": str(files["old_test"])}
    child["eval"]["slice_by"] = []  # the parent's slice columns are not in the assembled files
    child["eval"]["sensitive_column"] = None
    child["model"]["name"] = starting_model(parent, start, folder)
    if parent.info.get("mlflow_uri") and child["tracking"]["backend"] == "mlflow":
        child["tracking"]["uri"] = parent.info["mlflow_uri"]
    from ..config.loader import load_config

    run = finetune(load_config(child, list(overrides)))
    atomic_write_json(run.path / "retrain.json", record)
    say(f"retrain: wrote {run.path / 'retrain.json'}; gate it with: tunesmith promote NAME --if-better {run.path}")
    return run


def parent_record(model: str, parent: Run) -> dict:
    out = {"model": str(model), "run": str(parent.path), "name": parent.info.get("name")}
    if str(model).startswith("models:/"):
        out.update(describe_model_uri(str(model)))
    return out


def _frame(split, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": split.texts, "label": [labels[i] for i in split.labels]})


def old_test_rows(parent: Run) -> pd.DataFrame:
    """The parent's test set exactly as it was tested (its rows and labels, from test_predictions.csv)."""
    path = parent.path / "test_predictions.csv"
    if not path.is_file():
        raise RunError(f"{parent.path}: no test_predictions.csv; retrain needs the parent's test set")
    df = read_predictions(path)
    return pd.DataFrame({"text": df["text"], "label": df["label"].astype(str)})


def old_splits(parent: Run):
    """The parent's splits, re-read from its data (once per run object) and checked against its recorded fingerprint."""
    if getattr(parent, "_old_splits", None) is None:
        parent._old_splits = _read_old_splits(parent)
    return parent._old_splits


def _read_old_splits(parent: Run):
    cfg = parent.config
    try:
        splits = load_splits(cfg.data, cfg.seed, cfg.audit)
    except TunesmithError as err:
        raise DataError(
            f"retrain: the parent's training data cannot be read again ({err}); restore it, or pass --replay 0"
        ) from None
    recorded = (parent.info.get("data", {}).get("splits", {}).get("train") or {}).get("fingerprint")
    if recorded and splits.train.fingerprint() != recorded:
        raise DataError(
            f"retrain: the parent's training data changed since it trained (train fingerprint "
            f"{splits.train.fingerprint()} != recorded {recorded}); restore it, or pass --replay 0"
        )
    return splits


def old_train_rows(parent: Run) -> pd.DataFrame:
    return _frame(old_splits(parent).train, parent.label_names)


def old_validation_rows(parent: Run, n: int) -> pd.DataFrame:
    """The parent's validation rows (all of them, or as many as the new validation set when that is smaller), so
    selection also watches the old distribution; none when its data cannot be read."""
    try:
        val = _frame(old_splits(parent).validation, parent.label_names)
    except DataError:
        return pd.DataFrame(columns=["text", "label"])
    return _stratified(val, min(len(val), n), parent.config.seed) if n else val


def feedback_rows(feedback: str | Path, labels: list[str]) -> pd.DataFrame:
    """The corrected items of a feedback file (or of the feedback.csv in a log's folder)."""
    path = Path(feedback)
    if path.is_dir():
        path = path / "feedback.csv"
    elif path.suffix == ".jsonl" and path.name != "feedback.jsonl":  # the prediction log itself
        path = path.parent / "feedback.csv"
    df = read_feedback(path)
    df = df[df["text"].astype(str).str.strip() != ""].copy()
    df["label"] = df["label"].astype(str)
    unknown = sorted(set(df["label"]) - set(labels))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not the model's ({labels}); correct them or drop those rows")
    if "error" in df:
        df["error"] = df["error"].astype(str).str.lower().isin(("true", "1"))
    df.attrs["file"] = path
    return df[[c for c in ("text", "label", "id", "error") if c in df.columns]]


def _stratified(df: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """k rows with the label shares of `df` (largest remainder), seeded."""
    if k >= len(df):
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    shares = df["label"].value_counts() / len(df) * k
    take = np.floor(shares).astype(int)
    take[(shares - take).sort_values(ascending=False).index[: k - take.sum()]] += 1
    rows = [g.iloc[rng.permutation(len(g))[: take[label]]] for label, g in df.groupby("label") if take[label]]
    return pd.concat(rows).sort_index().reset_index(drop=True)


def drop_test_duplicates(train: pd.DataFrame, tests: dict[str, pd.DataFrame], audit) -> tuple[pd.DataFrame, dict]:
    """Training rows with an exact or near duplicate in any test set are removed (counts per source and set);
    exact duplicates within training keep their first row (new, then feedback, then replay)."""
    keys = [normalize_text(t) for t in train["text"].astype(str)]
    drop = np.zeros(len(train), dtype=bool)
    dropped: dict[str, int] = {}
    for name, test in tests.items():
        if test.empty:
            continue
        test_keys = [normalize_text(t) for t in test["text"].astype(str)]
        index = NearIndex.for_audit(test_keys, audit) if audit.near_duplicates else None
        for m in cross_matches(test_keys, index, keys):
            if not drop[m.other]:
                drop[m.other] = True
                src = train["source"].iloc[m.other]
                dropped[f"{src} ~ {name}"] = dropped.get(f"{src} ~ {name}", 0) + 1
    seen = pd.Series(keys).duplicated().to_numpy()
    dropped["duplicates within training"] = int((seen & ~drop).sum())
    return train[~drop & ~seen].reset_index(drop=True), dropped


def starting_model(parent: Run, start: str, folder: Path) -> str:
    """The model the candidate fine-tunes: the parent's pretrained model, or the parent itself as a plain folder
    (adapters merged into the weights; the classification head kept)."""
    if start == "base":
        return parent.config.model.name
    m = parent.load()
    if not getattr(m.strategy, "mergeable", True):
        raise ConfigError(
            f"retrain: the adapters of {parent.path} cannot be merged into its weights (soft prompts, or a quantized "
            f"base); retrain it --from base"
        )
    target = folder / "start"
    if not (target / "config.json").is_file():
        merged = m.strategy.merged(m.model)
        merged.save_pretrained(target, safe_serialization=True)
        m.tokenizer.save_pretrained(target)
    return str(target)
