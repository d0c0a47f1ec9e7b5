"""MODEL_CARD.md of a classification run, built from the run folder alone (so it can be rebuilt any time).

Sections follow Mitchell et al., "Model Cards for Model Reporting": model details, intended use and
limits, data, metrics with uncertainty, slices, calibration, known weaknesses, how to load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..evaluate.markdown import (
    calibration_section,
    ci_table,
    efficiency_section,
    forgetting_section,
    robustness_section,
    sets_section,
    slices_section,
)
from ..evaluate.predictions import read_predictions
from ..models.loading import ALIASES
from ..utils import atomic_write_text, human_bytes
from .report import baseline_label


def write_model_card(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    info, metrics = _json(run_dir / "run.json"), _json(run_dir / "metrics.json")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    audit = _json(run_dir / "audit.json") if (run_dir / "audit.json").is_file() else None
    lines = [f"# Model card: {info['name']}", ""]
    lines += _details(info, cfg) + _intended_use(info, cfg, metrics) + _data(info, cfg, audit) + _metrics(metrics)
    lines += (
        forgetting_section(metrics) + sets_section(metrics) + slices_section(metrics) + calibration_section(metrics)
    )
    lines += (
        _weaknesses(run_dir, metrics)
        + robustness_section(metrics)
        + efficiency_section(metrics)
        + _how_to_load(run_dir, info)
    )
    path = run_dir / "MODEL_CARD.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _details(info: dict, cfg: dict) -> list[str]:
    m, p, strategy = info["model"], info["parameters"], dict(cfg["strategy"])
    name = strategy.pop("name")
    opts = ", ".join(f"{k}={v}" for k, v in strategy.items() if v not in (None, [], {})) or "defaults"
    t = cfg["train"]
    hyper = ", ".join(
        f"{k}={t[k]}"
        for k in (
            "epochs",
            "max_steps",
            "batch_size",
            "grad_accum",
            "lr",
            "weight_decay",
            "warmup_ratio",
            "scheduler",
            "max_grad_norm",
            "precision",
            "metric",
            "patience",
        )
        if t.get(k) is not None
    )
    timings = info.get("timings", {})
    return [
        "## Model details",
        "",
        f"- **Base model**: `{m['name']}` ({_source(m)})",
        f"- **Task**: {info.get('task')}, labels {', '.join(f'`{x}`' for x in info['data']['labels'])}",
        f"- **Strategy**: `{name}` ({opts}); trainable parameters {p['trainable']:,} of {p['total']:,} ({100 * p['trainable'] / p['total']:.2f}%)",
        f"- **Hyperparameters**: {hyper}; seed {cfg.get('seed')}",
        f"- **Trained**: {info.get('created', '?')} with tunesmith {info.get('tunesmith_version', '?')}, precision {info.get('precision')}, "
        f"{timings.get('train_seconds', 0):.0f} s; saved {human_bytes(info.get('saved_bytes', 0))}",
        *(
            [f"- **MLflow run**: `{info['mlflow_run_id']}` in `{info.get('mlflow_uri')}`"]
            if info.get("mlflow_run_id")
            else []
        ),
        "",
    ]


def _intended_use(info: dict, cfg: dict, metrics: dict) -> list[str]:
    d = cfg["data"]
    source = d.get("path") or d.get("train")
    worst = []
    for name, s in (metrics.get("slices") or {}).items():
        if isinstance(s, dict) and s.get("worst"):
            worst.append(f"{name} = {s['worst']} ({100 * s['gap']:.1f} points below overall)")
    return [
        "## Intended use and limits",
        "",
        f"- Intended for: assigning one of {len(info['data']['labels'])} labels ({', '.join(info['data']['labels'])}) to short texts "
        f"like those in `{source}` (column `{d['text_column']}`), truncated to {d['max_length']} tokens.",
        "- Measured only on held-out data from the same source (and any extra sets listed below); expect lower quality on other "
        "domains, languages or label definitions. Re-evaluate with `tunesmith eval RUN --data yours.csv` before relying on it.",
        *([f"- Weakest slices: {'; '.join(worst)}."] if worst else []),
        "- Not for decisions about people without human review: the errors below show what it gets wrong.",
        "",
    ]


def _data(info: dict, cfg: dict, audit: dict | None) -> list[str]:
    lines = ["## Data", "", "| split | rows | fingerprint | source |", "|---|---|---|---|"]
    for name, s in info["data"]["splits"].items():
        lines.append(f"| {name} | {s['rows']} | `{s['fingerprint']}` | `{s['source']}` |")
    lines.append("")
    lines += [f"- {n}" for n in info["data"].get("notes", [])]
    if audit:
        for name, counts in audit.get("balance", {}).items():
            total = sum(counts.values()) or 1
            lines.append(
                f"- Label balance ({name}): " + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.items())
            )
        lines += [f"- Audit: {w}" for w in audit.get("warnings", [])[:8]]
    return lines + [""]


def _metrics(metrics: dict) -> list[str]:
    test, base = metrics["test"], (metrics.get("baseline") or {}).get("test")
    lines = ["## Metrics", ""]
    ci = ci_table(metrics)
    lines += ci or [f"- test macro-F1 {test['macro_f1']:.4f}, accuracy {test['accuracy']:.4f} ({test['n']} items)", ""]
    if base:
        lines += [
            f"{baseline_label(metrics['baseline'])} baseline on the same split: macro-F1 {base['macro_f1']:.4f}, accuracy {base['accuracy']:.4f}.",
            "",
        ]
    lines += ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [
        f"| {n} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1-score']:.4f} | {int(r['support'])} |"
        for n, r in test["per_class"].items()
    ]
    return lines + [""]


def _weaknesses(run_dir: Path, metrics: dict, confusions: int = 3, errors: int = 5) -> list[str]:
    names = list(metrics["test"]["per_class"])
    cm = metrics["test"]["confusion_matrix"]
    pairs = sorted(
        ((cm[i][j], names[i], names[j]) for i in range(len(names)) for j in range(len(names)) if i != j and cm[i][j]),
        reverse=True,
    )
    lines = ["## Known weaknesses", ""]
    if pairs:
        lines.append(
            "Top confusions (true -> predicted): "
            + "; ".join(f"{a} -> {b} ({n})" for n, a, b in pairs[:confusions])
            + "."
        )
    preds = run_dir / "test_predictions.csv"
    if preds.is_file():
        df = read_predictions(preds)
        wrong = df[df["label"] != df["predicted"]].copy()
        if len(wrong):
            wrong["confidence"] = [float(row[f"p_{row['predicted']}"]) for _, row in wrong.iterrows()]
            lines += [
                "",
                "The most confident errors on the test set (confident errors are often label errors: compare audit.md):",
                "",
                f"| {'image' if 'image' in df.columns else 'text'} | label | predicted | confidence |",
                "|---|---|---|---|",
            ]
            for _, r in wrong.nlargest(errors, "confidence").iterrows():
                text = str(r["text"]).replace("|", "\\|").replace("\n", " ")
                lines.append(
                    f"| {text[:140]}{'...' if len(text) > 140 else ''} | {r['label']} | {r['predicted']} | {r['confidence']:.3f} |"
                )
    return lines + [""]


def _how_to_load(run_dir: Path, info: dict) -> list[str]:
    return [
        "## How to load it",
        "",
        "```python",
        "import tunesmith",
        f"run = tunesmith.load_run({str(run_dir)!r})  # or 'models:/NAME@production'",
        'run.predict(["some text"])',
        "```",
        "",
        "```bash",
        f'tunesmith predict {run_dir} --text "some text"',
        f"tunesmith register {run_dir} --name NAME   # then: tunesmith promote NAME 1 --to production",
        "```",
        "",
    ]


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _source(model: dict) -> str:
    """Where the base model came from, without machine-specific install paths for packaged aliases."""
    if model["kind"].startswith("alias"):
        alias = ALIASES.get(model["name"])
        return f"packaged alias: {alias.about}; `{alias.pip}`" if alias else "packaged alias"
    return f"{model['kind']}: `{model['location']}`"
