"""Pre-flight check of generative training data (`tunesmith data lint`, and before every `train`).

The classic silent failures of SFT: the end-of-sequence token never trains (the model never stops
talking), the prompt seen in training is not the prompt given at inference (another template, or
different tokens at the boundary), completions cut off by truncation, samples where nothing trains.
Each is found on the real rendered token ids, and reported with the row and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .formats import IGNORE, Sample, prompt_ids, render, render_seq2seq, stop_token_ids

# Markers of well-known chat templates; text that already carries one was rendered for another template.
TEMPLATE_MARKERS = {
    "<|im_start|>": "ChatML",
    "[INST]": "Llama-2/Mistral",
    "<|start_header_id|>": "Llama-3",
    "<start_of_turn>": "Gemma",
    "### Instruction:": "Alpaca",
    "<|user|>": "Zephyr/Phi",
    "### User:": "tunesmith default",
}


@dataclass
class LintReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    """Rendered samples, trained tokens marked, for people to read."""
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def lint(
    tokenizer,
    samples: list[Sample],
    task: str,
    max_length: int,
    add_eos: bool,
    model=None,
    show: int = 2,
    long_samples: str = "error",
) -> LintReport:
    rep = LintReport()
    stops = stop_token_ids(tokenizer, model)
    if not stops:
        rep.errors.append(
            "the tokenizer has no end-of-sequence token: generation could never stop; set one (tokenizer.eos_token)"
        )
    no_eos, truncated, empty, mismatch, foreign = [], [], [], [], []
    scaffold = _template_scaffold(tokenizer) if task == "causal-lm" else ""
    targets, lengths = 0, []
    for s in samples:
        if task == "seq2seq":
            src, r = render_seq2seq(tokenizer, s, max_length, add_eos)
            trained = r.labels
            lengths.append(len(src) + len(trained))
        else:
            r = render(tokenizer, s, task, max_length, add_eos)
            trained = [t for t in r.labels if t != IGNORE]
            lengths.append(len(r.ids))
            if s.text is None and not r.truncated_target:
                # Inference gives the model `p`; training must show exactly `p`, then train from the next token on.
                p = prompt_ids(tokenizer, s)
                starts_there = (
                    len(r.labels) > len(p)
                    and r.labels[len(p)] != IGNORE
                    and (len(p) < 2 or r.labels[len(p) - 1] == IGNORE)
                )
                if r.ids[: len(p)] != p or not starts_there:
                    mismatch.append(s.row)
        targets += len(trained)
        if r.truncated_target:
            truncated.append((s.row, len(r.ids)))
        elif not trained:
            empty.append(s.row)
        elif not stops.intersection(trained) and not (s.text is not None and not add_eos):
            no_eos.append(s.row)
        for marker, name in TEMPLATE_MARKERS.items():
            if marker in _raw_text(s) and marker not in scaffold:
                foreign.append((s.row, name))
                break
        if len(rep.shown) < show:
            rep.shown.append(_show(tokenizer, r.ids if task != "seq2seq" else src, r.labels, task))

    n = len(samples)
    if no_eos:
        rep.errors.append(
            f"{len(no_eos)} of {n} samples do not train an end-of-sequence token (first: row {no_eos[0] + 1}): the model "
            f"would not learn to stop; keep data.add_eos: true, or use a chat template that ends turns with EOS"
        )
    if foreign:
        row, name = foreign[0]
        rep.errors.append(
            f"{len(foreign)} samples are already formatted with the {name} chat template (first: row {row + 1}) but this run "
            f"renders prompts with another template at training and inference; give raw messages (sample_format: chat) "
            f"or set model.chat_template to the template the data was written for"
        )
    if mismatch:
        rep.errors.append(
            f"{len(mismatch)} of {n} samples: the prompt tokens in training differ from the prompt tokens at inference "
            f"(first: row {mismatch[0] + 1}); the template or the prompt/completion boundary tokenizes differently "
            f"(e.g. a trailing space in the prompt): fix the data or the template"
        )
    if truncated:
        row, length = truncated[0]
        msg = (
            f"{len(truncated)} of {n} samples are truncated inside the completion at data.max_length={max_length} "
            f"(first: row {row + 1}, {length} tokens)"
        )
        if long_samples == "drop":
            rep.warnings.append(msg + "; they are dropped (data.long_samples: drop)")
        else:
            rep.errors.append(msg + "; raise data.max_length or set data.long_samples: drop")
    if empty:
        rep.errors.append(
            f"{len(empty)} of {n} samples train no token at all: the prompt mask covers everything "
            f"(first: row {empty[0] + 1}); check the completion/assistant column"
        )
    rep.stats = {
        "samples": n,
        "trained_tokens": targets,
        "mean_length": sum(lengths) / max(1, n),
        "max_length": max(lengths, default=0),
        "truncated": len(truncated),
        "no_eos": len(no_eos),
        "template_mismatch": len(mismatch) + len(foreign),
        "empty": len(empty),
    }
    return rep


def _template_scaffold(tokenizer) -> str:
    try:
        return tokenizer.apply_chat_template(
            [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"},
            ],
            tokenize=False,
        )
    except Exception:  # templates that reject a system turn
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}], tokenize=False
        )


def _raw_text(s: Sample) -> str:
    if s.messages is not None:
        return "\n".join(m["content"] for m in s.messages)
    return "\n".join(x for x in (s.prompt, s.completion, s.text) if x)


def _show(tokenizer, ids: list[int], labels: list[int], task: str) -> str:
    """A rendered sample with the trained tokens in [[double brackets]]."""
    if task == "seq2seq":
        return f"input:  {tokenizer.decode(ids)}\ntarget (all trained): [[{tokenizer.decode([t for t in labels if t != IGNORE])}]]"
    out, inside = [], False
    for tok, lab in zip(ids, labels):
        trained = lab != IGNORE
        if trained != inside:
            out.append("[[" if trained else "]]")
            inside = trained
        out.append(tokenizer.decode([tok]))
    if inside:
        out.append("]]")
    return "".join(out)
