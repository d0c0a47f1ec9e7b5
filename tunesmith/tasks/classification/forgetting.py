"""Forgetting in text classification: how far the encoder drifted, and what an earlier task kept.

- `path:` reference texts: their mean-pooled encoder representations before and after training, compared by
  linear CKA and the correlation of pairwise cosine similarities (forgetting/drift.py).
- `run:` a previous run (task A of sequential fine-tuning): its test rows scored by task A's own head on THIS
  run's encoder (the head is retained, the encoder is shared): macro-F1 before -> after, with a paired bootstrap
  interval and a permutation test on the same rows. The same retained head lets EWC and replay use task A.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...data.loaders import load_table, pick_split, require_columns
from ...engine.precision import compute_dtype
from ...errors import ConfigError, DataError, RunError
from ...evaluate.metrics import classification_metrics
from ...evaluate.stats import paired_delta
from ...forgetting import Reference, drift
from ...models.features import text_features
from ...models.loading import resolve_model
from ...runs.record import read_info, read_labels
from ...strategies import build_strategy
from ...utils import atomic_save_tensors, fingerprint
from .batches import Tokenized, cross_entropy_sum, predict_probs, tokenize

REFERENCE_HINT = "text-classification trains or scores on a `run:` reference: an earlier task's labelled rows and head"


def encoder_of(model):
    """The encoder inside a (PEFT-wrapped) sequence classifier: the module its head reads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def load_references(cfg, model, tokenizer) -> dict[str, Reference]:
    out = {}
    for ref in cfg.eval.reference:
        out[ref.name] = (
            _texts_reference(cfg, ref, tokenizer) if ref.path else _run_reference(cfg, ref, model, tokenizer)
        )
    return out


def _texts_reference(cfg, ref, tokenizer) -> Reference:
    d = cfg.data
    df = pick_split(load_table(ref.path, "auto", d.encoding, "replace", d.delimiter), "train", ref.path)
    column = ref.text_column or (d.text_column if d.text_column in df.columns else "text")
    require_columns(df, {"text": column}, ref.path, f"set eval.reference ({ref.name}).text_column")
    texts = [t for t in df[column].astype(str).tolist() if t.strip()]
    if len(texts) < 4:
        raise DataError(f"{ref.path}: reference set {ref.name} has fewer than 4 texts; give it more")
    texts = _sample(texts, ref.max_rows, cfg.seed)
    measured, read = texts[0::2], texts[1::2]  # halves: the remedies never read a measured row
    batches = [
        Tokenized(tokenize(tokenizer, t, d.max_length), [0] * len(t), tokenizer.pad_token_id) for t in (read, measured)
    ]
    return Reference(ref.name, batches[0], measured=batches[1], data={"texts": measured})


def _run_reference(cfg, ref, model, tokenizer) -> Reference:
    """Task A's test rows and head, the head put on this run's encoder (shared: it follows training)."""
    folder = Path(ref.run)
    info = read_info(folder)
    labels, rows = read_labels(folder), folder / "test_predictions.csv"
    if info.get("status") != "complete" or not labels or not rows.is_file():
        raise RunError(
            f"eval.reference ({ref.name}): {folder} is not a complete text-classification run (it needs labels.json, "
            "test_predictions.csv and model/); give a finished run of the earlier task"
        )
    df = pd.read_csv(rows, keep_default_na=False)
    if len(df) > ref.max_rows:
        df = df.sample(n=ref.max_rows, random_state=cfg.seed).sort_index()
    index = {n: i for i, n in enumerate(labels)}
    texts, y = df["text"].astype(str).tolist(), [index[str(v)] for v in df["label"]]
    head = _retained_head(folder, info, labels, model, tokenizer)
    # Halves: even rows are measured, odd rows are what EWC and replay read (no measured row is trained on).
    halves = [
        Tokenized(tokenize(tokenizer, texts[k::2], cfg.data.max_length), y[k::2], tokenizer.pad_token_id)
        for k in (1, 0)
    ]
    return Reference(
        ref.name,
        halves[0],
        measured=halves[1],
        scorer=lambda m: head,
        loss=lambda module, inputs: cross_entropy_sum(module, dict(inputs)),
        data={"texts": texts[0::2], "labels": labels, "y": y[0::2], "run": str(folder)},
    )


def _retained_head(folder: Path, info: dict, labels: list[str], model, tokenizer):
    from ...models.loading import load_classifier

    strategy = build_strategy(info["strategy"])
    base = info["model"]["location"]  # an adapter run rebuilds its base: the folder (or hub id) it was trained on
    old = strategy.load(folder / "model", lambda: load_classifier(resolve_model(base), labels, tokenizer.pad_token_id))
    old = strategy.merged(old)
    prefix = getattr(old, "base_model_prefix", "")
    encoder = encoder_of(model)
    if not prefix or type(getattr(old, prefix, None)) is not type(encoder):
        raise ConfigError(
            f"eval.reference: {folder} was trained on another architecture ({type(old).__name__}) than this run's "
            "model; a retained head needs the earlier task's run to share this run's encoder"
        )
    setattr(old, prefix, encoder)  # the head now reads this run's encoder (the old encoder is dropped)
    for name, p in old.named_parameters():
        if not name.startswith(prefix + "."):
            p.requires_grad_(False)
    device = next(encoder.parameters()).device
    return old.to(device)


def _sample(items: list, n: int, seed: int) -> list:
    if len(items) <= n:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


def reference_file(run_dir, name: str, when: str = "before") -> Path:
    """Row-level figures of a reference set (`before` / `after` training): predictions or features."""
    return Path(run_dir) / "forgetting" / f"{when}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.safetensors"


def _features(model, tokenizer, texts, ctx) -> torch.Tensor:
    return text_features(
        encoder_of(model),
        tokenizer,
        texts,
        ctx.cfg.data.max_length,
        ctx.cfg.eval.batch_size,
        compute_dtype(ctx.precision),
    )


def _predictions(module, ref: Reference, ctx) -> np.ndarray:
    return predict_probs(module, ref.measured, ctx.cfg.eval.batch_size, ctx.autocast)


def measure_before(model, tokenizer, references: dict[str, Reference], ctx) -> dict:
    """Scores of the original model; the row-level ones (features, predictions) go to files in the run folder."""
    out = {}
    for name, ref in references.items():
        if ref.trainable:
            probs = _predictions(ref.scorer(model), ref, ctx)
            m = classification_metrics(ref.data["y"], probs, ref.data["labels"])
            atomic_save_tensors({"pred": torch.from_numpy(probs.argmax(1))}, reference_file(ctx.run_dir, name))
            out[name] = {"kind": "retention", "macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}
        else:
            atomic_save_tensors(
                {"features": _features(model, tokenizer, ref.data["texts"], ctx)}, reference_file(ctx.run_dir, name)
            )
            out[name] = {"kind": "drift"}
    return out


def measure_after(
    model, tokenizer, references: dict[str, Reference], before: dict, ctx, intervals: bool = True
) -> dict:
    from safetensors.torch import load_file

    ev = ctx.cfg.eval
    out = {}
    for name, ref in references.items():
        saved = load_file(str(reference_file(ctx.run_dir, name)))
        if ref.trainable:
            probs = _predictions(ref.scorer(model), ref, ctx)
            y, labels = ref.data["y"], ref.data["labels"]
            m = classification_metrics(y, probs, labels)
            was = before[name]
            item = {
                "kind": "retention",
                "metric": "macro_f1",
                "rows": len(y),
                "fingerprint": fingerprint(ref.data["texts"], [labels[i] for i in y]),
                "run": ref.data["run"],
                "before": was["macro_f1"],
                "after": m["macro_f1"],
                "change": m["macro_f1"] - was["macro_f1"],
                "accuracy_before": was["accuracy"],
                "accuracy_after": m["accuracy"],
            }
            if intervals:
                d = paired_delta(
                    y,
                    saved["pred"].numpy(),
                    probs.argmax(1),
                    len(labels),
                    "macro_f1",
                    ev.ci_level,
                    ev.bootstrap_resamples,
                )
                item.update(ci=[d["low"], d["high"]], p=d["p"], level=d["level"])
                atomic_save_tensors(
                    {"pred": torch.from_numpy(probs.argmax(1)), "y": torch.tensor(y)},
                    reference_file(ctx.run_dir, name, "after"),
                )
            out[name] = item
        else:
            after = _features(model, tokenizer, ref.data["texts"], ctx)
            texts = ref.data["texts"]
            out[name] = {
                "kind": "drift",
                **drift(saved["features"].numpy(), after.numpy()),
                "fingerprint": fingerprint(texts, [""] * len(texts)),
            }
            if intervals:
                atomic_save_tensors({"features": after}, reference_file(ctx.run_dir, name, "after"))
    return out


def summary(task_metrics: dict, forgetting: dict) -> str:
    parts = [f"task macro-F1 {task_metrics.get('macro_f1', float('nan')):.3f}"]
    for name, f in forgetting.items():
        if f.get("kind") == "retention":
            ci = f", CI {100 * f['ci'][0]:+.1f} to {100 * f['ci'][1]:+.1f}" if "ci" in f else ""
            parts.append(f"{name} macro-F1 {f['before']:.3f} -> {f['after']:.3f} ({100 * f['change']:+.1f} points{ci})")
        elif f.get("kind") == "drift":
            parts.append(
                f"{name} representation CKA {f['cka']:.3f} (cosine-similarity correlation {f['cosine_correlation']:.3f})"
            )
    return "; ".join(parts)
