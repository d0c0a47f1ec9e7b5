"""Multi-task fine-tuning: several text-classification tasks trained together on one backbone.

A multi-task run is a task that composes tasks: each entry of `tasks:` is a ClassificationTask with its own data
(its splits, audit, label set, class weights), and this task drives them through the one engine:

    each task's data + audit -> one model whose output layer holds a head per task (heads.py) -> batches drawn
    from one task at a time (engine/mixing.py: proportional / temperature / round-robin) -> loss weight_t x the
    task's mean cross-entropy (or uncertainty-weighted) -> validation: every task's metrics, selection on the
    weighted mean of the primary tasks' metric -> each task tested as its own classifier (intervals, baseline,
    slices, calibration, ...) in `tasks/<name>/`, a folder `tunesmith compare` reads like a single-task run.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np

from ...data.splits import TextSplit
from ...engine.batches import predict_logits
from ...engine.mixing import Mixture, mixing_probs
from ...errors import ConfigError
from ...evaluate.metrics import METRIC_NAMES, classification_metrics
from ...models.loading import load_classifier
from ...tracking.classification import classification_tracked
from ..base import Findings, Task, TaskData
from ..classification import ClassificationTask
from .heads import (
    TAG,
    HeadView,
    TaskRows,
    add_log_vars,
    block_probs,
    combine,
    heads_of,
    label_slots,
    multitask_loss,
    pop_log_vars,
)
from .outputs import MultiTaskPredictor, write_multitask_outputs

SCALARS = [m for m in METRIC_NAMES if m != "loss"]


class TaskSplits(dict):
    """{task: its TaskData}; `.train` / `.validation` / `.test`: every task's rows of the split, labelled by output
    slot (what tools that read a classifier's test split, e.g. export parity, see)."""

    def __init__(self, parts: dict[str, TaskData], heads):
        super().__init__(parts)
        self.heads = heads

    def _split(self, name: str) -> TextSplit:
        texts, labels = [], []
        for h, d in zip(self.heads, self.values()):
            split = getattr(d.splits, name)
            texts += split.texts
            labels += [h.start + y for y in split.labels]
        return TextSplit(name, texts, labels, "all tasks")

    train = property(lambda self: self._split("train"))
    validation = property(lambda self: self._split("validation"))
    test = property(lambda self: self._split("test"))


class MultiTask(Task):
    name = "multi-task"
    summary = "Several labelled text tasks on one backbone, a head each; did the extra tasks help? (`tasks:`)"
    metrics = ClassificationTask.metrics
    uses = ClassificationTask.uses
    supports_compare = False  # compare a task's folder: `tunesmith compare SINGLE RUN --task NAME`
    serves = frozenset({"classify"})
    composite = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.subtasks = {
            name: ClassificationTask(dataclasses.replace(cfg, task=spec.task, data=spec.data, tasks={}))
            for name, spec in cfg.tasks.items()
        }
        self.heads = []

    # ---- data: each task's own
    def load_data(self) -> TaskData:
        parts = {name: sub.load_data() for name, sub in self.subtasks.items()}
        return self._combined(parts)

    def _combined(self, parts: dict[str, TaskData]) -> TaskData:
        slots = label_slots({name: d.labels for name, d in parts.items()})
        self.heads = heads_of(slots, self.cfg.tasks)
        summary = {
            split: {
                "rows": sum(d.summary[split]["rows"] for d in parts.values()),
                "fingerprint": "+".join(d.summary[split]["fingerprint"] for d in parts.values()),
                "source": ", ".join(f"{n}: {d.summary[split]['source']}" for n, d in parts.items()),
            }
            for split in ("train", "validation", "test")
        }
        notes = [f"{name}: {note}" for name, d in parts.items() for note in d.notes]
        record = {"tasks": {n: {"splits": d.summary, "labels": d.labels} for n, d in parts.items()}}
        return TaskData(TaskSplits(parts, self.heads), summary, slots, notes, record)

    def check_data(self, data: TaskData, tokenizer, source=None) -> Findings:
        found = {name: sub.check_data(data.splits[name], tokenizer, source) for name, sub in self.subtasks.items()}

        def save(run_dir: Path) -> None:
            for name, f in found.items():
                if f.save:
                    (run_dir / "tasks" / name).mkdir(parents=True, exist_ok=True)
                    f.save(run_dir / "tasks" / name)

        return Findings(
            lines=[f"{name}: {line}" for name, f in found.items() for line in f.lines],
            record={"audit": {name: f.record.get("audit") for name, f in found.items()}},
            metrics={f"{name}.{k}": v for name, f in found.items() for k, v in f.metrics.items()},
            save=save,
        )

    def hold_out_test(self, data: TaskData) -> TaskData:
        return self._combined({n: sub.hold_out_test(data.splits[n]) for n, sub in self.subtasks.items()})

    def check_strategy(self, strategy) -> None:
        for sub in self.subtasks.values():
            sub.check_strategy(strategy)

    # ---- model: one output block per task
    def load_model(self, source, tokenizer, strategy, labels: list[str]):
        m = self.cfg.model
        self.heads = heads_of(labels, self.cfg.tasks)
        return load_classifier(
            source, labels, tokenizer.pad_token_id, m.revision, m.trust_remote_code, strategy.quantize
        )

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        self._parts = {name: sub.encode(data.splits[name], tokenizer) for name, sub in self.subtasks.items()}
        self._class_weights = [sub.class_weights for sub in self.subtasks.values()]
        out, self._rows = {}, {}
        for split in ("train", "validation", "test"):
            out[split], self._rows[split] = combine([p[split] for p in self._parts.values()], self.heads)
        return out

    def train_batches(self, model, batches: dict, strategy, ctx):
        mt = self.cfg.multitask
        sizes = [len(r) for r in self._rows["train"]]
        probs = mixing_probs(sizes, mt.sampling, mt.temperature)
        self.mixture = Mixture(
            batches["train"], self._rows["train"], probs, mt.sampling, mt.batches, TAG, self._names()
        )
        if mt.loss_weights == "uncertainty":
            add_log_vars(model, len(self.heads))
        effective = [p * h.weight for p, h in zip(probs, self.heads)]
        shares = ", ".join(
            f"{h.name} {100 * p:.0f}% x weight {h.weight:g}{' (auxiliary)' if h.auxiliary else ''}"
            for h, p in zip(self.heads, probs)
        )
        ctx.say(f"multi-task: {mt.sampling} sampling, one task per {mt.batches}: {shares}")
        ctx.record["multitask"] = {
            "sampling": mt.sampling,
            "per": mt.batches,
            "loss_weights": mt.loss_weights,
            "draw_share": dict(zip(self._names(), probs)),
            "effective_weight": dict(zip(self._names(), np.array(effective) / sum(effective))),
        }
        return self.mixture

    def _names(self) -> list[str]:
        return [h.name for h in self.heads]

    def loss(self, model, inputs: dict):
        task, labels = inputs.pop(TAG), inputs.pop("labels")
        logits = model(**inputs).logits
        log_vars = getattr(getattr(model, "module", model), "tunesmith_task_log_vars", None)
        return multitask_loss(logits, labels, task, self.heads, self._class_weights, log_vars)

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        logits = predict_logits(
            model, batches["validation"], self.cfg.eval.batch_size, ctx.autocast, ctx.rank, ctx.world
        )
        per = {}
        for h, rows, part in zip(self.heads, self._rows["validation"], self._parts.values()):
            per[h.name] = classification_metrics(
                part["validation"].targets, block_probs(logits[rows], h), list(h.labels)
            )
        return self.selection(per)

    def selection(self, per: dict[str, dict]) -> dict[str, float]:
        """Every task's scalar metrics (`<task>_<metric>`), and under plain names the weighted mean over the primary
        tasks (the selection metric; `loss`: over all tasks by loss weight, the objective's own figure)."""
        out = {f"{n}_{k}": v for n, m in per.items() for k, v in m.items() if isinstance(v, float)}
        primary = [h for h in self.heads if not h.auxiliary]
        total = sum(h.metric_weight for h in primary)
        for k in SCALARS:
            if all(k in per[h.name] for h in primary):
                out[k] = sum(h.metric_weight * per[h.name][k] for h in primary) / total
        out["loss"] = sum(h.weight * per[h.name]["loss"] for h in self.heads) / sum(h.weight for h in self.heads)
        return out

    def after_fit(self, model, trained) -> None:
        self.log_vars = pop_log_vars(model, trained)

    # ---- after training: each task tested as its own classifier, in tasks/<name>/
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        out = {}
        for g, (h, (name, sub)) in enumerate(zip(self.heads, self.subtasks.items())):
            sub_ctx = copy.copy(ctx)
            sub_ctx.run_dir = ctx.run_dir / "tasks" / name
            sub_ctx.run_dir.mkdir(parents=True, exist_ok=True)
            ctx.say(f"testing task {name}")
            mine = {split: TaskRows(batches[split], self._rows[split][g], h) for split in ("validation", "test")}
            out[name] = sub.test(HeadView(model, h), HeadView(trained, h), data.splits[name], mine, {}, sub_ctx)
        if not ctx.is_main:
            return {}
        metrics = {"tasks": out, "test": self.selection({n: m["test"] for n, m in out.items()})}
        if getattr(self, "log_vars", None) is not None:
            metrics["uncertainty"] = {
                h.name: {"log_var": s, "effective_weight": h.weight * float(np.exp(-s))}
                for h, s in zip(self.heads, self.log_vars)
            }
        return metrics

    def write_artifacts(self, run_dir, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx) -> None:
        t = self.cfg.train
        metrics["mix"] = self.mixture.realised(
            metrics["steps"], t.batch_size * ctx.world, t.grad_accum, self.cfg.seed, ctx.world
        )
        super().write_artifacts(run_dir, metrics, history, data, info, ctx)
        write_multitask_outputs(self, run_dir, metrics, history, data, info, ctx)

    def headline(self, metrics: dict) -> dict[str, float]:
        test = metrics.get("test") or {}
        keys = [self.cfg.train.metric, *(f"{h.name}_{k}" for h in self.heads for k in ("macro_f1", "accuracy"))]
        return {k: test[k] for k in keys if isinstance(test.get(k), float)}

    def tracked(self, metrics: dict) -> dict[str, float]:
        """The selection figures (`test_<metric>`), and every task's test figures with intervals (`<task>.test_...`)."""
        out = {f"test_{k}": v for k, v in (metrics.get("test") or {}).items() if k in METRIC_NAMES}
        for name, m in metrics["tasks"].items():
            out.update({f"{name}.{k}": v for k, v in classification_tracked(m).items()})
        for name, r in (metrics.get("mix") or {}).items():
            out[f"{name}.drawn_share"] = r["share"]
        return out

    def brief(self, metrics: dict) -> str:
        test = metrics.get("test") or {}
        return "  ".join(f"{n} F1 {test.get(f'{n}_macro_f1', float('nan')):.4f}" for n in self.cfg.tasks) or "-"

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        lines = ["", f"{'task':16}{'':12}{'macro-F1':>10}{'95% CI':>18}{'baseline':>10}"]
        for h in self.heads:
            m = metrics["tasks"][h.name]
            ci = (m.get("test_ci") or {}).get("macro_f1") or {}
            base = ((m.get("baseline") or {}).get("test") or {}).get("macro_f1")
            interval = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if "low" in ci else "-"
            base = "-" if base is None else f"{base:.4f}"
            role = "auxiliary" if h.auxiliary else "primary"
            lines.append(f"{h.name:16}{role:12}{m['test']['macro_f1']:>10.4f}{interval:>18}{base:>10}")
        shares = ", ".join(f"{n} {100 * r['share']:.0f}%" for n, r in metrics["mix"].items())
        lines.append(f"trained on: {shares} of the examples; each task's report in tasks/<name>/")
        return lines

    def predictor(self, run):
        return MultiTaskPredictor(run)

    def references(self, model, tokenizer, ctx) -> dict:
        if self.cfg.eval.reference or self.cfg.regularize:
            raise ConfigError("eval.reference / regularize: a multi-task run does not measure forgetting yet")
        return {}
