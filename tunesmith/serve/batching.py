"""Dynamic batching: concurrent requests for one model join one forward pass, behind a bounded queue.

One worker thread per model takes the first waiting job, waits up to `max_wait` for more (up to
`max_batch` items in all), and hands them to the model together. The queue is bounded: when it is
full, `submit` raises `Busy` at once (the server answers 503 + Retry-After) instead of letting memory
grow. A job whose caller gave up (timeout, disconnect) is dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field


class Busy(Exception):
    """The model's queue is full."""


@dataclass
class Job:
    payload: object
    size: int
    """Items it adds to a batch (texts or prompts)."""
    key: object = None
    """Jobs batch together only with jobs of the same key (e.g. the same generation settings)."""
    alone: bool = False
    """Runs in a batch of its own (streaming)."""
    future: Future = field(default_factory=Future)


class Batcher:
    """`await batcher.submit(job)` -> the handler's result for that job.

    `handler(jobs) -> results` runs in the worker thread, one list per batch; it may raise, and the error
    goes to every job of the batch (an exception returned as one job's result goes to that job only). `on_batch(size)` observes batch sizes (metrics).
    """

    def __init__(
        self,
        name: str,
        handler: Callable[[list[Job]], list],
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: Callable[[int], None] = lambda n: None,
    ):
        self.name, self.handler, self.on_batch = name, handler, on_batch
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._held: Job | None = None  # a job taken that did not fit the last batch
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self.jobs.qsize()

    async def submit(self, job: Job, timeout: float):
        self.enqueue(job)
        return await self.wait(job, timeout)

    def enqueue(self, job: Job) -> None:
        """Queue the job, or raise Busy at once when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Busy(self.name) from None

    async def wait(self, job: Job, timeout: float):
        """The job's result (its error re-raised; TimeoutError after `timeout` seconds)."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        finally:
            job.future.cancel()  # no-op once running or done; a job still queued is skipped by the worker

    def close(self, timeout: float = 30.0) -> None:
        """Finish every queued job, then stop the worker."""
        self.jobs.put(None)
        self._thread.join(timeout)

    # ---- the worker thread
    def _work(self) -> None:
        while True:
            first = self._held or self.jobs.get()
            self._held = None
            if first is None:
                return
            batch = self._gather(first)
            if batch is None:  # the stop sentinel came (what was gathered before it has run)
                return
            self._run(batch)

    def _gather(self, first: Job) -> list[Job] | None:
        """`first` plus the jobs that arrive within max_wait and fit; None when the stop sentinel came."""
        batch, size = [first], first.size
        if first.alone:
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop: run what we have, then end
                self._run(batch)
                return None
            if job.alone or job.key != first.key or size + job.size > self.max_batch:
                self._held = job  # starts the next batch
                break
            batch.append(job)
            size += job.size
        return batch

    def _run(self, batch: list[Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.on_batch(sum(j.size for j in live))
        try:
            results = self.handler(live)
        except BaseException as err:  # noqa: BLE001 - the error belongs to the requests, not to the worker
            for j in live:
                j.future.set_exception(err)
            return
        for j, result in zip(live, results):  # a result that is an exception belongs to that job alone
            j.future.set_exception(result) if isinstance(result, BaseException) else j.future.set_result(result)
