"""Tokenise once, then build length-grouped batches padded only to their longest member.

Batches are planned *globally* (all processes, all accumulation micro-steps) from (seed, epoch)
alone, then each process takes its share. That makes the order independent of the number of
processes and lets a resumed run skip exactly the batches it has already seen.
"""

from __future__ import annotations

import random

import torch


def tokenize(tokenizer, texts: list[str], max_length: int, batch: int = 4096) -> list[list[int]]:
    """Token ids per text (truncated, unpadded)."""
    ids: list[list[int]] = []
    for i in range(0, len(texts), batch):
        ids.extend(tokenizer(texts[i : i + batch], truncation=True, max_length=max_length)["input_ids"])
    return ids


def plan_epoch(lengths: list[int], batch: int, seed: int, epoch: int, group_by_length: bool, drop_last: bool = False) -> list[list[int]]:
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


def plan_eval(lengths: list[int], batch: int) -> list[list[int]]:
    """Evaluation batches sorted by length (minimal padding); order restored by index later."""
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    return [order[s : s + batch] for s in range(0, len(order), batch)]


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch (strided, so shares have similar lengths)."""
    return indices[rank::world]


def collate(ids: list[list[int]], rows: list[int], pad_id: int, labels: list[int] | None = None, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Pad the chosen rows to their longest member (rounded up to a multiple of 8) and build the attention mask.

    Rounding keeps the number of distinct tensor shapes small: on CPU every new shape costs oneDNN
    scratch memory (measured: peak RSS 2.1 GB -> 1.4 GB for MiniLM + LoRA), and on GPUs multiples of 8 suit tensor cores.
    """
    longest = max((len(ids[r]) for r in rows), default=1)
    width = -(-longest // multiple) * multiple
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        seq = ids[r]
        input_ids[k, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[k, : len(seq)] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = torch.tensor([labels[r] for r in rows], dtype=torch.long)
    return out
