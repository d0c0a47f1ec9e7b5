"""Parity of a language-model export: the exported model and the trained run on the run's test samples.

Teacher forcing: each sample encoded as the run trained on it, one row per forward pass (no padding), the
next-token logits at its trained positions (the task's `distill_outputs`: the loss's units) and its summed loss
(the task's `loss`) -> max and mean |logit diff|, and the test perplexity of each: the run's own headline metric,
computed over every trained token, so it is steadier than scoring a few generations.
Generation: greedy continuations of the test prompts (rendered as the run renders them, at most 32 new tokens,
one prompt at a time) -> the share identical token for token, and the share whose first token agrees.
The exported tokenizer is checked against the run's on the rendered samples (the ids both give the same text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..tasks.generative.formats import prompt_ids, stop_token_ids
from .parity import load_test_split

MAX_NEW_TOKENS = 32
EXAMPLES = 3


@dataclass
class LMInputs:
    samples: list
    encoded: object
    """The task's Batches of the samples (ids and loss masks)."""
    prompts: list[list[int]]
    texts: list[str]
    """The rendered prompts (with their special tokens) and the reference answers: what both tokenizers must
    encode alike."""
    max_new_tokens: int
    source: str
    encoder_decoder: bool


@dataclass
class LMOutputs:
    logits: list[torch.Tensor] = field(default_factory=list)
    loss: float = 0.0
    units: int = 0
    greedy: list[list[int]] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return float(math.exp(min(self.loss / max(self.units, 1), 50.0)))


def lm_inputs(run, tokenizer, model, rows: int, say=print) -> LMInputs:
    data, source = load_test_split(run, say)
    samples = list(data.splits.test.samples[:rows])
    encoded = run.task.encode_samples(tokenizer, samples)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    prompts = [tokenizer(s.prompt or "")["input_ids"] if enc_dec else prompt_ids(tokenizer, s) for s in samples]
    texts = [tokenizer.decode(p, skip_special_tokens=False) + s.reference for p, s in zip(prompts, samples)]
    new = min(int(run.config.generate.max_new_tokens), MAX_NEW_TOKENS)
    return LMInputs(samples, encoded, prompts, texts, new, source, enc_dec)


@torch.no_grad()
def lm_outputs(model, task, inputs: LMInputs, stops: list[int], pad_id: int, desc: str = "parity") -> LMOutputs:
    """Teacher-forced logits and loss on every sample, then greedy continuations of every prompt (float32)."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    out = LMOutputs()
    data = inputs.encoded
    steps = len(data) + len(inputs.prompts)
    with tqdm(total=steps, desc=desc, unit="sample", leave=False) as bar:
        for r in range(len(data)):
            batch = {k: v.to(device) for k, v in data.batch([r]).items()}
            rows, _ = task.distill_outputs(task.distill_forward(model, dict(batch)), batch)
            out.logits.append(rows.float().cpu())
            out.loss += float(task.loss(model, dict(batch)))
            out.units += data.units([r])
            bar.update()
        for p in inputs.prompts:
            out.greedy.append(greedy(model, p, stops, pad_id, inputs.max_new_tokens, inputs.encoder_decoder))
            bar.update()
    return out


def greedy(model, prompt: list[int], stops: list[int], pad_id: int, max_new: int, encoder_decoder: bool) -> list[int]:
    """The greedy continuation's token ids, up to (without) the first stop token."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    seq = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad_id,
        eos_token_id=stops or None,
        use_cache=True,
    )[0].tolist()
    new = seq if encoder_decoder else seq[len(prompt) :]
    if encoder_decoder and new and new[0] == getattr(model.config, "decoder_start_token_id", None):
        new = new[1:]
    for i, t in enumerate(new):
        if t in stops:
            return new[:i]
    return new


def stops_and_pad(tokenizer, model) -> tuple[list[int], int]:
    """The stop tokens (tokenizer EOS + the model's generation_config) and the pad id the run generates with."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return sorted(stop_token_ids(tokenizer, model)), pad


def compare_lm(reference: LMOutputs, exported: LMOutputs, inputs: LMInputs, tokenizer, export_tokenizer=None) -> dict:
    """The parity figures of a language-model export (tolerances are applied by the caller)."""
    diffs = [(a - b).abs() for a, b in zip(reference.logits, exported.logits) if a.numel()]
    n = len(inputs.prompts)
    same = [a == b for a, b in zip(reference.greedy, exported.greedy)]
    first = [a[:1] == b[:1] for a, b in zip(reference.greedy, exported.greedy)]
    ppl_run, ppl_export = reference.perplexity, exported.perplexity
    out = {
        "rows": len(inputs.samples),
        "source": inputs.source,
        "trained_tokens": reference.units,
        "max_abs_logit_diff": float(max(d.max() for d in diffs)) if diffs else 0.0,
        "mean_abs_logit_diff": float(torch.cat([d.flatten() for d in diffs]).mean()) if diffs else 0.0,
        "greedy_exact_match": float(np.mean(same)) if n else 1.0,
        "first_token_agreement": float(np.mean(first)) if n else 1.0,
        "max_new_tokens": inputs.max_new_tokens,
        "metric": {
            "name": "perplexity",
            "run": ppl_run,
            "export": ppl_export,
            "drop": ppl_export / ppl_run - 1.0,
            "drop_is": "the relative rise of the test perplexity (export / run - 1)",
        },
        "examples": [
            {
                "prompt": inputs.samples[i].prompt_view()[-200:],
                "run": tokenizer.decode(reference.greedy[i], skip_special_tokens=True),
                "export": tokenizer.decode(exported.greedy[i], skip_special_tokens=True),
            }
            for i in range(min(EXAMPLES, n))
        ],
    }
    if export_tokenizer is not None:
        run_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in inputs.texts]
        exp_ids = [export_tokenizer(t, add_special_tokens=False)["input_ids"] for t in inputs.texts]
        out["tokenizer_agreement"] = float(np.mean([a == b for a, b in zip(run_ids, exp_ids)])) if run_ids else 1.0
        out["tokenizer_special_ids_agree"] = all(
            getattr(tokenizer, k) == getattr(export_tokenizer, k) for k in ("bos_token_id", "eos_token_id")
        )
        out["chat_template_kept"] = getattr(tokenizer, "chat_template", None) == getattr(
            export_tokenizer, "chat_template", None
        )
    return out
