"""report.md and the training-curve plot of a run folder."""

from __future__ import annotations

from pathlib import Path

from ..utils import atomic_write_figure, atomic_write_json, atomic_write_text, human_bytes


def plot_history(history: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h.get("val_loss"), h.get(f"val_{metric}")) for h in history if "val_loss" in h]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        a.plot(*zip(*train), label="train loss", lw=1)
    if val:
        a.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation loss")
        b.plot([v[0] for v in val], [v[2] for v in val], "o-", color="C2")
    a.set_xlabel("optimizer step"), a.set_ylabel("cross-entropy"), a.legend(), a.grid(alpha=0.3)
    b.set_xlabel("optimizer step"), b.set_ylabel(f"validation {metric}"), b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)


def write_report(run_dir: Path, cfg, info: dict, metrics: dict) -> None:
    test, base = metrics["test"], (metrics.get("baseline") or {}).get("test")
    t, p = info["timings"], info["parameters"]
    splits = info["data"]["splits"]
    lines = [
        f"# {info['name']}",
        "",
        f"- **Model**: `{cfg.model.name}` ({info['model']['kind']}) | **strategy**: `{info['strategy']}` | "
        f"**trainable parameters**: {p['trainable']:,} of {p['total']:,} ({100 * p['trainable'] / p['total']:.2f}%)",
        f"- **Precision**: {info['precision']} | **processes**: {info['processes']} | **best step**: {metrics['best_step']} of "
        f"{metrics['steps']}{' (early stop)' if metrics['stopped_early'] else ''}",
        f"- **Training**: {t['train_seconds']:.0f} s, {t['samples_per_second']:.1f} samples/s, {t['tokens_per_second']:.0f} tokens/s, "
        f"peak memory {t['peak_rss_mb']:.0f} MB | **saved**: {human_bytes(info['saved_bytes'])}",
        "- **Data**: " + ", ".join(f"{k} {v['rows']} rows (`{v['fingerprint']}`)" for k, v in splits.items()),
        *[f"- Data note: {n}" for n in info["data"]["notes"]],
        "",
        "## Test metrics",
        "",
        "| | macro-F1 | accuracy | weighted-F1 | macro-precision | macro-recall |",
        "|---|---|---|---|---|---|",
        _row("fine-tuned", test),
    ]
    if base:
        lines.append(_row("TF-IDF + logistic regression", base))
    lines += ["", "## Per class (test)", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, r in test["per_class"].items():
        lines.append(
            f"| {name} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1-score']:.4f} | {int(r['support'])} |"
        )
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![training curves](training_curves.png)", ""]
    lines += [
        "## Load it",
        "",
        "```python",
        "import tunesmith",
        f"run = tunesmith.load_run({str(run_dir)!r})",
        'run.predict(["some text"])',
        "```",
        "",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))


def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['macro_f1']:.4f} | {m['accuracy']:.4f} | {m['weighted_f1']:.4f} | {m['macro_precision']:.4f} | {m['macro_recall']:.4f} |"


def write_basic_artifacts(run_dir: Path, metrics: dict, history: list[dict], metric: str) -> None:
    """What every run folder holds whatever its task: metrics.json, history.jsonl and training_curves.png."""
    import json

    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    plot_history(history, metric, run_dir / "training_curves.png")
