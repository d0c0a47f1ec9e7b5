"""Text classification batches: token ids per text (tokenised once), padded per batch; the loss and probabilities."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...engine.batches import pad_to, predict_probs


def tokenize(tokenizer, texts: list[str], max_length: int, batch: int = 4096) -> list[list[int]]:
    """Token ids per text (truncated, unpadded)."""
    ids: list[list[int]] = []
    for i in range(0, len(texts), batch):
        ids.extend(tokenizer(texts[i : i + batch], truncation=True, max_length=max_length)["input_ids"])
    return ids


def collate(
    ids: list[list[int]], rows: list[int], pad_id: int, labels: list[int] | None = None, multiple: int = 8
) -> dict[str, torch.Tensor]:
    """Pad the chosen rows to their longest member (rounded up to a multiple of 8) and build the attention mask.

    Rounding keeps the number of distinct tensor shapes small: on CPU every new shape costs oneDNN
    scratch memory (measured: peak RSS 2.1 GB -> 1.4 GB for MiniLM + LoRA), and on GPUs multiples of 8 suit tensor cores.
    """
    width = pad_to(max((len(ids[r]) for r in rows), default=1), multiple)
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


class Tokenized:
    """Token ids per example (unpadded) and label ids: a `Batches` whose units are examples."""

    def __init__(self, ids: list[list[int]], targets: list[int], pad_id: int = 0, fingerprint: str = ""):
        self.ids, self.targets, self.pad_id, self.fingerprint = ids, targets, pad_id, fingerprint
        self.lengths = [len(x) for x in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def units(self, rows: list[int]) -> int:
        return len(rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        return collate(self.ids, rows, self.pad_id, self.targets if with_targets else None)


def cross_entropy_sum(model: nn.Module, inputs: dict, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over the batch's examples (optionally class-weighted)."""
    labels = inputs.pop("labels")
    logits = model(**inputs).logits
    weight = class_weights.to(logits.device) if class_weights is not None else None
    return F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum")


def texts_predictor(model, tokenizer, max_length: int, batch_size: int, autocast):
    """predict(texts) -> class probabilities, with the run's tokenizer and truncation."""

    def predict(texts: list[str]) -> np.ndarray:
        ids = tokenize(tokenizer, list(texts), max_length)
        return predict_probs(model, Tokenized(ids, [0] * len(ids), tokenizer.pad_token_id), batch_size, autocast)

    return predict
