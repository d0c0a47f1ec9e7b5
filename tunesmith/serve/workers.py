"""The model work behind each endpoint, run by a model's batcher thread: one batch of jobs in, results out.

Each batch runs under its model group's lock with its adapter active, through the run's own predictor
(`Run.predict`, `Run.generate`): a served model answers exactly as `tunesmith predict` / `generate` does.
Everything that touches the tokenizer happens here too: a fast tokenizer is not safe to use from two
threads at once (its truncation settings are state), so the event loop never tokenizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .batching import Job
from .guard import ApiError
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


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int

    def finish_reason(self, max_tokens: int) -> str:
        return "length" if self.completion_tokens >= max_tokens else "stop"


def split(results: list, jobs: list[Job]) -> list[list]:
    """The flat results of a batch, back per job."""
    out, start = [], 0
    for job in jobs:
        out.append(results[start : start + job.size])
        start += job.size
    return out


def classify_worker(served: Served, max_total_tokens: int) -> Callable[[list[Job]], list]:
    """Jobs' payloads: texts, or an image model's decoded RGB images (PIL; see images.py): the run's predictor
    takes either, so both batch the same way."""

    def handle(jobs: list[Job]) -> list:
        items = [t for job in jobs for t in job.payload]
        with served.group.lock:
            served.group.activate(served.run)
            predictions = served.run.predict(items, batch_size=len(items), task=jobs[0].key)  # key: a multi-task head
        return split(predictions, jobs)

    return handle


def generate_worker(served: Served, max_total_tokens: int) -> Callable[[list[Job]], list]:
    """Jobs' payloads: prompts (strings or message lists); a stream's: ([prompt], on_text, on_start). Results:
    a Completion per prompt, or the job's ApiError (prompt too long)."""

    def handle(jobs: list[Job]) -> list:
        sampling: Sampling = jobs[0].key
        with served.group.lock:
            served.group.activate(served.run)
            tokenizer = served.group.load().tokenizer
            results: list = [None] * len(jobs)
            counts = {}
            for i, job in enumerate(jobs):
                prompts = job.payload[0] if job.alone else job.payload
                counts[i] = served.run.predictor.prompt_tokens(prompts)
                too_long = [k for k, n in enumerate(counts[i]) if n + sampling.max_tokens > max_total_tokens]
                if too_long:
                    n = counts[i][too_long[0]]
                    results[i] = ApiError(
                        422,
                        f"{n} prompt tokens + max_tokens {sampling.max_tokens} exceed the limit of {max_total_tokens}",
                        f"prompt[{too_long[0]}]",
                    )
            live = [i for i in range(len(jobs)) if results[i] is None]
            if not live:
                return results
            if jobs[0].alone:  # a stream: one prompt, its text handed on as it comes
                prompts, on_text, on_start = jobs[0].payload
                on_start()
                streamer = text_streamer(tokenizer, on_text)
                texts = served.run.generate(
                    prompts, sampling.max_tokens, streamer=streamer, batch_size=1, **sampling.overrides()
                )
            else:
                prompts = [p for i in live for p in jobs[i].payload]
                texts = served.run.generate(
                    prompts, sampling.max_tokens, batch_size=len(prompts), **sampling.overrides()
                )
            done = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        flat = iter(zip(texts, [n for i in live for n in counts[i]], done))
        for i in live:
            results[i] = [Completion(*next(flat)) for _ in range(jobs[i].size)]
        return results

    return handle


def text_streamer(tokenizer, on_text: Callable[[str], None]):
    """A transformers streamer that hands each finished piece of text to `on_text` (the prompt is skipped)."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
