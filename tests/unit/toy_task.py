"""A task from outside the package: predict how many words a text has (regression), in under 80 lines."""

from __future__ import annotations

import pandas as pd
import torch

from tunesmith.engine.batches import map_batches
from tunesmith.tasks import Task, TaskData
from tunesmith.utils import fingerprint


class WordCounts:
    """A `Batches`: token ids + a float target per row; the loss is averaged over rows."""

    def __init__(self, ids, targets, pad_id):
        self.ids, self.targets, self.pad_id = ids, targets, pad_id
        self.lengths = [len(x) for x in ids]

    def __len__(self):
        return len(self.ids)

    def units(self, rows):
        return len(rows)

    examples = units

    def tokens(self, rows):
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows, with_targets=True):
        width = max(self.lengths[r] for r in rows)
        ids = torch.full((len(rows), width), self.pad_id)
        for i, r in enumerate(rows):
            ids[i, : self.lengths[r]] = torch.tensor(self.ids[r])
        out = {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}
        return out | ({"labels": torch.tensor([self.targets[r] for r in rows])} if with_targets else {})


class WordCountTask(Task):
    name = "word-count"
    summary = "How many words a text has (a regression toy)."
    metrics = ("mae", "loss")
    minimize = frozenset({"mae", "loss"})

    def load_data(self):
        df = pd.read_csv(self.cfg.data.path)
        texts = df["text"].tolist()
        parts = {"train": texts[:60], "validation": texts[60:80], "test": texts[80:]}
        return TaskData(
            parts, {k: {"rows": len(v), "fingerprint": fingerprint(v, v), "source": "csv"} for k, v in parts.items()}
        )

    def load_model(self, source, tokenizer, strategy, labels):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(source.location, num_labels=1)

    def encode(self, data, tokenizer):
        enc = lambda t: tokenizer(t, truncation=True, max_length=self.cfg.data.max_length)["input_ids"]  # noqa: E731
        return {
            k: WordCounts(enc(v), [float(len(x.split())) for x in v], tokenizer.pad_token_id)
            for k, v in data.splits.items()
        }

    def loss(self, model, inputs):
        target = inputs.pop("labels")
        return ((model(**inputs).logits.squeeze(-1).float() - target) ** 2).sum()

    def validate(self, model, batches, ctx):
        return self._score(model, batches["validation"], ctx)

    def test(self, model, trained, data, batches, before, ctx):
        return {"test": self._score(trained, batches["test"], ctx)}

    def _score(self, model, data, ctx):
        model.eval()
        pred = map_batches(data, 32, lambda x: model(**x).logits.squeeze(-1), ctx.rank, ctx.world)
        err = pred - torch.tensor(data.targets).numpy()
        return {"mae": float(abs(err).mean()), "loss": float((err**2).mean())}
