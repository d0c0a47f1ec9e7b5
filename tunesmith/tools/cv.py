"""`tunesmith cv config.yaml --folds 5`: stratified k-fold cross-validation of one config.

All labelled rows the config yields (train + validation + test, after subsampling) are pooled and cut
into k folds, stratified by label; near duplicates (data.group_near_duplicates) stay in one fold, so
no fold leaks. Each fold is a normal run (its own folder and MLflow run, validation split from its
training part) and an MLflow child of one parent run that holds the mean, the std and cv.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.dump import config_to_dict
from ..config.loader import load_config
from ..config.schema import AuditConfig
from ..data.splits import load_splits
from ..data.splitting import near_duplicate_groups
from ..engine.pipeline import finetune
from ..errors import ConfigError, DataError
from ..tasks.registry import get_task_class
from ..tracking.parent_run import ParentRun
from ..utils import atomic_write_json, atomic_write_text

CV_METRICS = ["macro_f1", "accuracy", "weighted_f1", "loss"]


def cross_validate(config, overrides: list[str] | None = None, folds: int = 5) -> dict:
    """Train one run per fold; return {"path", "folds": [...], "summary": {metric: mean, std}}."""
    cfg = load_config(config, overrides)
    if not get_task_class(cfg.task).supports_cv:
        raise ConfigError(
            f"cv: cross-validation covers tasks that support it (text classification); this config has task: {cfg.task}"
        )
    if folds < 2:
        raise ConfigError(f"cv: --folds must be at least 2 (got {folds})")
    if cfg.data.group_column:
        raise ConfigError(
            "cv: data.group_column is not supported by cross-validation yet; remove it (near duplicates are still kept together)"
        )
    splits = load_splits(cfg.data, cfg.seed)
    texts = splits.train.texts + splits.validation.texts + splits.test.texts
    y = np.array(splits.train.labels + splits.validation.labels + splits.test.labels)
    fold_of = assign_folds(texts, y, folds, cfg.seed, cfg.data.group_near_duplicates)
    root = Path(cfg.output_dir) / f"{cfg.name}-cv-{time.strftime('%Y%m%d-%H%M%S')}"
    (root / "folds").mkdir(parents=True, exist_ok=False)
    parent = ParentRun(cfg, root.name, {"cv": True})
    rows = []
    try:
        for k in range(folds):
            run = finetune(_fold_config(cfg, root, k, texts, y, fold_of, splits.label_names))
            parent.adopt(run.info.get("mlflow_run_id"))
            test = run.metrics["test"]
            rows.append(
                {
                    "fold": k + 1,
                    "run": str(run.path),
                    "train_rows": int((fold_of != k).sum()),
                    "test_rows": int((fold_of == k).sum()),
                    **{m: test[m] for m in CV_METRICS},
                }
            )
    except BaseException:
        parent.end("FAILED")
        raise
    summary = {
        m: {"mean": float(np.mean([r[m] for r in rows])), "std": float(np.std([r[m] for r in rows], ddof=1))}
        for m in CV_METRICS
    }
    result = {
        "path": str(root),
        "folds": rows,
        "summary": summary,
        "k": folds,
        "rows": len(texts),
        "labels": splits.label_names,
    }
    atomic_write_json(root / "cv.json", result)
    atomic_write_text(root / "cv.md", cv_markdown(cfg.name, result))
    parent.finish(
        {f"cv_{m}_{k}": s[k] for m, s in summary.items() for k in ("mean", "std")}, [root / "cv.md", root / "cv.json"]
    )
    return result


def assign_folds(
    texts: list[str], y: np.ndarray, folds: int, seed: int, keep_near_duplicates: bool = True
) -> np.ndarray:
    """Fold index per row: stratified by label; with near-duplicate groups, a group never straddles folds."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < folds:
        raise DataError(
            f"cv: a label has only {counts[counts > 0].min()} rows, fewer than --folds {folds}; use fewer folds or more data"
        )
    if keep_near_duplicates:
        groups = near_duplicate_groups(
            pd.DataFrame({"text": texts, "label": y.astype(str)}), None, AuditConfig(seed=seed)
        )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(texts, y, groups)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(texts, y)
    fold_of = np.empty(len(y), dtype=int)
    for k, (_, test_rows) in enumerate(splitter):
        fold_of[test_rows] = k
    return fold_of


def _fold_config(
    cfg, root: Path, k: int, texts: list[str], y: np.ndarray, fold_of: np.ndarray, names: list[str]
) -> dict:
    """The config of fold k: the same settings, on parquet files of this fold's train/test rows."""
    folder = root / "folds" / str(k + 1)
    folder.mkdir(parents=True)
    frame = pd.DataFrame({"text": texts, "label": [names[i] for i in y]})
    for part, mask in (("train", fold_of != k), ("test", fold_of == k)):
        frame[mask].to_parquet(folder / f"{part}.parquet", index=False)
    d = config_to_dict(cfg)
    d["name"] = f"{cfg.name}-fold{k + 1}"
    d["data"].update(
        path=None,
        train=str(folder / "train.parquet"),
        validation=None,
        test=str(folder / "test.parquet"),
        format="auto",
        text_column="text",
        label_column="label",
        labels=names,
        max_samples=None,
        encoding="utf-8",
        encoding_errors="strict",
    )
    return d


def cv_markdown(name: str, result: dict) -> str:
    s = result["summary"]
    lines = [
        f"# {name}: {result['k']}-fold cross-validation",
        "",
        f"{result['rows']} rows, stratified by label, near duplicates kept in one fold; labels {', '.join(result['labels'])}.",
        "",
        "| | " + " | ".join(CV_METRICS) + " |",
        "|---|" + "---|" * len(CV_METRICS),
        "| **mean** | " + " | ".join(f"**{s[m]['mean']:.4f}**" for m in CV_METRICS) + " |",
        "| std | " + " | ".join(f"{s[m]['std']:.4f}" for m in CV_METRICS) + " |",
        "",
        "| fold | train rows | test rows | " + " | ".join(CV_METRICS) + " | run |",
        "|---|---|---|" + "---|" * len(CV_METRICS) + "---|",
    ]
    for r in result["folds"]:
        lines.append(
            f"| {r['fold']} | {r['train_rows']} | {r['test_rows']} | "
            + " | ".join(f"{r[m]:.4f}" for m in CV_METRICS)
            + f" | `{r['run']}` |"
        )
    return "\n".join(lines) + "\n"
