"""What the loop eats (the `Batches` protocol) and how batches are planned, sharded and mapped.

Batches are planned *globally* (all processes, all accumulation micro-steps) from (seed, epoch)
alone, then each process takes its share. That makes the order independent of the number of
processes and lets a resumed run skip exactly the batches it has already seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn


class Batches(Protocol):
    """One split, encoded. Rows are indices; a task's encode() returns one of these per split."""

    lengths: list[int]
    """Length of each row (for length grouping and evaluation order)."""

    def __len__(self) -> int: ...

    def units(self, rows: list[int]) -> int:
        """What the loss is averaged over (examples for classification, trained tokens for language models)."""

    def examples(self, rows: list[int]) -> int:
        """Samples in these rows (a packed row holds several)."""

    def tokens(self, rows: list[int]) -> int:
        """Input tokens in these rows (throughput figures)."""

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        """Model inputs for these rows (+ targets under `labels` unless `with_targets` is False)."""

    # Optional: `upcoming(epoch, rows)` is told, before an epoch's training batches, which rows `batch` will be asked
    # for, in order (this process's shares): a split may prepare them ahead (images decode in worker processes) and
    # seed its augmentation by the epoch.


@dataclass
class Features:
    """Precomputed inputs per example (a linear probe's cached backbone features) and their targets."""

    x: torch.Tensor
    targets: list[int]

    def __post_init__(self):
        self.lengths = [1] * len(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def units(self, rows: list[int]) -> int:
        return len(rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return 0

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        out = {"features": self.x[rows]}
        if with_targets:
            out["labels"] = torch.tensor([self.targets[r] for r in rows], dtype=torch.long)
        return out


class Subset:
    """Some rows of an encoded split, as a `Batches` of their own (a data-mix source's or a task's test rows)."""

    def __init__(self, base, rows: list[int]):
        self.base, self.rows = base, rows
        self.lengths = [base.lengths[r] for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _map(self, rows: list[int]) -> list[int]:
        return [self.rows[r] for r in rows]

    def units(self, rows: list[int]) -> int:
        return self.base.units(self._map(rows))

    def examples(self, rows: list[int]) -> int:
        return self.base.examples(self._map(rows))

    def tokens(self, rows: list[int]) -> int:
        return self.base.tokens(self._map(rows))

    def batch(self, rows: list[int], with_targets: bool = True):
        return self.base.batch(self._map(rows), with_targets)


def plan_epoch(
    lengths: list[int], batch: int, seed: int, epoch: int, group_by_length: bool, drop_last: bool = False
) -> list[list[int]]:
    """Shuffled batches of indices for one epoch; deterministic in (seed, epoch).

    With length grouping, indices are shuffled, cut into mega-batches of 50 batches, sorted by
    length inside each mega-batch, cut into batches, and the batch order is shuffled again: batches
    hold similar lengths while the epoch stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch * 50
        order = [i for s in range(0, len(order), mega) for i in sorted(order[s : s + mega], key=lambda j: -lengths[j])]
    batches = [order[s : s + batch] for s in range(0, len(order), batch)]
    if drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    if group_by_length:
        rng.shuffle(batches)
    return batches


def plan_steps(
    data: Batches, global_micro: int, accum: int, seed: int, epoch: int, group: bool, world: int
) -> list[list[list[int]]]:
    """Optimizer steps of one epoch, each a list of global micro-batches.

    Steps are drawn first (so 16 x 1 and 8 x 2 accumulation see the same examples per step), then cut
    into micro-batches. Every process needs at least one example per micro-batch, or DDP would wait forever.
    A split that plans its own steps (`plan_steps`: a mixture of tasks or sources, engine/mixing.py) does so.
    """
    if hasattr(data, "plan_steps"):
        return data.plan_steps(global_micro, accum, seed, epoch, world)
    steps = []
    for step in plan_epoch(data.lengths, global_micro * accum, seed, epoch, group):
        micro = [step[i : i + global_micro] for i in range(0, len(step), global_micro)]
        micro = [m for m in micro if len(m) >= world]
        if micro:
            steps.append(micro)
    return steps


def plan_eval(lengths: list[int], batch: int) -> list[list[int]]:
    """Evaluation batches sorted by length (minimal padding); order restored by index later."""
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    return [order[s : s + batch] for s in range(0, len(order), batch)]


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch (strided, so shares have similar lengths)."""
    return indices[rank::world]


def pad_to(n: int, multiple: int = 8) -> int:
    """Round a padded width up: fewer distinct shapes (oneDNN scratch memory on CPU, tensor cores on GPU)."""
    return -(-n // multiple) * multiple


@torch.no_grad()
def map_batches(
    data: Batches, batch_size: int, fn: Callable[[dict], torch.Tensor], rank: int = 0, world: int = 1
) -> np.ndarray:
    """fn(inputs) -> a [batch, ...] tensor for every row, computed in shares across processes; all get all."""
    from accelerate.utils import gather_object

    mine: list[tuple[list[int], np.ndarray]] = []
    for global_batch in plan_eval(data.lengths, batch_size * world):
        rows = shard(global_batch, rank, world)
        if rows:
            mine.append((rows, fn(data.batch(rows, with_targets=False)).float().cpu().numpy()))
    parts = gather_object(mine) if world > 1 else mine
    first = parts[0][1]
    out = np.zeros((len(data), *first.shape[1:]), dtype=np.float32)
    for rows, values in parts:
        out[rows] = values
    return out


@torch.no_grad()
def mean_loss(
    model, data: Batches, loss: Callable, batch_size: int, autocast, reduce=None, rank: int = 0, world: int = 1
) -> float:
    """Loss per unit over `data` (the task's loss is summed over units), shared across processes by `reduce`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for global_batch in plan_eval(data.lengths, batch_size * world):
        rows = shard(global_batch, rank, world)
        if not rows:
            continue
        inputs = {k: v.to(device) for k, v in data.batch(rows).items()}
        with autocast():
            total[0] += loss(model, inputs).double()
        total[1] += data.units(rows)
    if world > 1:
        total = reduce(total, "sum")
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


def predict_logits(
    model: nn.Module, data, batch_size: int, autocast=nullcontext, rank: int = 0, world: int = 1
) -> np.ndarray:
    """float32 `model(**inputs).logits` for every row of `data`, in shares across processes; every process gets all."""
    model.eval()
    device = next(model.parameters()).device

    def logits(inputs):
        with autocast():
            return model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()

    return map_batches(data, batch_size, logits, rank, world)


def predict_probs(
    model: nn.Module, data, batch_size: int, autocast=nullcontext, rank: int = 0, world: int = 1
) -> np.ndarray:
    """Softmax of `model(**inputs).logits` for every row of `data`, any classifier (texts, images), in shares across
    processes; every process gets all."""
    model.eval()
    device = next(model.parameters()).device

    def probs(inputs):
        with autocast():
            return torch.softmax(model(**{k: v.to(device) for k, v in inputs.items()}).logits.float(), dim=-1)

    return map_batches(data, batch_size, probs, rank, world)
