"""The server's parts on their own: the batcher's queue and batches, A/B hashing, the prediction log's rotation."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tunesmith.errors import ConfigError
from tunesmith.serve import ServeOptions, parse_route, summarize
from tunesmith.serve.batching import Batcher, Busy, Job
from tunesmith.serve.predlog import PredictionLog, log_files


def test_batcher_joins_jobs_of_one_key_up_to_max_batch_and_keeps_order():
    seen = []

    def handler(jobs):
        seen.append([j.payload for j in jobs])
        return [j.payload * 10 for j in jobs]

    gate = threading.Event()
    first = lambda jobs: (gate.wait(5), handler(jobs))[1]
    batcher = Batcher("t", first, max_batch=3, max_wait_s=0.05, queue_size=16)

    async def main():
        jobs = [Job(i, 1, key="k" if i != 4 else "other") for i in range(6)]
        tasks = [asyncio.ensure_future(batcher.submit(j, 5)) for j in jobs]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    batcher.close()
    assert all(len(b) <= 3 for b in seen) and [4] in seen  # another key never shares a batch
    assert sorted(x for b in seen for x in b) == list(range(6))


def test_a_full_queue_is_busy_at_once_and_errors_reach_every_job_of_the_batch():
    release = threading.Event()

    def handler(jobs):
        release.wait(5)
        raise ValueError("model broke")

    batcher = Batcher("t", handler, max_batch=1, max_wait_s=0, queue_size=1)

    async def main():
        running = asyncio.ensure_future(batcher.submit(Job("a", 1), 5))
        await asyncio.sleep(0.05)  # "a" is in the handler; the queue is empty again
        queued = asyncio.ensure_future(batcher.submit(Job("b", 1), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(Busy):
            await batcher.submit(Job("c", 1), 5)
        release.set()
        return await asyncio.gather(running, queued, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in results)
    batcher.close()


def test_a_job_whose_caller_timed_out_never_reaches_the_model():
    ran = []
    batcher = Batcher(
        "t", lambda jobs: (time.sleep(0.2), ran.extend(j.payload for j in jobs), [0] * len(jobs))[2], 1, 0, 8
    )

    async def main():
        slow = asyncio.ensure_future(batcher.submit(Job("first", 1), 5))
        await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await batcher.submit(Job("gave-up", 1), 0.05)
        await slow

    asyncio.run(main())
    batcher.close()
    assert ran == ["first"]


def test_route_parsing_and_stable_split():
    route = parse_route("s=A:3,B:1")
    assert route.arms == [("A", 0.75), ("B", 0.25)]
    picks = [route.pick(f"user-{i}") for i in range(4000)]
    assert abs(picks.count("B") / 4000 - 0.25) < 0.03
    assert [route.pick(f"user-{i}") for i in range(50)] == picks[:50]
    assert parse_route("s=A,B").arms == [("A", 0.5), ("B", 0.5)]
    for bad, says in (
        ("s", "write NAME="),
        ("s=A:x", "not a number"),
        ("s=A:0", "share > 0"),
        ("s=A,A", "named twice"),
    ):
        with pytest.raises(ConfigError, match=says):
            parse_route(bad)


def test_options_check_themselves_and_keys_compare_in_constant_time():
    with pytest.raises(ConfigError, match="max-batch"):
        ServeOptions(max_batch=0)
    opts = ServeOptions(api_keys=["k1", "k2"])
    assert opts.key_ok("k2") and not opts.key_ok("k") and not opts.key_ok(None)
    assert ServeOptions().key_ok(None)


def test_prediction_log_rotates_keeps_every_record_and_summarizes(tmp_path):
    path = tmp_path / "p.jsonl"
    log = PredictionLog(path, rotate_bytes=2000, keep=50)
    for i in range(100):
        log.write(
            {
                "model": "m",
                "version": "v1" if i % 4 else "v2",
                "latency_ms": float(i),
                "status": 200,
                "outputs": [{"label": "pos" if i % 2 else "neg"}],
                "route": "r",
                "arm": "m",
            }
        )
    log.close()
    files = log_files(path)
    assert len(files) > 2 and files[-1] == path  # rotated, oldest first, the live file last
    lines = [json.loads(ln) for f in files for ln in f.read_text().splitlines()]
    assert [r["latency_ms"] for r in lines] == [float(i) for i in range(100)]
    summary = summarize(path)
    assert summary["m@v1"]["requests"] == 75 and summary["m@v2"]["requests"] == 25
    assert summary["m@v2"]["labels"] == {"neg": 1.0} and summary["m@v1"]["arms"] == {"r:m": 75}
    with pytest.raises(ConfigError, match="does not exist"):
        summarize(tmp_path / "none.jsonl")
