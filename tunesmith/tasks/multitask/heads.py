"""The heads of a multi-task model, and its loss.

One classification model carries every task's labels: its output layer has one block of rows per task
(task t owns label slots [start_t, end_t)). Each block is a task's own linear head on the shared pooled
representation: the rows are separate parameters, a task's softmax and loss see only its block, and a task's
gradient never reaches another task's rows. This is exactly "one head per task", and it keeps every strategy
(LoRA on the backbone with the heads trained in full, linear probes, ...), saving, export and serving unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ...engine.batches import Subset
from ..classification.batches import Tokenized

TAG = "task_index"
"""The key under which a multi-task batch says which task each row belongs to."""
LOG_VARS = "tunesmith_task_log_vars"
"""The learned per-task log-variances of uncertainty weighting (a training-only parameter, removed before saving)."""


@dataclass(frozen=True)
class Head:
    name: str
    start: int
    end: int
    labels: tuple[str, ...]
    weight: float = 1.0
    auxiliary: bool = False
    metric_weight: float = 1.0


def label_slots(tasks: dict[str, list[str]]) -> list[str]:
    """The model's output names: `task:label` for every task's labels, in the tasks' order."""
    return [f"{name}:{label}" for name, labels in tasks.items() for label in labels]


def heads_of(slots: list[str], specs: dict) -> list[Head]:
    """The heads of a model whose outputs are `slots` (`task:label`), with the config's weights (`tasks:`)."""
    heads, start = [], 0
    for name, spec in specs.items():
        labels = tuple(s.split(":", 1)[1] for s in slots if s.split(":", 1)[0] == name)
        heads.append(Head(name, start, start + len(labels), labels, spec.weight, spec.auxiliary, spec.metric_weight))
        start += len(labels)
    return heads


def combine(parts: list[Tokenized], heads: list[Head]) -> tuple[Tokenized, list[list[int]]]:
    """One split of every task as one `Tokenized` (targets are label slots) and the rows of each task."""
    ids, targets, rows = [], [], []
    for part, head in zip(parts, heads):
        rows.append(list(range(len(ids), len(ids) + len(part))))
        ids.extend(part.ids)
        targets.extend(head.start + y for y in part.targets)
    fingerprint = "+".join(p.fingerprint for p in parts)
    return Tokenized(ids, targets, parts[0].pad_id, fingerprint), rows


class TaskRows(Subset):
    """One task's rows of a combined split (any Batches: token ids, or a linear probe's cached features), with the
    task's own label ids: what the task's single-task evaluation reads."""

    def __init__(self, base, rows: list[int], head: Head):
        super().__init__(base, rows)
        self.start = head.start
        self.targets = [base.targets[r] - head.start for r in rows]

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        out = super().batch(rows, with_targets)
        if with_targets:
            out["labels"] = out["labels"] - self.start
        return out


def multitask_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task: torch.Tensor,
    heads: list[Head],
    class_weights: list[torch.Tensor | None],
    log_vars: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum over rows of weight_t x cross-entropy on task t's block (the loop divides by the rows of the step, so
    a single-task step's loss is weight_t x the task's mean cross-entropy, as its single-task run would have it).

    With `log_vars` (uncertainty weighting): weight_t x (exp(-s_t) x CE + s_t / 2) per row."""
    total = logits.new_zeros((), dtype=torch.float32)
    for g in torch.unique(task).tolist():
        h, mine = heads[g], task == g
        block = logits[mine, h.start : h.end].float()
        w = class_weights[g]
        ce = F.cross_entropy(
            block, labels[mine] - h.start, weight=None if w is None else w.to(block.device), reduction="none"
        )
        if log_vars is not None:
            s = log_vars[g]
            ce = torch.exp(-s) * ce + 0.5 * s
        total = total + h.weight * ce.sum()
    return total


def block_probs(logits: np.ndarray, head: Head) -> np.ndarray:
    """Softmax over a task's block of the outputs."""
    z = logits[:, head.start : head.end].astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


class HeadView(nn.Module):
    """The model as task `head`'s classifier: its logits are the task's block (everything that evaluates a
    text classifier works on it unchanged)."""

    def __init__(self, model: nn.Module, head: Head):
        super().__init__()
        self.inner, self.head = model, head

    def forward(self, **inputs):
        out = self.inner(**inputs)
        return SequenceClassifierOutput(logits=out.logits[..., self.head.start : self.head.end])


def add_log_vars(model: nn.Module, n: int) -> None:
    """Uncertainty weighting's per-task log-variances, trained with the model (s = 0: every task at weight 1)."""
    model.register_parameter(LOG_VARS, nn.Parameter(torch.zeros(n, device=next(model.parameters()).device)))


def pop_log_vars(*models: nn.Module) -> list[float] | None:
    """The learned log-variances, removed from the model so that the saved model is a plain classifier."""
    found = None
    for model in models:
        p = getattr(model, LOG_VARS, None)
        if isinstance(p, nn.Parameter):
            found = p.detach().float().cpu().tolist()
            delattr(model, LOG_VARS)
    return found
