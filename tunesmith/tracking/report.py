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
    # regularisers' contributions (train_<name>) and forgetting curves (val_ref_<set>_<figure>), when the run has them
    terms = sorted({k for h in history for k in h if k.startswith("train_") and k != "train_loss"})
    # GRPO: the sampled completions' rewards go beside the validation reward, not on the loss axis
    rewards = [k for k in terms if k.startswith("train_reward")]
    terms = [k for k in terms if k not in rewards and k not in ("train_completion_tokens", "train_flat_groups")]
    curves = sorted({k for h in history for k in h if k.startswith("val_ref_")})
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(15 if curves else 10, 3.6))
    a, b = axes[0], axes[1]
    if train:
        a.plot(*zip(*train), label="train loss (task)" if terms else "train loss", lw=1)
    for k, name in enumerate(terms):
        points = [(h["step"], h[name]) for h in history if name in h]
        a.plot(*zip(*points), "--", lw=1, color=f"C{3 + k}", label=name.removeprefix("train_"))
    if val:
        a.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation loss")
        b.plot([v[0] for v in val], [v[2] for v in val], "o-", color="C2", label=f"validation {metric}")
    for k, name in enumerate(rewards):
        points = [(h["step"], h[name]) for h in history if name in h]
        b.plot(*zip(*points), "--", lw=1, color=f"C{4 + k}", label=name.replace("train_", "sampled ", 1))
    if rewards:
        b.legend(fontsize=8)
    a.set_xlabel("optimizer step"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.set_xlabel("optimizer step"), b.set_ylabel(f"validation {metric}"), b.grid(alpha=0.3)
    if curves:
        c = axes[2]
        for name in curves:
            points = [(h["step"], h[name]) for h in history if name in h]
            c.plot(*zip(*points), "o-", label=name.removeprefix("val_ref_"))
        c.set_xlabel("optimizer step"), c.set_ylabel("reference sets"), c.legend(), c.grid(alpha=0.3)
        c.set_title("what the original model knew", fontsize=10)
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
        f"- **Training**: {t['train_seconds']:.0f} s, {t['samples_per_second']:.1f} samples/s, "
        + (f"{t['tokens_per_second']:.0f} tokens/s, " if t.get("tokens_per_second") else "")
        + f"peak memory {t['peak_rss_mb']:.0f} MB | **saved**: {human_bytes(info['saved_bytes'])}",
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
        lines.append(_row(baseline_label(metrics["baseline"]), base))
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


def baseline_label(baseline: dict) -> str:
    """How reports name the classical baseline beside the fine-tuned model (its own `label`, else TF-IDF's)."""
    return baseline.get("label") or "TF-IDF + logistic regression"
