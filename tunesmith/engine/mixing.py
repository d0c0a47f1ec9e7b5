"""Training on a mixture of groups (the tasks of a multi-task run, the sources of a `data.mix`), one group per batch.

A `Mixture` wraps one split's encoded rows (any `Batches`) and says which rows belong to which group. It plans its
own optimizer steps (`plan_steps`, which the loop uses instead of the generic plan): an epoch has as many steps as one
pass over all rows would, each step (or each micro-batch, `per="micro-batch"`) is drawn from one group, and rows of a
group are taken in a fresh shuffled order per epoch, cycling when the group is up-sampled. Like the generic plan it
is global and a function of (seed, epoch) alone, so it shards across processes and resumes exactly.

How often each group is drawn:
    proportional   p_g = n_g / sum(n)                    (as if the groups were one file)
    temperature T  p_g = n_g^(1/T) / sum(n^(1/T))        (T > 1 up-samples small groups; T -> inf: uniform)
    weights        p_g = w_g / sum(w)                     (a data mix's configured shares)
    round-robin    groups in turn                         (uniform, deterministic order)
The draws of an epoch are stratified (largest remainder, then shuffled), so the realised shares equal p_g up to one
draw per epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

SAMPLINGS = ("proportional", "temperature", "weights", "round-robin")


def mixing_probs(
    sizes: Sequence[int], sampling: str, temperature: float = 1.0, weights: Sequence[float] | None = None
) -> list[float]:
    """How often each group is drawn (see the module docstring)."""
    if sampling == "proportional":
        raw = [float(n) for n in sizes]
    elif sampling == "temperature":
        raw = [float(n) ** (1.0 / temperature) for n in sizes]
    elif sampling == "weights":
        raw = [float(w) for w in weights or []]
    elif sampling == "round-robin":
        raw = [1.0] * len(sizes)
    else:
        raise ValueError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
    total = sum(raw)
    return [r / total for r in raw]


def stratified_draws(probs: Sequence[float], n: int, rng: random.Random) -> list[int]:
    """n group indices whose counts are n * p_g rounded by largest remainder, in a shuffled order."""
    exact = [p * n for p in probs]
    counts = [math.floor(x) for x in exact]
    for g in sorted(range(len(probs)), key=lambda g: counts[g] - exact[g])[: n - sum(counts)]:
        counts[g] += 1
    draws = [g for g, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(draws)
    return draws


class Mixture:
    """`base`'s rows in groups (`groups[g]`: row indices of `base`); a `Batches` that plans its own steps.

    `tag`: the key under which `batch` adds the group index of the rows (a [rows] long tensor), for a loss that
    needs to know its group (multi-task heads); None adds nothing (a data mix of one task)."""

    def __init__(
        self,
        base,
        groups: list[list[int]],
        probs: Sequence[float],
        sampling: str = "proportional",
        per: str = "step",
        tag: str | None = None,
        names: Sequence[str] | None = None,
    ):
        if any(not g for g in groups):
            raise ValueError("every group of a mixture needs at least one row")
        self.base, self.groups, self.probs = base, [list(g) for g in groups], list(probs)
        self.sampling, self.per, self.tag = sampling, per, tag
        self.names = list(names) if names else [str(g) for g in range(len(groups))]
        self.group_of = np.full(len(base), -1, dtype=np.int64)
        for g, rows in enumerate(self.groups):
            self.group_of[rows] = g
        self.lengths = base.lengths

    # ---- the Batches protocol, by way of the base
    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def units(self, rows: list[int]) -> int:
        return self.base.units(rows)

    def examples(self, rows: list[int]) -> int:
        return self.base.examples(rows)

    def tokens(self, rows: list[int]) -> int:
        return self.base.tokens(rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        out = self.base.batch(rows, with_targets)
        if self.tag:
            out[self.tag] = torch.as_tensor(self.group_of[rows], dtype=torch.long)
        return out

    # ---- the plan
    def draws(self, n: int, seed: int, epoch: int) -> list[int]:
        """The group of each of an epoch's n draws (steps, or micro-batches)."""
        if self.sampling == "round-robin":  # continues across epochs: epoch e starts where e - 1 stopped
            k = len(self.groups)
            return [(epoch * n + i) % k for i in range(n)]
        return stratified_draws(self.probs, n, random.Random(seed * 1_000_003 + epoch * 7919 + 17))

    def plan_steps(self, global_micro: int, accum: int, seed: int, epoch: int, world: int) -> list[list[list[int]]]:
        """Optimizer steps of one epoch, each a list of `accum` global micro-batches of `global_micro` rows."""
        n_steps = max(1, len(self) // (global_micro * accum))
        per_step = self.per == "step"
        draws = self.draws(n_steps if per_step else n_steps * accum, seed, epoch)
        streams = [
            _Stream(rows, random.Random(seed * 1_000_003 + epoch * 104_729 + g)) for g, rows in enumerate(self.groups)
        ]
        steps = []
        for s in range(n_steps):
            groups = [draws[s]] * accum if per_step else draws[s * accum : (s + 1) * accum]
            steps.append([streams[g].take(global_micro) for g in groups])
        return steps

    def realised(self, steps: int, global_micro: int, accum: int, seed: int, world: int) -> dict[str, dict]:
        """{group: {examples, share, configured}} over the first `steps` optimizer steps (what the run trained on)."""
        counts = [0] * len(self.groups)
        done, epoch = 0, 0
        while done < steps:
            for micro_batches in self.plan_steps(global_micro, accum, seed, epoch, world):
                if done >= steps:
                    break
                for rows in micro_batches:
                    counts[int(self.group_of[rows[0]])] += self.examples(rows)
                done += 1
            epoch += 1
        total = max(1, sum(counts))
        return {
            name: {"examples": c, "share": c / total, "configured": p, "rows": len(rows)}
            for name, c, p, rows in zip(self.names, counts, self.probs, self.groups)
        }


class _Stream:
    """A group's rows in shuffled order, reshuffled each time they run out."""

    def __init__(self, rows: list[int], rng: random.Random):
        self.rows, self.rng, self.order, self.at = rows, rng, [], 0

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.at >= len(self.order):
                self.order, self.at = list(self.rows), 0
                self.rng.shuffle(self.order)
            k = min(n - len(out), len(self.order) - self.at)
            out.extend(self.order[self.at : self.at + k])
            self.at += k
        return out
