"""What a multi-task run writes and how it predicts.

RUN/                  metrics.json (tasks, the selection figures, the realised mix), report.md, MODEL_CARD.md,
                      labels.json (the output slots `task:label`), multitask_curves.png, model/
RUN/tasks/<name>/     the task as a text-classification run folder (run.json, config.yaml, metrics.json with
                      intervals and baseline, test_predictions.csv, report.md, MODEL_CARD.md): `tunesmith compare`
                      pairs it with a single-task run on the same test rows.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ...config.dump import save_config
from ...engine.batches import predict_logits
from ...errors import RunError
from ...evaluate.metrics import classification_metrics
from ...runs.record import RUN_FILE
from ...utils import atomic_write_json, atomic_write_text, folder_size
from ..base import Prediction, Predictor
from ..classification.batches import Tokenized, tokenize
from ..classification.evaluation import load_labelled
from .heads import Head, block_probs, heads_of


def write_multitask_outputs(task, run_dir: Path, metrics: dict, history: list[dict], data, info: dict, ctx) -> None:
    atomic_write_json(run_dir / "labels.json", data.labels)
    model_bytes = folder_size(run_dir / "model")
    for h, (name, sub) in zip(task.heads, task.subtasks.items()):
        sub_dir, part = run_dir / "tasks" / name, data.splits[name]
        sub_info = {
            **info,
            "name": f"{info['name']}/{name}",
            "task": sub.name,
            "status": "complete",
            "data": {"splits": part.summary, "labels": part.labels, "notes": part.notes},
            "multitask": {"run": str(run_dir), "task": name, "auxiliary": h.auxiliary},
        }
        atomic_write_json(sub_dir / RUN_FILE, sub_info)
        save_config(sub.cfg, sub_dir / "config.yaml")
        sub_metrics = dict(metrics["tasks"][name])
        if isinstance(sub_metrics.get("efficiency"), dict):  # the model is the whole run's
            sub_metrics["efficiency"] = {**sub_metrics["efficiency"], "model_size_bytes": model_bytes}
        prefix = f"{name}_"
        best = {k[len(prefix) :]: v for k, v in (metrics.get("validation_best") or {}).items() if k.startswith(prefix)}
        sub_metrics.update(
            best_step=metrics["best_step"],
            steps=metrics["steps"],
            stopped_early=metrics["stopped_early"],
            validation_best=best,
            mix=metrics["mix"],
        )
        sub.write_artifacts(sub_dir, sub_metrics, task_history(history, name), part, sub_info, ctx)
    plot_task_curves(history, task.heads, task.cfg.train.metric, run_dir / "multitask_curves.png")
    text = report(task, metrics, info)
    atomic_write_text(run_dir / "report.md", text)
    atomic_write_text(run_dir / "MODEL_CARD.md", text.replace(f"# {info['name']}", f"# Model card: {info['name']}", 1))


def task_history(history: list[dict], name: str) -> list[dict]:
    """The run's history as one task's: its `val_<task>_<metric>` under `val_<metric>` (train loss is the run's)."""
    out = []
    for h in history:
        if not any(k.startswith("val_") for k in h):
            out.append(h)
            continue
        row = {k: v for k, v in h.items() if not k.startswith("val_")}
        row.update({f"val_{k[len(name) + 5 :]}": v for k, v in h.items() if k.startswith(f"val_{name}_")})
        out.append(row)
    return out


def plot_task_curves(history: list[dict], heads: list[Head], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for h in heads:
        points = [(r["step"], r[f"val_{h.name}_{metric}"]) for r in history if f"val_{h.name}_{metric}" in r]
        if points:
            ax.plot(
                *zip(*points),
                marker="o",
                ms=3,
                ls="--" if h.auxiliary else "-",
                label=h.name + (" (aux)" if h.auxiliary else ""),
            )
    points = [(r["step"], r[f"val_{metric}"]) for r in history if f"val_{metric}" in r]
    if points:
        ax.plot(*zip(*points), color="black", lw=2, label="selection (primary mean)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(task, metrics: dict, info: dict) -> str:
    mt, t = task.cfg.multitask, info["timings"]
    lines = [
        f"# {info['name']}",
        "",
        f"- **Multi-task**: {len(task.heads)} tasks on `{task.cfg.model.name}` with strategy `{info['strategy']}`; "
        f"{mt.sampling} sampling{f' (T={mt.temperature:g})' if mt.sampling == 'temperature' else ''}, one task per "
        f"{mt.batches}, {mt.loss_weights} loss weights",
        f"- **Best step** {metrics['best_step']} of {metrics['steps']}{' (early stop)' if metrics['stopped_early'] else ''}, "
        f"selected on validation {task.cfg.train.metric} of the primary task(s)",
        f"- **Training**: {t['train_seconds']:.0f} s, {t['samples_per_second']:.1f} samples/s, peak memory {t['peak_rss_mb']:.0f} MB",
        "",
        "## Per task (test)",
        "",
        "| task | role | train rows | weight | drawn (configured) | drawn (realised) | macro-F1 | 95% CI | accuracy | baseline macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h in task.heads:
        m, mix = metrics["tasks"][h.name], metrics["mix"][h.name]
        ci = (m.get("test_ci") or {}).get("macro_f1") or {}
        base = ((m.get("baseline") or {}).get("test") or {}).get("macro_f1")
        lines.append(
            f"| [{h.name}](tasks/{h.name}/report.md) | {'auxiliary' if h.auxiliary else 'primary'} | {mix['rows']} | "
            f"{h.weight:g} | {100 * mix['configured']:.1f}% | {100 * mix['share']:.1f}% | {m['test']['macro_f1']:.4f} | "
            + (f"[{ci['low']:.4f}, {ci['high']:.4f}]" if ci else "-")
            + f" | {m['test']['accuracy']:.4f} | {'-' if base is None else f'{base:.4f}'} |"
        )
    if metrics.get("uncertainty"):
        lines += [
            "",
            "## Learned task weights (uncertainty weighting)",
            "",
            "| task | log-variance s | weight x exp(-s) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {n} | {u['log_var']:.4f} | {u['effective_weight']:.4f} |" for n, u in metrics["uncertainty"].items()
        ]
    lines += [
        "",
        "Did the extra tasks help? Train the primary task alone with the same settings and compare on its test rows:",
        "",
        f"    tunesmith compare SINGLE_TASK_RUN {info.get('path', 'RUN')} --task {task.heads[0].name}",
        "",
        "![validation per task](multitask_curves.png)",
        "",
        "![training curves](training_curves.png)",
        "",
        'Predict with one task\'s head: `tunesmith predict RUN --task NAME --text ...`; serve: `/v1/classify` with `"task": NAME`.',
        "",
        "Each task's own report and model card (data, audit, intervals, slices, calibration, intended use): "
        + ", ".join(f"[{h.name}](tasks/{h.name}/MODEL_CARD.md)" for h in task.heads)
        + ".",
        "",
    ]
    return "\n".join(lines)


class MultiTaskPredictor(Predictor):
    """Predictions of one task's head (`task=`; default: the first primary task)."""

    @functools.cached_property
    def heads(self) -> list[Head]:
        """The run's heads (read once: predict and every served request ask)."""
        return heads_of(self.run.label_names, self.run.config.tasks)

    def head(self, task: str | None) -> Head:
        heads = self.heads
        if task is None:
            return next(h for h in heads if not h.auxiliary)
        for h in heads:
            if h.name == task:
                return h
        raise RunError(
            f"{self.run.path}: no task {task!r} in this multi-task run; its tasks: {', '.join(h.name for h in heads)}"
        )

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        m = self.run.load()
        ids = tokenize(m.tokenizer, list(texts), self.run.config.data.max_length)
        return predict_logits(m.model, Tokenized(ids, [0] * len(ids), m.tokenizer.pad_token_id), batch_size, m.autocast)

    def predict_probs(self, texts: list[str], batch_size: int = 64, task: str | None = None) -> np.ndarray:
        return block_probs(self.logits(texts, batch_size), self.head(task))

    def predict(self, texts: list[str], batch_size: int = 64, task: str | None = None):
        h = self.head(task)
        out = []
        for row in self.predict_probs(texts, batch_size, h.name):
            k = int(row.argmax())
            out.append(Prediction(h.labels[k], float(row[k]), {n: float(p) for n, p in zip(h.labels, row)}))
        return out

    def evaluate(self, data: str, text_column=None, label_column=None, task: str | None = None, **_) -> dict:
        h = self.head(task)
        data_cfg = self.run.config.tasks[h.name].data
        texts, y = load_labelled(data_cfg, data, list(h.labels), text_column, label_column)
        metrics = classification_metrics(y, self.predict_probs(texts, task=h.name), list(h.labels))
        return {**metrics, "data": str(data), "task": h.name}
