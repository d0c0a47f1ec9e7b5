"""Forgetting in generative tasks: what the original model could say, before and after fine-tuning.

Each `eval.reference` set is samples in any data format (chat, instruction, completion, text), cut in two by row:
the even rows are measured, the odd rows are what the remedies read (so none is trained on a measured row). Measured:
perplexity per trained token (the base model's own chat data is the sharpest probe: its perplexity starts low
and rises as the model forgets), and with `generate: N` the generations for N of its prompts scored against
the samples' answers (contains the answer, exact match, ROUGE-L). The same encoded rows feed EWC's Fisher,
distillation on reference inputs and replay.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from ...data.loaders import load_table, pick_split
from ...engine.batches import mean_loss
from ...errors import DataError
from ...forgetting import Reference
from .formats import detect_format, to_samples
from .generation import generate_for, generation_scores

REFERENCE_HINT = "causal-lm / seq2seq reference sets are samples (chat, instruction, completion or text)"


def load_references(task, tokenizer) -> dict[str, Reference]:
    cfg = task.cfg
    d = dataclasses.replace(cfg.data, sample_format="auto")  # a reference set has its own format
    out = {}
    for ref in cfg.eval.reference:
        if ref.run:
            raise DataError(
                f"eval.reference ({ref.name}): `run:` references are for text-classification; for {task.name} give "
                "`path:` a file of samples (e.g. general chat the base model handles)"
            )
        df = pick_split(load_table(ref.path, "auto", d.encoding, "replace", d.delimiter), "train", ref.path)
        samples = to_samples(df, d, detect_format(df.columns, d, task.name), task.name, ref.path)
        if len(samples) > ref.max_rows:
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(samples), size=ref.max_rows, replace=False))
            samples = [samples[i] for i in keep]
        if len(samples) < 2:
            raise DataError(f"{ref.path}: reference set {ref.name} has fewer than 2 samples; give it more")
        # Halves: even rows are measured, odd rows are what EWC, replay and distillation read (never measured).
        measured, read = samples[0::2], samples[1::2]
        out[ref.name] = Reference(
            ref.name,
            task.encode_samples(tokenizer, read),
            measured=task.encode_samples(tokenizer, measured),
            scorer=lambda m: m,
            loss=task.loss,
            data={"samples": measured, "generate": min(ref.generate, len(measured))},
        )
    return out


def measure(task, model, references: dict[str, Reference], ctx, alone: bool = True, generate: bool = True) -> dict:
    """{name: {perplexity, loss, generation?}} of `model` on every reference set (this process does all of it)."""
    out = {}
    for name, ref in references.items():
        world, rank = (1, 0) if alone else (ctx.world, ctx.rank)
        loss = mean_loss(
            model, ref.measured, task.loss, ctx.cfg.eval.batch_size, ctx.autocast, ctx.acc.reduce, rank, world
        )
        item = {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0)))}
        n = ref.data["generate"] if generate else 0
        if n:
            chosen = ref.data["samples"][:n]
            ctx.say(f"forgetting: generating for {n} prompts of {name}")
            said = generate_for(
                model, task._tokenizer, chosen, ctx.cfg.generate, task.name, ctx.autocast, progress=True
            )
            refs = [s.reference for s in chosen]
            item["generation"] = {**generation_scores(said, refs), "contains": contains(said, refs)}
        out[name] = item
    return out


def compare(before: dict, after: dict, references: dict[str, Reference]) -> dict:
    out = {}
    for name in references:
        b, a = before[name], after[name]
        item = {
            "kind": "perplexity",
            "rows": len(references[name].measured),
            "before": b["perplexity"],
            "after": a["perplexity"],
            "change_pct": 100 * (a["perplexity"] / b["perplexity"] - 1),
            "loss_before": b["loss"],
            "loss_after": a["loss"],
        }
        if "generation" in a:
            item["generation"] = {"before": b.get("generation"), "after": a["generation"]}
            item["contains_before"] = (b.get("generation") or {}).get("contains")
            item["contains_after"] = a["generation"]["contains"]
        out[name] = item
    return out


def contains(predictions: list[str], references: list[str]) -> float:
    """Share of generations that contain their (normalised) reference answer: short known answers, free wording."""
    if not predictions:
        return 0.0
    hits = sum(_norm(r) in _norm(p) for p, r in zip(predictions, references) if _norm(r))
    return hits / len(predictions)


def summary(gain: str, forgetting: dict) -> str:
    parts = [gain] if gain else []
    for name, f in forgetting.items():
        if f.get("kind") != "perplexity":
            continue
        text = f"{name} perplexity {f['before']:.2f} -> {f['after']:.2f} ({f['change_pct']:+.1f}%)"
        if f.get("contains_after") is not None and f.get("contains_before") is not None:
            text += f", answers kept {f['contains_before']:.2f} -> {f['contains_after']:.2f}"
        parts.append(text)
    return "; ".join(parts)


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())
