"""The model work behind each endpoint, run by a model's batcher thread: one batch of jobs in, results out.

Each batch runs under its model group's lock with its adapter active, through the run's own predictor
(`Run.predict`, `Run.generate`): a served model answers exactly as `tunesmith predict` / `generate` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .batching import Job
from .pool import Served


@dataclass(frozen=True)
class Sampling:
    """Generation settings of a request; only requests with equal settings share a batch."""

    max_tokens: int
    temperature: float | None = None
    """None: the run's own `generate` settings; 0: greedy; > 0: sampling."""
    top_p: float | None = None

    def overrides(self) -> dict:
        if self.temperature is None:
            return {}
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, **({"top_p": self.top_p} if self.top_p else {})}


def split(results: list, jobs: list[Job]) -> list[list]:
    """The flat results of a batch, back per job."""
    out, start = [], 0
    for job in jobs:
        out.append(results[start : start + job.size])
        start += job.size
    return out


def classify_worker(served: Served) -> Callable[[list[Job]], list]:
    def handle(jobs: list[Job]) -> list:
        texts = [t for job in jobs for t in job.payload]
        with served.group.lock:
            served.group.activate(served.run)
            predictions = served.run.predict(texts, batch_size=len(texts))
        return split(predictions, jobs)

    return handle


def generate_worker(served: Served) -> Callable[[list[Job]], list]:
    def handle(jobs: list[Job]) -> list:
        sampling: Sampling = jobs[0].key
        if jobs[0].alone:  # a stream: one prompt, its tokens handed on as they come
            prompt, on_text = jobs[0].payload
            with served.group.lock:
                served.group.activate(served.run)
                streamer = text_streamer(served.group.load().tokenizer, on_text)
                return [
                    served.run.generate(
                        [prompt], sampling.max_tokens, streamer=streamer, batch_size=1, **sampling.overrides()
                    )
                ]
        prompts = [p for job in jobs for p in job.payload]
        with served.group.lock:
            served.group.activate(served.run)
            texts = served.run.generate(prompts, sampling.max_tokens, batch_size=len(prompts), **sampling.overrides())
        return split(texts, jobs)

    return handle


def text_streamer(tokenizer, on_text: Callable[[str], None]):
    """A transformers streamer that hands each finished piece of text to `on_text` (the prompt is skipped)."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
