"""Parity of a classifier export: logits of the exported model and of the trained run on the same token ids.

Rows: the first N texts of the run's test split, tokenized by the run's tokenizer with the run's max_length,
in batches of 32 texts of similar length (shortest first: little padding). Measured: max and mean |logit diff|, agreement of the predicted labels, macro-F1 and
accuracy of each against the gold labels, the share of texts the exported tokenizer turns into the same ids,
and batch-1 / batch-32 latency (median of 5 repeats) of PyTorch (the merged fp32 model) and of the export.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..evaluate.metrics import classification_metrics
from .parity import load_test_split, max_abs_diff, median_ms

BATCH = 32


@dataclass
class ClassifierInputs:
    texts: list[str]
    """The test texts, shortest first (batches of similar lengths pad little); labels and ids in the same order."""
    labels: list[int]
    label_names: list[str]
    ids: list[list[int]]
    batches: list[dict]
    source: str
    max_length: int
    first_ids: list[list[int]]
    """The ids of the split's first BATCH rows, in the split's order: what latency is measured on."""


def classifier_inputs(run, tokenizer, rows: int, say=print) -> ClassifierInputs:
    """The first `rows` test texts of the run, tokenized as the run's predictor tokenizes them."""
    data, source = load_test_split(run, say)
    test = data.splits.test
    n = min(rows, len(test.texts))
    max_length = run.config.data.max_length
    ids = tokenizer(list(test.texts[:n]), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(n), key=lambda i: len(ids[i]))
    texts = [test.texts[i] for i in order]
    labels = [int(test.labels[i]) for i in order]
    sorted_ids = [ids[i] for i in order]
    batches = [pad(tokenizer, sorted_ids[i : i + BATCH]) for i in range(0, n, BATCH)]
    names = data.labels or run.label_names
    return ClassifierInputs(texts, labels, names, sorted_ids, batches, source, max_length, ids[:BATCH])


def pad(tokenizer, ids: list[list[int]]) -> dict:
    """input_ids and attention_mask of a batch, padded on the tokenizer's side to its longest row."""
    out = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


@torch.no_grad()
def torch_logits(model, batches: list[dict]) -> np.ndarray:
    """float32 logits of a PyTorch classifier, without autocast (the reference every export is held to)."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu().numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def compare_classifier(
    reference: np.ndarray, exported: np.ndarray, inputs: ClassifierInputs, export_tokenizer=None
) -> dict:
    """The parity figures of a classifier export (tolerances are applied by the caller)."""
    names, y = inputs.label_names, inputs.labels
    ref_m = classification_metrics(y, softmax(reference), names)
    exp_m = classification_metrics(y, softmax(exported), names)
    out = {
        "rows": len(y),
        "source": inputs.source,
        "max_abs_logit_diff": max_abs_diff(reference, exported),
        "mean_abs_logit_diff": float(np.mean(np.abs(reference - exported))) if reference.size else 0.0,
        "label_agreement": float(np.mean(reference.argmax(1) == exported.argmax(1))) if len(y) else 1.0,
        "metric": _metric("macro_f1", ref_m, exp_m),
        "other_metrics": [_metric("accuracy", ref_m, exp_m)],
    }
    if export_tokenizer is not None:
        again = export_tokenizer(inputs.texts, truncation=True, max_length=inputs.max_length)["input_ids"]
        out["tokenizer_agreement"] = float(np.mean([a == b for a, b in zip(again, inputs.ids)])) if y else 1.0
    return out


def latency(torch_model, export_logits, inputs: ClassifierInputs, tokenizer, repeats: int = 5) -> dict:
    """Median milliseconds per call at batch 1 and batch 32 (the first test rows), PyTorch fp32 vs the export."""
    sizes = {"batch_1": 1, "batch_32": min(BATCH, len(inputs.first_ids))}
    out: dict = {"pytorch": {}, "export": {}}
    device = next(torch_model.parameters()).device
    torch_model.eval()
    for name, n in sizes.items():
        if n == 0:
            continue
        batch = pad(tokenizer, inputs.first_ids[:n])
        on_device = {k: v.to(device) for k, v in batch.items()}
        out["pytorch"][name] = round(median_ms(functools.partial(_forward, torch_model, on_device), repeats), 3)
        out["export"][name] = round(median_ms(functools.partial(export_logits, batch), repeats), 3)
    return out


@torch.no_grad()
def _forward(model, batch: dict) -> None:
    model(**batch)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _metric(name: str, ref: dict, exp: dict) -> dict:
    return {
        "name": name,
        "run": ref[name],
        "export": exp[name],
        "drop": ref[name] - exp[name],
        "drop_is": f"run {name} - export {name} (absolute)",
    }
