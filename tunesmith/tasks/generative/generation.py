"""Generation from a (fine-tuned) model, and the scores of generations against references.

Scores: exact match, ROUGE-L (rouge-score), BLEU and chrF (sacrebleu), and for structured outputs
the share that parses as a JSON object with the required keys plus per-key exact match, and (given the inputs)
faithfulness: the share of extracted values that literally occur in the input, a check for invented values.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import nullcontext

import torch

from .formats import Sample, prompt_ids, stop_token_ids


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    gen,
    task: str,
    autocast=nullcontext,
    progress: bool = False,
    streamer=None,
) -> list[str]:
    """Completions (decoded, special tokens dropped) for token-id prompts, `gen.batch_size` at a time.

    `streamer`: a transformers streamer that sees the tokens as they come (one prompt only)."""
    ids = generate_ids(model, tokenizer, prompts, gen, task, autocast, progress, streamer)
    return [tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: list[list[int]],
    gen,
    task: str,
    autocast=nullcontext,
    progress: bool = False,
    streamer=None,
) -> list[list[int]]:
    """The generated token ids per prompt; decoder-only: up to and including the first stop token (the padding after
    it cut)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = sorted(stop_token_ids(tokenizer, model))
    kwargs = dict(
        max_new_tokens=gen.max_new_tokens,
        do_sample=gen.do_sample,
        pad_token_id=pad,
        eos_token_id=stops or None,
        use_cache=True,
        **({"streamer": streamer} if streamer is not None else {}),
    )
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:  # silence generation_config's sampling defaults when decoding greedily
        kwargs.update(temperature=None, top_p=None, top_k=None)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
    out: list[list[int]] = [[] for _ in prompts]
    batches = [order[i : i + gen.batch_size] for i in range(0, len(order), gen.batch_size)]
    bar = _bar(len(prompts), progress)
    for rows in batches:
        width = max(len(prompts[r]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            p = prompts[r]
            if task == "seq2seq":  # encoder inputs: right padding
                ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
            else:  # decoder-only: left padding, so every prompt ends where generation starts
                ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        with autocast():
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = seqs if task == "seq2seq" else seqs[:, width:]
        for i, r in enumerate(rows):
            seq = new[i].tolist()  # seq2seq: starts with the decoder start token (BART's is EOS): decode drops it
            out[r] = seq if task == "seq2seq" else _until_stop(seq, stops)
        bar.update(len(rows))
    bar.close()
    model.train(was_training)
    return out


def _until_stop(ids: list[int], stops: list[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in stops:
            return ids[: k + 1]
    return ids


def generate_for(
    model,
    tokenizer,
    samples: list[Sample],
    gen,
    task: str,
    autocast=nullcontext,
    progress: bool = False,
    streamer=None,
) -> list[str]:
    return generate(model, tokenizer, sample_ids(tokenizer, samples, task), gen, task, autocast, progress, streamer)


def sample_ids(tokenizer, samples: list[Sample], task: str) -> list[list[int]]:
    """The token ids a model is prompted with, per sample (rendered as in training)."""
    if task == "seq2seq":
        return [tokenizer(s.prompt)["input_ids"] for s in samples]
    return [prompt_ids(tokenizer, s) for s in samples]


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="prompt", disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------
# scores


def generation_scores(
    predictions: list[str], references: list[str], json_keys: list[str] | None = None, sources: list[str] | None = None
) -> dict:
    """`sources` (the input texts): with `json_keys`, adds faithfulness_scores of those keys."""
    import sacrebleu
    from rouge_score import rouge_scorer

    n = len(predictions)
    if n == 0:
        return {"n": 0}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / n
    out = {
        "n": n,
        "exact_match": sum(_norm(p) == _norm(r) for p, r in zip(predictions, references)) / n,
        "rougeL": rouge,
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "mean_words": sum(len(p.split()) for p in predictions) / n,
    }
    if json_keys:
        out.update(json_scores(predictions, references, json_keys))
        if sources is not None:
            out.update(faithfulness_scores(predictions, sources, json_keys))
    return out


def json_scores(predictions: list[str], references: list[str], keys: list[str]) -> dict:
    """Share of outputs that are a JSON object with every key, and per-key exact match against the reference."""
    valid, hits = 0, {k: 0 for k in keys}
    for p, r in zip(predictions, references):
        got, want = parse_json_object(p), parse_json_object(r) or {}
        if got is None or not all(k in got for k in keys):
            continue
        valid += 1
        for k in keys:
            hits[k] += _norm(str(got.get(k))) == _norm(str(want.get(k)))
    n = len(predictions)
    out = {"json_valid": valid / n, **{f"field_{k}": hits[k] / n for k in keys}}
    out["field_exact_match"] = sum(hits.values()) / (n * len(keys))
    return out


def faithfulness(prediction: str, source: str, keys: list[str] | None = None) -> float | None:
    """Share of the values extracted into the JSON object `prediction` that literally occur in `source` (the input
    text), compared after whitespace/case normalisation and as whole words (a value "5" is not found in "15").

    Extraction should copy, not invent: a value that is not in the input was made up (or rephrased). Counted are the
    string and number values of `keys` (None: every top-level string value), and those inside a list; empty strings
    are skipped. None when the prediction is not a JSON object or has no such values (no extraction to judge)."""
    obj = parse_json_object(prediction)
    if obj is None:
        return None
    values = _extracted_values(obj, keys)
    if not values:
        return None
    text = _norm(source)
    return sum(_occurs(v, text) for v in values) / len(values)


def faithfulness_scores(predictions: list[str], sources: list[str], keys: list[str] | None = None) -> dict:
    """{"faithful_rate": mean over the judged predictions (None if none was), "faithful_judged": share judged}."""
    judged = [f for f in (faithfulness(p, s, keys) for p, s in zip(predictions, sources)) if f is not None]
    n = len(predictions)
    return {
        "faithful_rate": sum(judged) / len(judged) if judged else None,
        "faithful_judged": len(judged) / n if n else 0.0,
    }


def _extracted_values(obj: dict, keys: list[str] | None) -> list[str]:
    """The normalised values faithfulness judges: strings (and, for named keys, numbers), also inside lists."""
    kinds = (str,) if keys is None else (str, int, float)
    picked = obj.values() if keys is None else [obj[k] for k in keys if k in obj]
    flat = [x for v in picked for x in (v if isinstance(v, list) else [v])]
    out = [_value_text(x) for x in flat if isinstance(x, kinds) and not isinstance(x, bool)]
    return [v for v in out if v]


def _value_text(x) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)  # 3.0 is written "3" in the input
    return _norm(str(x))


def _occurs(value: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def parse_json_object(text: str) -> dict | None:
    """The JSON object a text consists of (surrounding whitespace and a ```json fence tolerated), else None."""
    t = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", t, re.S)
    if fence:
        t = fence.group(1)
    try:
        obj = json.loads(t)
    except (json.JSONDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def perplexity(loss: float | None) -> float | None:
    return None if loss is None else float(math.exp(min(loss, 50.0)))
