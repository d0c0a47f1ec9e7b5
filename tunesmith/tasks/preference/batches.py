"""What the loop eats for preference tuning: rows of G sequences sharing a prompt (pairs: chosen, rejected; KTO: the
completion and a mismatched one), padded together group-major so one forward pass scores them all.

A `Batches` (engine/batches.py) whose unit is the row: the loss is averaged over pairs (or KTO examples) across the
whole optimizer step, whatever the response lengths.
"""

from __future__ import annotations

import torch

from ...engine.batches import pad_to
from ..generative.formats import IGNORE


class SequenceGroups:
    packed = False

    def __init__(self, ids: list[list[list[int]]], labels: list[list[list[int]]], pad_id: int, desirable=None):
        self.ids, self.labels_, self.pad_id = ids, labels, pad_id
        self.groups = len(ids[0]) if ids else 2
        self.lengths = [sum(len(s) for s in row) for row in ids]
        self.desirable = desirable
        """KTO: one bool per row (is the completion a good one); None for pairs."""
        self.reference: torch.Tensor | None = None
        """[rows, groups] reference log-probabilities, once precomputed (batches carry them as `ref_logps`)."""

    def __len__(self) -> int:
        return len(self.ids)

    def units(self, rows: list[int]) -> int:
        return len(rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        """input_ids/attention_mask/labels of [groups x rows] sequences: all first sequences, then all second ones."""
        seqs = [(self.ids[r][g], self.labels_[r][g]) for g in range(self.groups) for r in rows]
        width = pad_to(max(len(ids) for ids, _ in seqs))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for i, (x, y) in enumerate(seqs):
            ids[i, : len(x)], mask[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), 1, torch.tensor(y)
        # The labels always travel: the preference loss and the log-probabilities both need the response masks.
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.desirable is not None:
            out["desirable"] = torch.tensor([self.desirable[r] for r in rows], dtype=torch.bool)
        if self.reference is not None:
            out["ref_logps"] = self.reference[rows]
        return out
