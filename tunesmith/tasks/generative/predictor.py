"""What a saved generative run can do: generate for new prompts, and be evaluated on another file."""

from __future__ import annotations

import dataclasses

from ...data.loaders import load_table, pick_split
from ...engine.batches import mean_loss
from ..base import Predictor
from .batches import causal_lm_loss, seq2seq_loss
from .formats import Sample
from .generation import generate_for, generation_scores, perplexity, sample_ids


class GenerativePredictor(Predictor):
    def generate(self, prompts: list, max_new_tokens: int | None = None, streamer=None, **overrides) -> list[str]:
        """Completions for prompts: strings (chat models: one user turn each) or message lists, rendered as in training.

        `streamer`: a transformers streamer that sees the new tokens as they come (one prompt at a time)."""
        run, cfg = self.run, self.run.config
        m = run.load()
        gen = dataclasses.replace(
            cfg.generate, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}), **overrides
        )
        samples = [self.sample(p) for p in prompts]
        return generate_for(m.model, m.tokenizer, samples, gen, cfg.task, m.autocast, streamer=streamer)

    def prompt_tokens(self, prompts: list) -> list[int]:
        """How many tokens each prompt takes, rendered as generation sees it."""
        m = self.run.load()
        return [len(ids) for ids in sample_ids(m.tokenizer, [self.sample(p) for p in prompts], self.run.config.task)]

    def sample(self, prompt: str | list[dict]) -> Sample:
        """A prompt as the run's training rendered it: a chat turn for chat/instruction runs, raw text otherwise."""
        fmt = self.run.info.get("data", {}).get("format")
        if isinstance(prompt, list):
            return Sample(0, messages=[*prompt, {"role": "assistant", "content": ""}])
        if self.run.task.supports_chat and fmt in ("chat", "instruction"):
            return Sample(0, messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}])
        return Sample(0, prompt=prompt, completion="")

    def evaluate(self, data: str, samples: int | None = None, **columns) -> dict:
        """Loss/perplexity and generation scores on another file (`tunesmith eval`)."""

        run, cfg = self.run, self.run.config
        task = run.task
        df = pick_split(
            load_table(data, "auto", cfg.data.encoding, cfg.data.encoding_errors, cfg.data.delimiter), "test", data
        )
        items = task.eval_samples(df, str(data))
        m = run.load()
        encoded = task.encode_samples(m.tokenizer, items)
        answer_loss = seq2seq_loss if task.encoder_decoder else causal_lm_loss  # the loss on the reference answers
        loss = mean_loss(m.model, encoded, answer_loss, cfg.eval.batch_size, m.autocast)
        chosen = items[: samples if samples is not None else cfg.generate.samples]
        out = generate_for(m.model, m.tokenizer, chosen, cfg.generate, cfg.task, m.autocast, progress=True)
        return {
            "data": str(data),
            "n": len(items),
            "loss": loss,
            "perplexity": perplexity(loss),
            "generation": generation_scores(out, [s.reference for s in chosen], cfg.generate.json_keys),
        }
