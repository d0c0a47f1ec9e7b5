"""What the training loop eats for generative tasks: padded batches, packed rows, encoder-decoder pairs.

Each class is a `Batches` (engine/batches.py): `units(rows)` are trained tokens, so the loss is averaged
over them across the whole optimizer step.
"""

from __future__ import annotations

import torch

from ...engine.batches import pad_to
from .formats import IGNORE


class LMData:
    """Causal-LM samples, one per row, right-padded to the longest in the batch (rounded up to 8)."""

    packed = False

    def __init__(self, ids: list[list[int]], labels: list[list[int]], pad_id: int = 0):
        self.ids, self.labels_, self.pad_id = ids, labels, pad_id
        self.lengths = [len(x) for x in ids]
        self.targets = [sum(1 for t in y if t != IGNORE) for y in labels]

    def __len__(self) -> int:
        return len(self.ids)

    def units(self, rows: list[int]) -> int:
        return sum(self.targets[r] for r in rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        width = pad_to(max(self.lengths[r] for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            n = self.lengths[r]
            ids[i, :n] = torch.tensor(self.ids[r])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(self.labels_[r])
        out = {"input_ids": ids, "attention_mask": mask}
        if with_targets:
            out["labels"] = labels
        return out


class PackedLMData(LMData):
    """Several samples per row (first-fit decreasing into `max_length` bins).

    Position ids restart at 0 for every sample and no attention mask is passed: transformers then
    builds a block-diagonal causal mask from the position ids, so packed samples cannot see each
    other. Padding at the end of a row is a segment of its own (positions from 0, labels -100).
    """

    packed = True

    def __init__(self, ids: list[list[int]], labels: list[list[int]], max_length: int, pad_id: int = 0):
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        bins: list[list[int]] = []
        room: list[int] = []
        for i in order:
            n = len(ids[i])
            for b, free in enumerate(room):
                if n <= free:
                    bins[b].append(i)
                    room[b] -= n
                    break
            else:
                bins.append([i])
                room.append(max_length - n)
        self.bins = bins
        self.samples_per_row = len(ids) / max(1, len(bins))
        self.positions = [[p for i in b for p in range(len(ids[i]))] for b in bins]
        super().__init__(
            [[t for i in b for t in ids[i]] for b in bins], [[t for i in b for t in labels[i]] for b in bins], pad_id
        )

    def examples(self, rows: list[int]) -> int:
        """Samples (not rows) in these rows: what samples/s counts."""
        return sum(len(self.bins[r]) for r in rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        width = pad_to(max(self.lengths[r] for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        pos = torch.arange(width).repeat(len(rows), 1)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            n = self.lengths[r]
            ids[i, :n] = torch.tensor(self.ids[r])
            pos[i, :n] = torch.tensor(self.positions[r])
            pos[i, n:] = torch.arange(width - n)
            labels[i, :n] = torch.tensor(self.labels_[r])
        out = {"input_ids": ids, "position_ids": pos}
        if with_targets:
            out["labels"] = labels
        return out


class Seq2SeqData:
    """Encoder inputs right-padded with an attention mask; decoder labels padded with -100."""

    packed = False

    def __init__(self, src: list[list[int]], tgt: list[list[int]], pad_id: int = 0):
        self.src, self.tgt, self.pad_id = src, tgt, pad_id
        self.lengths = [len(a) + len(b) for a, b in zip(src, tgt)]

    def __len__(self) -> int:
        return len(self.src)

    def units(self, rows: list[int]) -> int:
        return sum(len(self.tgt[r]) for r in rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        w_src = pad_to(max(len(self.src[r]) for r in rows))
        w_tgt = pad_to(max(len(self.tgt[r]) for r in rows))
        ids = torch.full((len(rows), w_src), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), w_src), dtype=torch.long)
        labels = torch.full((len(rows), w_tgt), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(self.src[r])] = torch.tensor(self.src[r])
            mask[i, : len(self.src[r])] = 1
            labels[i, : len(self.tgt[r])] = torch.tensor(self.tgt[r])
        out = {"input_ids": ids, "attention_mask": mask}
        if with_targets:
            out["labels"] = labels
        return out


# --------------------------------------------------------------------------------------------
# losses (summed over trained tokens; the loop divides by the step's token count)


def causal_lm_loss(model, inputs: dict) -> torch.Tensor:
    import torch.nn.functional as F

    labels = inputs.pop("labels")
    logits = model(**inputs, use_cache=False).logits
    if logits.shape[1] != labels.shape[1]:  # soft prompts (prompt tuning) prepend virtual positions
        logits = logits[:, -labels.shape[1] :]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    # Only the trained positions are upcast to fp32: the full [batch, length, vocab] fp32 copy is the
    # largest tensor of a small LM's step.
    return F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")


def seq2seq_loss(model, inputs: dict) -> torch.Tensor:
    import torch.nn.functional as F

    labels = inputs["labels"]
    logits = model(**inputs, use_cache=False).logits
    keep = labels != IGNORE
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")


def packing_is_exact(model, device) -> bool:
    """Does this model keep packed samples apart? Compare logits of two samples packed vs run alone."""
    was_training = model.training
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, vocab, (1, 7), generator=g), torch.randint(3, vocab, (1, 5), generator=g)
    try:
        with torch.no_grad():
            alone = model(input_ids=b.to(device), use_cache=False).logits.float()
            pos = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
            packed = model(
                input_ids=torch.cat([a, b], 1).to(device), position_ids=pos.to(device), use_cache=False
            ).logits.float()
        return bool(torch.allclose(packed[:, 7:], alone, atol=1e-3, rtol=1e-3))
    except (TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was_training)
