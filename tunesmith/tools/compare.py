"""`tunesmith compare RUN_A RUN_B [RUN_C ...]`: is the difference between runs real, and what changed?

Every run after the first is compared with the first (the reference) on the same test items:
metric deltas with paired-bootstrap intervals and paired permutation p-values (Holm-adjusted when
there are several runs), McNemar on correctness, per-class and per-slice deltas, the examples B
fixed and broke, and the config and data differences. Runs tested on different data are refused
(by the recorded test-set fingerprints) unless `allow_different_data`, which leaves only unpaired figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..config.dump import config_to_dict, flatten
from ..config.loader import load_config
from ..errors import RunError, TunesmithError
from ..evaluate.predictions import read_predictions
from ..evaluate.stats import holm, mcnemar, metric_cis, paired_delta, verdict
from ..runs.run import Run

COMPARED = ["macro_f1", "accuracy", "weighted_f1"]
NOISE_KEYS = {"name", "output_dir"}


def compare_runs(
    paths: list[str | Path],
    metric: str = "macro_f1",
    allow_different_data: bool = False,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    examples: int = 10,
    task: str | None = None,
) -> dict:
    """The whole comparison as a plain dict (what compare.json holds, and what the Markdown/HTML render).
    `task`: multi-task runs among `paths` are compared by that task's head (their folder RUN/tasks/<task>)."""
    if len(paths) < 2:
        raise RunError("compare: give at least two run folders (the first is the reference)")
    runs = [_load(task_view(Path(p), task)) for p in paths]
    if metric not in COMPARED:
        raise RunError(f"compare: --metric {metric} is not one of {', '.join(COMPARED)}")
    paired = _same_test_data(runs, allow_different_data)
    ref = runs[0]
    out = {
        "metric": metric,
        "level": level,
        "paired": paired,
        "runs": [_summary(r) for r in runs],
        "comparisons": [],
        "config_diff": config_diff(runs),
        "data_diff": data_diff(runs),
    }
    for other in runs[1:]:
        out["comparisons"].append(_pair(ref, other, metric, paired, resamples, level, seed, examples))
    if paired and len(runs) > 2:
        for c, p in zip(out["comparisons"], holm([c["metrics"][metric]["p"] for c in out["comparisons"]])):
            c["metrics"][metric]["p_holm"] = p
            c["verdict"] = verdict({**c["metrics"][metric], "p": p}, name_b=c["b"]) + " [Holm-adjusted]"
    return out


def task_view(path: Path, task: str | None) -> Path:
    """A multi-task run's folder for one task (`--task`); other runs as they are."""
    if not Run(path).task.composite:
        return path
    tasks = sorted(p.name for p in (path / "tasks").iterdir() if p.is_dir()) if (path / "tasks").is_dir() else []
    if task is None or task not in tasks:
        why = f"has no task {task!r}" if task else "is a multi-task run"
        raise RunError(f"{path}: {why}; pick the task to compare with --task ({', '.join(tasks) or 'none finished'})")
    return path / "tasks" / task


def _load(path: Path) -> dict:
    run = Run(path)
    if not run.task.supports_compare:
        raise RunError(
            f"{path}: compare works on runs whose task supports it (text classification); this one is {run.task.name}"
        )
    preds = path / "test_predictions.csv"
    if run.status != "complete" or not preds.is_file():
        raise RunError(f"{path}: the run is {run.status} and has no test_predictions.csv; compare finished runs")
    df = read_predictions(preds)
    cfg = _config(path)
    history = (
        [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines() if line.strip()]
        if (path / "history.jsonl").is_file()
        else []
    )
    name = f"{path.parent.parent.name}/{path.name}" if run.info.get("multitask") else path.name  # RUN/tasks/<task>
    return {"name": name, "path": str(path), "run": run, "preds": df, "config": cfg, "history": history}


def _config(path: Path) -> dict:
    """The run's config with every default filled in (so a diff shows values, not absent keys); raw YAML if it no longer loads."""
    try:
        return config_to_dict(load_config(path / "config.yaml"))
    except TunesmithError:
        return yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))


def _same_test_data(runs: list[dict], allow: bool) -> bool:
    """True when every run was tested on the same items in the same order (paired statistics are valid)."""
    prints = [r["run"].info.get("data", {}).get("splits", {}).get("test", {}).get("fingerprint") for r in runs]
    labels = [r["run"].label_names for r in runs]
    same = len(set(prints)) == 1 and prints[0] is not None and all(lab == labels[0] for lab in labels)
    if same and any(not r["preds"]["text"].equals(runs[0]["preds"]["text"]) for r in runs):
        same = False  # a fingerprint collision or edited file: do not pair
    if not same and not allow:
        detail = ", ".join(f"{r['name']}: test {p} labels {lab}" for r, p, lab in zip(runs, prints, labels))
        raise RunError(
            f"compare: the runs were tested on different data ({detail}); a paired comparison needs the same test set. "
            f"Pass --allow-different-data for unpaired figures only"
        )
    return same


def _summary(r: dict) -> dict:
    m, info = r["run"].metrics, r["run"].info
    test = m.get("test", {})
    return {
        "name": r["name"],
        "path": r["path"],
        "strategy": info.get("strategy"),
        "model": info.get("model", {}).get("name"),
        "test_fingerprint": info.get("data", {}).get("splits", {}).get("test", {}).get("fingerprint"),
        "n": test.get("n"),
        "metrics": {k: test.get(k) for k in COMPARED + ["loss"]},
        "ci": m.get("test_ci") or _ci(r),
        "per_class_f1": {k: v["f1-score"] for k, v in test.get("per_class", {}).items()},
        "ece": (m.get("calibration") or {}).get("ece"),
        "latency_ms_p50": (m.get("efficiency") or {}).get("batch_1_latency_ms_p50"),
        "train_seconds": info.get("timings", {}).get("train_seconds"),
        "saved_bytes": info.get("saved_bytes"),
        "history": [{k: h[k] for k in ("step", "train_loss", "val_loss") if k in h} for h in r["history"]],
    }


def _ci(r: dict) -> dict:
    """Intervals for runs recorded before tunesmith computed them: bootstrapped from test_predictions.csv."""
    names = r["run"].label_names
    probs = r["preds"][[f"p_{n}" for n in names]].to_numpy(dtype=float)
    return {"level": 0.95, **metric_cis(_ids(r, "label"), probs)}


def _ids(r: dict, column: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(r["run"].label_names)}
    return r["preds"][column].map(index).to_numpy()


def _pair(a: dict, b: dict, metric: str, paired: bool, resamples: int, level: float, seed: int, examples: int) -> dict:
    ta, tb = a["run"].metrics["test"], b["run"].metrics["test"]
    out = {
        "a": a["name"],
        "b": b["name"],
        "per_class": per_class_deltas(ta, tb),
        "slices": slice_deltas(a["run"].metrics, b["run"].metrics),
    }
    if not paired:
        out["metrics"] = {m: {"metric": m, "a": ta[m], "b": tb[m], "delta": tb[m] - ta[m]} for m in COMPARED}
        out["verdict"] = (
            f"{100 * (tb[metric] - ta[metric]):+.1f} {metric} points on different test data (not paired: no significance test)"
        )
        return out
    y, pa, pb = _ids(a, "label"), _ids(a, "predicted"), _ids(b, "predicted")
    k = len(a["run"].label_names)
    out["metrics"] = {m: paired_delta(y, pa, pb, k, m, level, resamples, seed) for m in COMPARED}
    out["mcnemar"] = mcnemar(y, pa, pb)
    out["verdict"] = verdict(out["metrics"][metric], name_b=b["name"])
    out["fixed"], out["broke"] = changed_examples(a, b, examples)
    out["forgetting"] = forgetting_deltas(a, b, level, resamples, seed)
    return out


def forgetting_deltas(a: dict, b: dict, level: float, resamples: int, seed: int) -> dict:
    """B - A on every reference set both runs measured on the same rows: task-A retention (paired bootstrap CI and
    permutation p on the same rows) and representation CKA (paired bootstrap over the reference rows)."""
    from safetensors.torch import load_file

    from ..forgetting import linear_cka
    from ..tasks.classification.forgetting import reference_file

    fa, fb = a["run"].metrics.get("forgetting") or {}, b["run"].metrics.get("forgetting") or {}
    out = {}
    for name, ma in fa.items():
        mb = fb.get(name)
        if not isinstance(ma, dict) or not isinstance(mb, dict) or ma.get("fingerprint") != mb.get("fingerprint"):
            continue
        files = [reference_file(r["path"], name, when) for r in (a, b) for when in ("before", "after")]
        if not all(f.is_file() for f in files):
            continue
        (_, after_a), (_, after_b) = (load_file(str(f)) for f in files[:2]), (load_file(str(f)) for f in files[2:])
        if ma["kind"] == "retention":
            y = after_a["y"].numpy()
            d = paired_delta(
                y,
                after_a["pred"].numpy(),
                after_b["pred"].numpy(),
                int(y.max()) + 1,
                "macro_f1",
                level,
                resamples,
                seed,
            )
            out[name] = {"kind": "retention", "measure": "macro_f1", **d}
        elif ma["kind"] == "drift":
            before_a, before_b = (
                load_file(str(files[0]))["features"].numpy(),
                load_file(str(files[2]))["features"].numpy(),
            )
            xa, xb = after_a["features"].numpy(), after_b["features"].numpy()
            rng = np.random.default_rng(seed)
            deltas = []
            for _ in range(min(resamples, 500)):
                rows = rng.integers(0, len(xa), len(xa))
                deltas.append(linear_cka(before_b[rows], xb[rows]) - linear_cka(before_a[rows], xa[rows]))
            low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
            out[name] = {
                "kind": "drift",
                "measure": "cka",
                "a": ma["cka"],
                "b": mb["cka"],
                "delta": mb["cka"] - ma["cka"],
                "low": float(low),
                "high": float(high),
                "level": level,
            }
    return out


def per_class_deltas(ta: dict, tb: dict) -> dict:
    return {
        c: {
            "a": ta["per_class"][c]["f1-score"],
            "b": tb["per_class"][c]["f1-score"],
            "delta": tb["per_class"][c]["f1-score"] - ta["per_class"][c]["f1-score"],
            "support": ta["per_class"][c]["support"],
        }
        for c in ta.get("per_class", {})
        if c in tb.get("per_class", {})
    }


def slice_deltas(ma: dict, mb: dict) -> dict:
    """{slicing: {slice: a, b, delta macro-F1, n}} for the slicings both runs recorded."""
    sa, sb = ma.get("slices") or {}, mb.get("slices") or {}
    out = {}
    for name in sa:
        if name == "fairness" or name not in sb or "slices" not in sa[name] or "slices" not in sb[name]:
            continue
        out[name] = {
            g: {
                "n": v["n"],
                "a": v["macro_f1"],
                "b": sb[name]["slices"][g]["macro_f1"],
                "delta": sb[name]["slices"][g]["macro_f1"] - v["macro_f1"],
            }
            for g, v in sa[name]["slices"].items()
            if g in sb[name]["slices"]
        }
    return out


def changed_examples(a: dict, b: dict, n: int) -> tuple[list[dict], list[dict]]:
    """Test items B gets right and A wrong (fixed), and the reverse (broke); the most confident first."""
    da, db = a["preds"], b["preds"]
    right_a, right_b = da["label"] == da["predicted"], db["label"] == db["predicted"]

    def rows(mask, conf_of: pd.DataFrame) -> list[dict]:
        idx = np.flatnonzero(mask.to_numpy())
        conf = np.array([float(conf_of.iloc[i][f"p_{conf_of.iloc[i]['predicted']}"]) for i in idx])
        order = idx[np.argsort(-conf)][:n] if len(idx) else idx
        return [
            {
                "text": da.iloc[i]["text"],
                "label": da.iloc[i]["label"],
                "a": da.iloc[i]["predicted"],
                "b": db.iloc[i]["predicted"],
            }
            for i in order
        ]

    return rows(~right_a & right_b, db), rows(right_a & ~right_b, db)


def config_diff(runs: list[dict]) -> list[dict]:
    """Settings that differ between the runs (the run name and output folder aside)."""
    flat = [flatten(r["config"]) for r in runs]
    keys = sorted(set().union(*flat))
    return [
        {"key": k, "values": [f.get(k) for f in flat]}
        for k in keys
        if k not in NOISE_KEYS and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1
    ]


def data_diff(runs: list[dict]) -> list[dict]:
    """Per split: rows, fingerprint and source of each run, and whether they are identical."""
    out = []
    for split in ("train", "validation", "test"):
        recs = [r["run"].info.get("data", {}).get("splits", {}).get(split, {}) for r in runs]
        out.append(
            {
                "split": split,
                "rows": [x.get("rows") for x in recs],
                "fingerprint": [x.get("fingerprint") for x in recs],
                "source": [x.get("source") for x in recs],
                "same": len({x.get("fingerprint") for x in recs}) == 1,
            }
        )
    return out
