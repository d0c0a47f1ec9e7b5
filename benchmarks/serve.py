"""`tunesmith serve` under load, over loopback (127.0.0.1 only): what dynamic batching buys, what adapters sharing one
base save, and what a barrage of bad requests does to the server.

    .venv/bin/python benchmarks/serve.py                     # everything (~12 min on 2 busy cores)
    .venv/bin/python benchmarks/serve.py --quick             # small counts: a smoke test of every path (~5 min)
    .venv/bin/python benchmarks/serve.py --lm-run RUN_DIR    # serve this generative run instead of training one
    .venv/bin/python benchmarks/serve.py --wait-quiet 20     # first wait (<= 20 min) until no other process is busy

Every part starts `tunesmith serve` as its own process on a free port of 127.0.0.1, load-tests it with a FIXED
number of requests from N concurrent asyncio clients (aiohttp; each request bounded by a timeout, each phase by a
deadline), samples the server's RSS (psutil, the process tree, every 0.2 s) and stops it (SIGTERM, then wait; kill
in a `finally`). Parts, one after another (never concurrently: 2 cores):

1. classifier: the quickstart run (MiniLM + LoRA, 3 sentiment labels), real tweets from its test_predictions.csv;
   single-text requests from 32 clients and batch-of-16 requests from 4 clients, with dynamic batching (default)
   and with `--no-batching`: requests/s, texts/s, p50/p95/p99 latency, errors, peak RSS, mean server batch size
   (from /metrics); batched and unbatched answers compared per text.
2. baseline: the same texts through a hand-written transformers `pipeline("text-classification")` on the LoRA
   merged into the weights (`tunesmith.export.export_run(..., format="hf", parity=False)`), in this process: one
   text at a time and `batch_size=32`, in fp32 (the pipeline's default) and under bf16 autocast (what the server
   runs when the run trained in bf16 and the CPU has it).
3. generation: a SmolLM2-135M-Instruct LoRA run (trained here once on a few dozen chat samples written below,
   cached in --work; or --lm-run): `/v1/generate` (max_tokens 32, temperature 0) from 8 clients, with and without
   batching: requests/s, generated tokens/s (completions re-tokenised), p50/p95 latency; one streamed
   `/v1/chat/completions`: time to the first content chunk vs the whole answer.
4. adapters: the quickstart run served under 1 name vs 4 names (four copies of the run folder, so four distinct
   adapter runs on one base: one PEFT model with 4 adapters): server RSS after warm-up, against 4 processes' worth.
5. barrage: bad requests of ~20 kinds (oversized, malformed, wrong types, unknown model, too many texts, a text too
   long, deep JSON nesting, unknown paths, ...) sent concurrently with good ones, plus slow clients on raw sockets
   (a stalled body, a trickled body, stalled headers); status codes per kind (4xx expected, no 5xx, no hang), then
   the same good request as before the barrage must give the same probabilities.

A background thread records any other process that used >= 30% of a core while this ran (`other_heavy`), and
per measured phase (`others_busy`, the table's last column): on 2 cores such a process changes every timing.
Prints progress to stderr, then the JSON and the Markdown table; writes benchmarks/results/serve.{json,md}
(with --quick: <work>/serve-quick.{json,md}, so a smoke test never replaces the committed results).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "sentiment-lora-20261202-013004"
HOST = "127.0.0.1"  # loopback only, always
T0 = time.perf_counter()
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}

SIZES = {
    "full": {
        "cls_requests": 512,
        "cls_clients": 32,
        "cls_batch_requests": 64,
        "cls_batch_clients": 4,
        "pipe_single": 512,
        "pipe_batch": 1024,
        "lm_requests": 64,
        "lm_clients": 8,
        "barrage_per_kind": 16,
        "barrage_good": 64,
        "barrage_clients": 32,
    },
    "quick": {
        "cls_requests": 64,
        "cls_clients": 8,
        "cls_batch_requests": 8,
        "cls_batch_clients": 4,
        "pipe_single": 64,
        "pipe_batch": 128,
        "lm_requests": 8,
        "lm_clients": 4,
        "barrage_per_kind": 2,
        "barrage_good": 8,
        "barrage_clients": 8,
    },
}
PHASE_DEADLINE_S = 90.0  # a load phase sends no new request after this (counts are tuned to well under it)
REQUEST_TIMEOUT_S = 90.0


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def r(x, nd=2):
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------- other processes on the machine


def own_pids() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(c.pid for c in me.children(recursive=True))}


def busy_others(window_s: float = 3.0, threshold: float = 30.0) -> list[dict]:
    """Processes not started by this script that used >= threshold % of one core over `window_s`."""
    first = {}
    for p in psutil.process_iter(["pid"]):
        try:
            first[p.pid] = (p, sum(p.cpu_times()[:2]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    time.sleep(window_s)
    mine, out = own_pids(), []
    for pid, (p, before) in first.items():
        if pid in mine:
            continue
        try:
            pct = 100 * (sum(p.cpu_times()[:2]) - before) / window_s
            if pct >= threshold:
                cmd = " ".join(" ".join(p.cmdline()).split())[:160]  # one line (a `python -c` has newlines)
                out.append({"pid": pid, "cpu_pct": round(pct), "cmd": cmd})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class HeavyWatch:
    """A thread noting every other busy process seen while the benchmark runs."""

    def __init__(self):
        self.seen: dict[str, dict] = {}
        self.events: list[tuple[float, str]] = []  # (seconds since start, command) of every busy sighting
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.is_set():
            for p in busy_others(window_s=5.0):
                key = p["cmd"]
                self.events.append((time.perf_counter() - T0, key))
                prev = self.seen.get(key)
                self.seen[key] = {
                    "cmd": key,
                    "max_cpu_pct": max(p["cpu_pct"], prev["max_cpu_pct"] if prev else 0),
                    "samples": (prev["samples"] if prev else 0) + 1,
                    "first_at_s": prev["first_at_s"] if prev else round(time.perf_counter() - T0),
                }  # back to back 5 s windows: no gap a short phase could fall into

    def __enter__(self):
        self._thread.start()
        return self

    def annotate(self, node) -> None:
        """Replace every `_span` (start, end) in the results by `others_busy`: the commands seen busy then."""
        if isinstance(node, dict):
            span = node.pop("_span", None)
            if span is not None:  # a sighting covers the 5 s before it
                node["others_busy"] = sorted({c for t, c in self.events if span[0] <= t <= span[1] + 5.0})
            for value in node.values():
                self.annotate(value)
        elif isinstance(node, list):
            for value in node:
                self.annotate(value)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)


def wait_quiet(minutes: float) -> dict:
    """Poll every 30 s (at most `minutes`) until no other process is busy."""
    t0, polls = time.time(), 0
    while True:
        polls += 1
        busy = busy_others()
        if not busy:
            return {"waited_s": round(time.time() - t0), "polls": polls, "quiet": True}
        if time.time() - t0 > minutes * 60:
            return {"waited_s": round(time.time() - t0), "polls": polls, "quiet": False, "still_busy": busy}
        say(
            f"waiting for a quiet machine: {len(busy)} busy: "
            + "; ".join(f"{b['cmd'][:70]} ({b['cpu_pct']}%)" for b in busy)
        )
        time.sleep(27)


# ---------------------------------------------------------------- the server as a subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class ServerProc:
    """`tunesmith serve MODELS --port P FLAGS` on 127.0.0.1, with an RSS sampler; always stopped on exit."""

    def __init__(self, label: str, models: list[str], flags: list[str], work: Path, env: dict | None = None):
        self.label, self.models, self.flags, self.env = label, models, flags, {**ENV, **(env or {})}
        self.log_path = work / "logs" / f"serve-{label}.log"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> ServerProc:
        exe = ROOT / ".venv" / "bin" / "tunesmith"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tunesmith"]
        cmd += ["serve", *self.models, "--host", HOST, "--port", str(self.port), *self.flags]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.ps = psutil.Process(self.proc.pid)
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
            deadline = time.monotonic() + 240
            while not self._healthy():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"server {self.label} did not start (exit {self.proc.poll()}):\n{tail}")
                time.sleep(0.2)
        except BaseException:
            self._shutdown()
            raise
        self.startup_s = time.perf_counter() - t0
        say(
            f"server {self.label} up on {self.url} in {self.startup_s:.1f}s ({' '.join(self.models)} {' '.join(self.flags)})"
        )
        return self

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, tree_rss(self.ps))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(0.2)

    def rss(self) -> int:
        return tree_rss(self.ps)

    def uss(self) -> int | None:
        try:
            return sum(p.memory_full_info().uss for p in (self.ps, *self.ps.children(recursive=True)))
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            return None

    def reset_peak(self) -> None:
        self.peak_rss = self.rss()

    def _shutdown(self) -> None:
        self._stop.set()
        if self.proc is None:
            return
        t0 = time.perf_counter()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=75)
                except subprocess.TimeoutExpired:
                    say(f"server {self.label} ignored SIGTERM for 75 s: killing it")
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self._log.close()
        self.shutdown_s = time.perf_counter() - t0
        self.exit_code = self.proc.returncode

    def __exit__(self, *exc) -> None:
        self._shutdown()
        say(f"server {self.label} stopped (exit {self.exit_code}, {self.shutdown_s:.1f}s)")


# ---------------------------------------------------------------- the load client


async def _requests(url: str, calls: list[dict], clients: int, deadline_s: float) -> tuple[list[dict], float]:
    """Each call {"method", "path", "json" | "data", "headers"} once, from `clients` concurrent workers; returns
    ([{"status", "ms", "body"}], wall seconds). Bounded: a timeout per request, no new request after the deadline."""
    import aiohttp

    out: list[dict | None] = [None] * len(calls)
    order = iter(range(len(calls)))
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline_s
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:

        async def worker():
            for i in order:  # one shared iterator: each call is taken once
                if loop.time() > stop_at:
                    out[i] = {"status": "not_sent", "ms": None, "body": None}
                    continue
                c = calls[i]
                data = c.get("data")
                if callable(data):
                    data = data()
                t0 = time.perf_counter()
                try:
                    async with session.request(
                        c.get("method", "POST"),
                        url + c["path"],
                        json=c.get("json"),
                        data=data,
                        headers=c.get("headers"),
                    ) as resp:
                        raw = await resp.read()
                        status = resp.status
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw[:200].decode(errors="replace")
                except TimeoutError:
                    status, body = "timeout", None
                except aiohttp.ClientError as err:
                    status, body = f"client_error:{type(err).__name__}", str(err)[:200]
                out[i] = {"status": status, "ms": (time.perf_counter() - t0) * 1000, "body": body}

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return out, wall


def send(url: str, calls: list[dict], clients: int, deadline_s: float = PHASE_DEADLINE_S):
    return asyncio.run(_requests(url, calls, clients, deadline_s))


def post(url: str, path: str, body) -> dict:
    return send(url, [{"path": path, "json": body}], 1)[0][0]


def latency(results: list[dict]) -> dict:
    ms = np.array([x["ms"] for x in results if x["status"] == 200], dtype=float)
    if not len(ms):
        return {}
    return {f"p{q}_ms": r(np.percentile(ms, q), 1) for q in (50, 95, 99)} | {"max_ms": r(ms.max(), 1)}


def status_counts(results: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for x in results:
        counts[str(x["status"])] = counts.get(str(x["status"]), 0) + 1
    return dict(sorted(counts.items()))


def metrics_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:  # 127.0.0.1 only
        return resp.read().decode()


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram for `model`: items and forward passes so far."""
    text = metrics_text(url)
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f'tunesmith_batch_size_sum{{model="{model}"}}'):
            total = float(line.split()[-1])
        elif line.startswith(f'tunesmith_batch_size_count{{model="{model}"}}'):
            count = float(line.split()[-1])
    return total, count


def phase(server: ServerProc, model: str, calls: list[dict], clients: int, items_per_call: list[int]) -> dict:
    """One measured load phase (after a warm-up): throughput, latency, errors, peak RSS, mean server batch."""
    warm = calls[: min(len(calls), clients)]
    send(server.url, warm, clients)
    server.reset_peak()
    before = batch_stats(server.url, model)
    t0 = time.perf_counter() - T0
    results, wall = send(server.url, calls, clients)
    span = (t0, time.perf_counter() - T0)
    after = batch_stats(server.url, model)
    ok = [x for x in results if x["status"] == 200]
    sent = [x for x in results if x["status"] != "not_sent"]
    items = sum(n for n, x in zip(items_per_call, results) if x["status"] == 200)
    passes = after[1] - before[1]
    row = {
        "requests": len(calls),
        "clients": clients,
        "ok": len(ok),
        "errors": len(sent) - len(ok),
        "not_sent_past_the_deadline": len(calls) - len(sent),
        "statuses": status_counts(results),
        "wall_s": r(wall, 2),
        "requests_per_s": r(len(ok) / wall, 1),
        "items_per_s": r(items / wall, 1),
        **latency(results),
        "peak_rss_mb": r(server.peak_rss / 2**20, 0),
        "forward_passes": int(passes),
        "mean_batch": r((after[0] - before[0]) / passes, 2) if passes else None,
        "_span": span,
    }
    return row, results


# ---------------------------------------------------------------- part 1 + 2: the classifier and its baseline


def tweets(n: int) -> list[str]:
    with open(RUN / "test_predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [row["text"] for row in rows]
    return [texts[i % len(texts)] for i in range(n)]


LABELS = json.loads((RUN / "labels.json").read_text())


def vec(probs: dict) -> list[float]:
    """A response's {label: probability} as a list in the run's label order."""
    return [probs[k] for k in LABELS]


def reference_probs(n: int) -> list[list[float]]:
    with open(RUN / "test_predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith("p_")]
    return [[float(rows[i % len(rows)][c]) for c in cols] for i in range(n)]


def part_classifier(size: dict, work: Path, threads_variants: bool) -> dict:
    singles = tweets(size["cls_requests"])
    batches = tweets(size["cls_batch_requests"] * 16)
    single_calls = [{"path": "/v1/classify", "json": {"model": "sentiment", "text": t}} for t in singles]
    batch_calls = [
        {"path": "/v1/classify", "json": {"model": "sentiment", "texts": batches[i : i + 16]}}
        for i in range(0, len(batches), 16)
    ]
    out, probs = {}, {}
    one = {"OMP_NUM_THREADS": "1"}
    variants = [("batching", [], {}), ("no-batching", ["--no-batching"], {})]
    if threads_variants:  # torch's intra-op threads compete with the event loop (and this client) for 2 cores
        variants += [("batching, 1 torch thread", [], one), ("no-batching, 1 torch thread", ["--no-batching"], one)]
    for label, flags, env in variants:
        with ServerProc(
            f"classifier-{label.replace(', ', '-').replace(' ', '')}", [f"sentiment={RUN}"], flags, work, env
        ) as srv:
            first = post(srv.url, "/v1/classify", {"model": "sentiment", "text": singles[0]})
            idle_rss = srv.rss()
            say(f"classifier {label}: {len(single_calls)} single-text requests from {size['cls_clients']} clients")
            single, res = phase(srv, "sentiment", single_calls, size["cls_clients"], [1] * len(single_calls))
            probs[label] = [vec(x["body"]["results"][0]["probs"]) if x["status"] == 200 else None for x in res]
            say(f"  {single['requests_per_s']} req/s, p50 {single.get('p50_ms')} ms, errors {single['errors']}")
            say(f"classifier {label}: {len(batch_calls)} batch-of-16 requests from {size['cls_batch_clients']} clients")
            batch16, _ = phase(srv, "sentiment", batch_calls, size["cls_batch_clients"], [16] * len(batch_calls))
            say(f"  {batch16['items_per_s']} texts/s, p50 {batch16.get('p50_ms')} ms, errors {batch16['errors']}")
            out[label] = {
                "torch_threads": env.get("OMP_NUM_THREADS", f"default ({os.cpu_count()})"),
                "startup_s": r(srv.startup_s, 1),
                "first_request_ms": r(first["ms"], 1),
                "idle_rss_mb": r(idle_rss / 2**20, 0),
                "single": single,
                "batch16": batch16,
            }
        out[label]["shutdown_s"], out[label]["exit_code"] = r(srv.shutdown_s, 1), srv.exit_code
    both = [(a, b) for a, b in zip(probs["batching"], probs["no-batching"]) if a and b]
    ref = reference_probs(len(singles))
    answered = [(a, p) for a, p in zip(probs["no-batching"], ref) if a]
    labels_agree = sum(int(np.argmax(a) == np.argmax(p)) for a, p in answered)
    out["consistency"] = {
        "texts_compared": len(both),
        "max_abs_diff_batched_vs_alone": r(max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in both), 6)
        if both
        else None,
        "labels_agreeing_with_test_predictions_csv": f"{labels_agree}/{len(answered)}",
        "max_abs_diff_vs_test_predictions_csv": r(
            max(float(np.max(np.abs(np.subtract(a, p)))) for a, p in zip(probs["no-batching"], ref) if a), 4
        ),
    }
    return out


def merged_folder(work: Path) -> tuple[Path, str]:
    """The quickstart LoRA merged into a plain transformers folder (cached in work)."""
    out = work / "merged-sentiment"
    if (out / "config.json").is_file():
        return out, "cached"
    try:
        from tunesmith.export import export_run

        export_run(RUN, out, format="hf", parity=False, force=True, say=lambda s: None)
        how = "tunesmith.export.export_run(format='hf', parity=False)"
    except Exception as err:  # another engineer is extending export: fall back to merging by hand
        say(f"export_run failed ({type(err).__name__}: {err}); merging by hand")
        from tunesmith.runs.run import Run

        loaded = Run(RUN).load(for_inference=False)
        merged = loaded.strategy.merged(loaded.model).eval()
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        how = "Run.load() + strategy.merged() + save_pretrained"
    return out, how


def part_pipeline(size: dict, work: Path) -> dict:
    """A user's own loop: transformers.pipeline on the merged model, in this process, after the servers stopped."""
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from tunesmith.runs.run import Run

    hf_logging.set_verbosity_error()
    folder, how = merged_folder(work)
    run = Run(RUN)
    max_length = run.config.data.max_length
    clf = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device=-1, top_k=None)
    names = run.label_names
    singles, batch = tweets(size["pipe_single"]), tweets(size["pipe_batch"])
    kw = {"truncation": True, "max_length": max_length}
    rows = {}
    for precision in ("fp32", "bf16-autocast"):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision != "fp32" else torch.no_grad
        with ctx(), torch.no_grad():
            clf(singles[:16], **kw)  # warm-up
            started = time.perf_counter() - T0
            t0 = time.perf_counter()
            one = [clf(t, **kw) for t in singles]
            loop_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            many = clf(batch, batch_size=32, **kw)
            batch_s = time.perf_counter() - t0
        rows[precision] = {
            "loop": {
                "texts": len(singles),
                "wall_s": r(loop_s),
                "texts_per_s": r(len(singles) / loop_s, 1),
                "_span": (started, started + loop_s),
            },
            "batch32": {
                "texts": len(batch),
                "wall_s": r(batch_s),
                "texts_per_s": r(len(batch) / batch_s, 1),
                "_span": (started + loop_s, started + loop_s + batch_s),
            },
        }
        say(
            f"pipeline {precision}: loop {rows[precision]['loop']['texts_per_s']} texts/s, batch 32 "
            f"{rows[precision]['batch32']['texts_per_s']} texts/s"
        )
    got = [max(o[0] if isinstance(o[0], list) else o, key=lambda d: d["score"])["label"] for o in one]
    pipe_labels = [g if g in names else names[int(g.split("_")[-1])] for g in got]
    with open(RUN / "test_predictions.csv", newline="", encoding="utf-8") as f:
        ref = [row["predicted"] for row in csv.DictReader(f)]
    agree = sum(int(a == ref[i % len(ref)]) for i, a in enumerate(pipe_labels))
    del clf, many
    gc.collect()
    return {
        "merged_with": how,
        "max_length": max_length,
        "torch_threads": torch.get_num_threads(),
        "server_precision": run._inference_precision("cpu"),
        "labels_agreeing_with_test_predictions_csv": f"{agree}/{len(pipe_labels)}",
        **rows,
    }


# ---------------------------------------------------------------- part 3: SmolLM2 generation

COUNTRIES = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Hungary", "Budapest"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
]  # fmt: skip
LM_PROMPTS = [
    "What is the capital of Belgium?", "What is the capital of Switzerland?", "What is 12 plus 30?",
    "Name three colours of the rainbow.", "What is the capital of Brazil?", "What is 7 times 6?",
    "Give one word that rhymes with cat.", "What is the capital of Australia?", "What is 100 minus 58?",
    "What do bees make?", "What is the capital of Argentina?", "How many legs does a spider have?",
    "What is the capital of Turkey?", "What is 9 plus 9?", "Which planet is called the red planet?",
    "What is the capital of Morocco?",
]  # fmt: skip


def chat_samples() -> list[dict]:
    """A few dozen chat samples written here: capitals and sums, answered in one short sentence."""
    rows = []
    for country, capital in COUNTRIES:
        rows.append((f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
    rng = random.Random(0)
    for _ in range(24):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        rows.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in rows]


RUNNER = """
import json, sys
import tunesmith
run = tunesmith.finetune(json.load(open(sys.argv[1])))
json.dump({"path": str(run.path)}, open(sys.argv[2], "w"))
"""


def lm_run(work: Path) -> tuple[Path, dict]:
    """A short SmolLM2 LoRA run, trained once in its own process and cached by its config."""
    data = work / "lm-chat.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(s) + "\n" for s in chat_samples()))
    cfg = {
        "name": "serve-bench-smollm2",
        "task": "causal-lm",
        "output_dir": str(work / "lm-runs"),
        "seed": 0,
        "data": {
            "path": str(data),
            "sample_format": "chat",
            "validation_size": 0.1,
            "test_size": 0.1,
            "max_length": 128,
            "packing": False,
            "group_near_duplicates": False,
        },
        "audit": {"block_on_leakage": False, "label_errors": False},
        "model": {"name": "smollm2-135m-instruct"},
        "strategy": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"epochs": 1, "batch_size": 8, "lr": 5e-4, "patience": None, "eval_every": 100, "log_every": 5},
        "eval": {"batch_size": 16},
        "generate": {"samples": 0, "before": False, "max_new_tokens": 32},
        "tracking": {"backend": "none"},
    }
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    cache = work / "lm-run.json"
    if cache.exists():
        hit = json.loads(cache.read_text())
        if hit.get("config_hash") == digest and (Path(hit["path"]) / "model").is_dir():
            return Path(hit["path"]), {**hit, "cached": True}
    (work / "logs").mkdir(exist_ok=True)
    cfg_file, out_file, log_file = work / "lm-config.json", work / "lm-out.json", work / "logs" / "lm-train.log"
    cfg_file.write_text(json.dumps(cfg, indent=1))
    out_file.unlink(missing_ok=True)
    say("training the SmolLM2 LoRA run (once; cached in --work)")
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(cfg_file), str(out_file)],
            cwd=ROOT,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    if proc.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"training the LM run failed (exit {proc.returncode}); see {log_file}")
    path = Path(json.loads(out_file.read_text())["path"])
    hit = {"path": str(path), "config_hash": digest, "train_wall_s": r(time.perf_counter() - t0, 1), "samples": 48}
    cache.write_text(json.dumps(hit, indent=1))
    say(f"LM run trained in {hit['train_wall_s']}s: {path}")
    return path, {**hit, "cached": False}


async def _stream(url: str, body: dict) -> dict:
    import aiohttp

    t0 = time.perf_counter()
    marks, pieces, chunks = {}, [], 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            marks["headers_ms"] = (time.perf_counter() - t0) * 1000
            status = resp.status
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    marks["done_ms"] = (time.perf_counter() - t0) * 1000
                    break
                chunks += 1
                delta = json.loads(data)["choices"][0]["delta"]
                if chunks == 1:
                    marks["first_chunk_ms"] = (time.perf_counter() - t0) * 1000
                if delta.get("content") and "first_token_ms" not in marks:
                    marks["first_token_ms"] = (time.perf_counter() - t0) * 1000
                pieces.append(delta.get("content", ""))
    return {"status": status, "chunks": chunks, "text": "".join(pieces), **{k: r(v, 1) for k, v in marks.items()}}


def part_lm(size: dict, work: Path, given: str | None) -> dict:
    from transformers import AutoTokenizer

    if given:
        path, info = Path(given), {"path": given, "given": True}
    else:
        path, info = lm_run(work)
    tok = AutoTokenizer.from_pretrained(path / "model")
    prompts = [LM_PROMPTS[i % len(LM_PROMPTS)] for i in range(size["lm_requests"])]
    calls = [
        {"path": "/v1/generate", "json": {"model": "smol", "prompt": p, "max_tokens": 32, "temperature": 0}}
        for p in prompts
    ]
    out = {"run": info}
    for label, flags in (("batching", []), ("no-batching", ["--no-batching"])):
        with ServerProc(f"lm-{label}", [f"smol={path}"], flags, work) as srv:
            first = post(srv.url, "/v1/generate", {"model": "smol", "prompt": "Hi", "max_tokens": 4, "temperature": 0})
            say(f"generate {label}: {len(calls)} requests from {size['lm_clients']} clients")
            row, res = phase(srv, "smol", calls, size["lm_clients"], [1] * len(calls))
            completions = [x["body"]["completions"][0] for x in res if x["status"] == 200]
            used = [x["body"].get("usage", {}).get("completion_tokens") for x in res if x["status"] == 200]
            if all(isinstance(u, int) for u in used):  # the server's own count
                tokens, row["tokens_counted_by"] = sum(used), "the server (usage.completion_tokens)"
            else:
                tokens = sum(len(tok.encode(c, add_special_tokens=False)) for c in completions)
                row["tokens_counted_by"] = "re-tokenised completions"
            row["generated_tokens"] = tokens
            row["generated_tokens_per_s"] = r(tokens / row["wall_s"], 1)
            row["mean_tokens_per_completion"] = r(tokens / max(len(completions), 1), 1)
            row["example"] = {"prompt": prompts[0], "completion": completions[0] if completions else None}
            row["startup_s"], row["first_request_ms"] = r(srv.startup_s, 1), r(first["ms"], 1)
            say(f"  {row['requests_per_s']} req/s, {row['generated_tokens_per_s']} tok/s, p50 {row.get('p50_ms')} ms")
            if label == "batching":
                chat = {
                    "model": "smol",
                    "messages": [{"role": "user", "content": "Name three colours of the rainbow."}],
                    "max_tokens": 32,
                    "temperature": 0,
                }
                whole = post(srv.url, "/v1/chat/completions", chat)
                streamed = asyncio.run(_stream(srv.url, {**chat, "stream": True}))
                streamed["same_text_as_unstreamed"] = (
                    whole["status"] == 200
                    and streamed["text"].strip() == whole["body"]["choices"][0]["message"]["content"]
                )
                streamed["unstreamed_total_ms"] = r(whole["ms"], 1)
                streamed["completion_tokens"] = (
                    whole["body"]["usage"]["completion_tokens"] if whole["status"] == 200 else None
                )
                out["stream"] = streamed
                say(f"  stream: first token {streamed.get('first_token_ms')} ms, done {streamed.get('done_ms')} ms")
            row["peak_rss_mb"] = r(srv.peak_rss / 2**20, 0)
            out[label] = row
    return out


# ---------------------------------------------------------------- part 4: adapters sharing a base


def part_adapters(work: Path) -> dict:
    variants = []
    for name in "ABCD":
        dest = work / "variants" / name / RUN.name
        if not (dest / "run.json").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(RUN, dest, ignore=shutil.ignore_patterns("*.png"))
        variants.append((name, dest))
    text = tweets(1)[0]
    out = {}
    for label, models in (("1 name", [f"A={RUN}"]), ("4 names", [f"{n}={p}" for n, p in variants])):
        with ServerProc(f"adapters-{label.replace(' ', '')}", models, [], work) as srv:
            names = [m.split("=")[0] for m in models]
            answers = {n: post(srv.url, "/v1/classify", {"model": n, "text": text}) for n in names}
            send(srv.url, [{"path": "/v1/classify", "json": {"model": n, "texts": tweets(32)}} for n in names * 2], 4)
            listed = send(srv.url, [{"method": "GET", "path": "/v1/models"}], 1)[0][0]["body"]["data"]
            time.sleep(1.0)
            out[label] = {
                "models": names,
                "rss_mb": r(srv.rss() / 2**20, 0),
                "uss_mb": r((srv.uss() or 0) / 2**20, 0),
                "peak_rss_mb": r(srv.peak_rss / 2**20, 0),
                "shares_base_with": {m["id"]: len(m.get("shares_base_with") or []) for m in listed},
                "all_ok": all(a["status"] == 200 for a in answers.values()),
                "same_probs_for_every_name": len(
                    {json.dumps(a["body"]["results"][0]["probs"]) for a in answers.values()}
                )
                == 1,
            }
            say(f"adapters {label}: RSS {out[label]['rss_mb']} MB")
    one, four = out["1 name"]["rss_mb"], out["4 names"]["rss_mb"]
    out["4 processes (4 x 1 name)"] = {"rss_mb": r(4 * one, 0)}
    out["extra_mb_per_added_adapter"] = r((four - one) / 3, 1)
    out["variants"] = "four copies of the quickstart run folder (distinct paths: four adapter runs on one base)"
    return out


# ---------------------------------------------------------------- part 5: the barrage


def barrage_kinds(limits: dict) -> dict[str, dict]:
    """Bad requests by kind: one call each, and the statuses that would be right."""
    m = "sentiment"
    big = json.dumps({"model": m, "texts": ["x" * 1000] * (limits["max_body_bytes"] // 1000 + 50)}).encode()

    def chunked_big():
        async def gen():
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        return gen()

    deep = b'{"model": "sentiment", "texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    j = {"content-type": "application/json"}
    return {
        "oversized body (content-length)": {"path": "/v1/classify", "data": big, "headers": j, "want": {413}},
        "oversized body (chunked)": {"path": "/v1/classify", "data": chunked_big, "headers": j, "want": {413}},
        "malformed JSON": {"path": "/v1/classify", "data": b'{"model": "sentiment", "texts": [', "headers": j},
        "invalid UTF-8": {"path": "/v1/classify", "data": b'{"model": "sentiment", "text": "\xff\xfe"}', "headers": j},
        "deeply nested JSON (50k)": {"path": "/v1/classify", "data": deep, "headers": j},
        "empty body": {"path": "/v1/classify", "data": b"", "headers": j},
        "JSON array, not object": {"path": "/v1/classify", "data": b"[1, 2, 3]", "headers": j},
        "texts: a number": {"path": "/v1/classify", "json": {"model": m, "texts": 5}, "want": {422}},
        "texts: a non-string item": {"path": "/v1/classify", "json": {"model": m, "texts": ["ok", 3]}, "want": {422}},
        "model: a number": {"path": "/v1/classify", "json": {"model": 3, "text": "ok"}, "want": {422}},
        "text and texts both": {
            "path": "/v1/classify",
            "json": {"model": m, "text": "a", "texts": ["b"]},
            "want": {422},
        },
        "no text": {"path": "/v1/classify", "json": {"model": m}, "want": {422}},
        "empty texts": {"path": "/v1/classify", "json": {"model": m, "texts": []}, "want": {422}},
        "unknown field": {"path": "/v1/classify", "json": {"model": m, "text": "a", "colour": "red"}, "want": {422}},
        "unknown model": {"path": "/v1/classify", "json": {"model": "nope", "text": "a"}, "want": {404}},
        "too many texts": {
            "path": "/v1/classify",
            "json": {"model": m, "texts": ["ok"] * (limits["max_texts"] + 1)},
            "want": {422},
        },
        "a text too long": {
            "path": "/v1/classify",
            "json": {"model": m, "texts": ["y" * (limits["max_text_chars"] + 1)]},
            "want": {422},
        },
        "generate on a classifier": {"path": "/v1/generate", "json": {"model": m, "prompt": "hi"}, "want": {400}},
        "chat on a classifier": {
            "path": "/v1/chat/completions",
            "json": {"model": m, "messages": [{"role": "user", "content": "hi"}]},
            "want": {400},
        },
        "GET on a POST endpoint": {"method": "GET", "path": "/v1/classify", "want": {405}},
        "unknown path (random)": {"path": "/v1/RANDOM", "json": {"model": m, "text": "a"}, "want": {404}},
    }


def slow_client(kind: str, port: int, wait_s: float) -> dict:
    """A raw-socket client that never finishes its request: what the server answers, and after how long."""
    t0 = time.perf_counter()
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
    try:
        with socket.create_connection((HOST, port), timeout=wait_s) as s:
            if kind == "stalled body":
                s.sendall(head + b'{"model": "sentiment"')
            elif kind == "stalled headers":
                s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            else:  # trickled body: one byte a second, never the whole body
                s.sendall(head)
                s.settimeout(1.0)
                body = b'{"model": "sentiment", "text": "' + b"a" * 200
                for i in range(int(wait_s)):
                    try:
                        s.sendall(body[i : i + 1])
                        got = s.recv(4096)
                        break
                    except TimeoutError:
                        continue
                    except OSError as err:
                        return {
                            "kind": kind,
                            "result": f"connection error {err}",
                            "after_s": r(time.perf_counter() - t0, 1),
                        }
                else:
                    got = None
                if got is None:
                    return {
                        "kind": kind,
                        "result": f"no answer within {wait_s:g}s",
                        "after_s": r(time.perf_counter() - t0, 1),
                    }
                return {
                    "kind": kind,
                    "result": got.split(b"\r\n", 1)[0].decode(errors="replace"),
                    "after_s": r(time.perf_counter() - t0, 1),
                }
            s.settimeout(wait_s)
            try:
                got = s.recv(4096)
            except TimeoutError:
                return {
                    "kind": kind,
                    "result": f"no answer within {wait_s:g}s (connection still open)",
                    "after_s": r(time.perf_counter() - t0, 1),
                }
            result = got.split(b"\r\n", 1)[0].decode(errors="replace") if got else "closed by the server, no answer"
            return {"kind": kind, "result": result, "after_s": r(time.perf_counter() - t0, 1)}
    except OSError as err:
        return {"kind": kind, "result": f"connection error {err}", "after_s": r(time.perf_counter() - t0, 1)}


def peer_closed(s: socket.socket) -> bool:
    """True when the server has answered or closed this connection."""
    s.settimeout(0.05)
    try:
        return s.recv(1, socket.MSG_PEEK) is not None
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def stalled_connections(srv: ServerProc, good: dict, n: int, read_timeout_s: float) -> dict:
    """`n` connections that send half a request line of headers and stall (slowloris), more than the server's
    connection limit (queue_size x models + 64): is a good request still answered meanwhile, and after they close?"""
    socks, t0 = [], time.perf_counter()
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, srv.port), timeout=5)
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(1.0)
        during = send(srv.url, [{"path": "/v1/classify", "json": good}], 1, deadline_s=30)[0][0]
        time.sleep(max(read_timeout_s + 1.0 - (time.perf_counter() - t0), 0))  # past the header deadline
        late = send(srv.url, [{"path": "/v1/classify", "json": good}], 1, deadline_s=30)[0][0]
        dropped = sum(1 for s in socks if peer_closed(s))
    finally:
        for s in socks:
            s.close()
    time.sleep(1.0)
    after = send(srv.url, [{"path": "/v1/classify", "json": good}], 1, deadline_s=30)[0][0]
    return {
        "connections": len(socks),
        "good_request_meanwhile": during["status"],
        "meanwhile_body": during["body"] if during["status"] != 200 else None,
        "good_request_past_the_header_deadline": late["status"],
        "stalled_connections_closed_by_the_server": dropped,
        "good_request_after_they_close": after["status"],
    }


def part_barrage(size: dict, work: Path) -> dict:
    from tunesmith.serve.options import ServeOptions

    d = ServeOptions()
    limits = {"max_body_bytes": d.max_body_bytes, "max_texts": d.max_texts, "max_text_chars": d.max_text_chars}
    kinds = barrage_kinds(limits)
    good_texts = tweets(8)
    good = {"path": "/v1/classify", "json": {"model": "sentiment", "texts": good_texts}}
    with ServerProc("barrage", [f"sentiment={RUN}"], [], work) as srv:
        before = post(srv.url, "/v1/classify", good["json"])
        want_probs = [vec(x["probs"]) for x in before["body"]["results"]]
        series_before = sum(
            1 for ln in metrics_text(srv.url).splitlines() if ln.startswith("tunesmith_requests_total{")
        )
        slow = []
        threads = [
            threading.Thread(target=lambda k=k: slow.append(slow_client(k, srv.port, 20.0)), daemon=True)
            for k in ("stalled body", "trickled body", "stalled headers")
        ]
        for t in threads:
            t.start()
        calls, tags = [], []
        for kind, spec in kinds.items():
            for _ in range(size["barrage_per_kind"]):
                call = {k: v for k, v in spec.items() if k != "want"}
                if "RANDOM" in call["path"]:
                    call["path"] = call["path"].replace("RANDOM", f"x{random.randrange(10**9)}")
                calls.append(call)
                tags.append(kind)
        calls += [good] * size["barrage_good"]
        tags += ["good (during the barrage)"] * size["barrage_good"]
        order = list(range(len(calls)))
        random.Random(0).shuffle(order)
        say(
            f"barrage: {len(calls)} requests ({len(kinds)} bad kinds + good ones) from {size['barrage_clients']} clients"
        )
        srv.reset_peak()
        started = time.perf_counter() - T0
        results, wall = send(srv.url, [calls[i] for i in order], size["barrage_clients"])
        by_kind: dict[str, list] = {}
        for i, res in zip(order, results):
            by_kind.setdefault(tags[i], []).append(res)
        for t in threads:
            t.join(40)
        after = post(srv.url, "/v1/classify", good["json"])
        got_probs = [vec(x["probs"]) for x in after["body"]["results"]] if after["status"] == 200 else None
        metrics = metrics_text(srv.url)
        series_after = sum(1 for ln in metrics.splitlines() if ln.startswith("tunesmith_requests_total{"))
        random_series = sum(
            1 for ln in metrics.splitlines() if ln.startswith('tunesmith_requests_total{endpoint="/v1/x')
        )
        stalled = stalled_connections(srv, good["json"], d.queue_size + 64 + 16, d.read_timeout_s)
        peak = srv.peak_rss
    rows = []
    for kind in [k for k in ("good (during the barrage)", *kinds) if k in by_kind]:  # in a fixed order
        res = by_kind[kind]
        spec = kinds.get(kind, {})
        statuses = status_counts(res)
        want = spec.get("want")
        ok = (
            all(
                isinstance(x["status"], int) and 400 <= x["status"] < 500 and (want is None or x["status"] in want)
                for x in res
            )
            if kind in kinds
            else all(x["status"] == 200 for x in res)
        )
        expected = ("/".join(map(str, sorted(want))) if want else "4xx") if kind in kinds else "200"
        rows.append(
            {
                "kind": kind,
                "sent": len(res),
                "statuses": statuses,
                "expected": expected,
                "as_expected": ok,
                "max_ms": r(max(x["ms"] or 0 for x in res), 1),
            }
        )
    allres = [x for res in by_kind.values() for x in res]
    good_during = by_kind.get("good (during the barrage)", [])
    diffs = [
        float(np.max(np.abs(np.subtract(vec(x["body"]["results"][0]["probs"]), want_probs[0]))))
        for x in good_during
        if x["status"] == 200
    ]
    return {
        "limits": limits | {"read_timeout_s": d.read_timeout_s, "connection_limit": d.queue_size + 64},
        "requests": len(calls),
        "clients": size["barrage_clients"],
        "wall_s": r(wall, 2),
        "kinds": rows,
        "server_errors_5xx": sum(1 for x in allres if isinstance(x["status"], int) and x["status"] >= 500),
        "client_side_failures": sum(1 for x in allres if not isinstance(x["status"], int)),
        "slow_clients": sorted(slow, key=lambda s: s["kind"]),
        "good_during_barrage": {
            "ok": sum(x["status"] == 200 for x in good_during),
            "sent": len(good_during),
            **latency(good_during),
            "max_abs_diff_vs_before": r(max(diffs), 7) if diffs else None,
        },
        "after": {
            "status": after["status"],
            "same_probs_as_before": got_probs == want_probs,
            "max_abs_diff": r(float(np.max(np.abs(np.subtract(got_probs, want_probs)))), 8) if got_probs else None,
        },
        "metrics_request_series": {
            "before": series_before,
            "after": series_after,
            "from_random_unknown_paths": random_series,
            "random_unknown_paths_sent": size["barrage_per_kind"],
        },
        "stalled_header_connections": stalled,
        "peak_rss_mb": r(peak / 2**20, 0),
        "_span": (started, time.perf_counter() - T0),
        "server_exit_code": srv.exit_code,
        "server_log_tracebacks": srv.log_path.read_text(errors="replace").count("Traceback"),
    }


# ---------------------------------------------------------------- machine, output


def machine() -> dict:
    import torch

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in cpu.splitlines() if ln.startswith("Flags")), [])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "tunesmith/serve", "tunesmith/cli/serve.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    import aiohttp
    import fastapi
    import transformers
    import uvicorn

    from tunesmith import __version__

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "arch": platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "aiohttp": aiohttp.__version__,
        "tunesmith": __version__,
        "commit": commit.stdout.strip() or None,
        "serve_code_uncommitted_changes": bool(dirty.stdout.strip()),
    }


def errs(row: dict) -> str:
    late = row.get("not_sent_past_the_deadline")
    return f"{row['errors']}" + (f" ({late} not sent: deadline)" if late else "")


def busy(row: dict) -> str:
    """Whether another process was busy during a measured phase (`-`: not recorded)."""
    if "others_busy" not in row:
        return "-"
    return "**yes**" if row["others_busy"] else "no"


def f(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def markdown(res: dict, command: str) -> str:
    mc = res["machine"]
    others = ", ".join(f"{o['cmd'][:60]} (max {o['max_cpu_pct']}%)" for o in res["other_heavy"])
    md = [
        "# `tunesmith serve` under load (loopback)",
        "",
        f"Machine: {mc['cpu']}, {mc['cores']} cores, {'AVX512-BF16' if mc['avx512_bf16'] else 'no AVX512-BF16'}"
        f"{', AMX-BF16' if mc['amx_bf16'] else ''}; torch {mc['torch']} ({mc['torch_threads']} threads), "
        f"transformers {mc['transformers']}, uvicorn {mc['uvicorn']}; tunesmith {mc['tunesmith']} ({mc['commit']}).",
        f"Other busy processes during the run: {others or 'none seen'}.",
        "",
        f"    {command}",
        "",
    ]
    if res.get("quick"):
        md += ["**Quick smoke-test sizes (`--quick`): these numbers only show that every path runs.**", ""]
    md += [
        "| setup | requests x texts | clients | req/s | texts/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MB | mean batch "
        "| others busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    c = res.get("classifier", {})
    for label in ("batching", "no-batching", "batching, 1 torch thread", "no-batching, 1 torch thread"):
        for key, shape in (("single", "1"), ("batch16", "16")):
            row = c.get(label, {}).get(key)
            if row:
                md.append(
                    f"| classifier, {label}, {shape}-text requests | {row['requests']} x {shape} | {row['clients']} | "
                    f"{f(row['requests_per_s'])} | {f(row['items_per_s'])} | {f(row.get('p50_ms'))} | {f(row.get('p95_ms'))} | "
                    f"{f(row.get('p99_ms'))} | {errs(row)} | {f(row['peak_rss_mb'], '.0f')} | {f(row['mean_batch'], '.2f')} | "
                    f"{busy(row)} |"
                )
    p = res.get("pipeline", {})
    for prec in ("fp32", "bf16-autocast"):
        for key, name in (("loop", "pipeline loop, 1 text a call"), ("batch32", "pipeline, batch_size=32")):
            row = p.get(prec, {}).get(key)
            if row:
                md.append(
                    f"| {name} ({prec}), in-process | {row['texts']} texts | 1 | - | {f(row['texts_per_s'])} | - | - | - | - "
                    f"| - | {'1' if key == 'loop' else '32'} | {busy(row)} |"
                )
    lm = res.get("lm", {})
    if lm:
        md += [
            "",
            "| SmolLM2-135M + LoRA, /v1/generate (max_tokens 32, temperature 0) | requests | clients | req/s | generated tokens/s | tokens per answer | p50 ms | p95 ms | errors | peak RSS MB | mean batch | others busy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label in ("batching", "no-batching"):
            row = lm.get(label)
            if row:
                md.append(
                    f"| {label} | {row['requests']} | {row['clients']} | {f(row['requests_per_s'], '.2f')} | {f(row['generated_tokens_per_s'])} | "
                    f"{f(row['mean_tokens_per_completion'])} | {f(row.get('p50_ms'), '.0f')} | {f(row.get('p95_ms'), '.0f')} | {errs(row)} | "
                    f"{f(row['peak_rss_mb'], '.0f')} | {f(row['mean_batch'], '.2f')} | {busy(row)} |"
                )
        s = lm.get("stream")
        if s:
            md += [
                "",
                f"Streamed `/v1/chat/completions` (32 tokens max, greedy, server idle): first chunk (the role) at "
                f"{f(s.get('first_chunk_ms'), '.0f')} ms, first content at {f(s.get('first_token_ms'), '.0f')} ms, "
                f"`[DONE]` at {f(s.get('done_ms'), '.0f')} ms ({s['chunks']} chunks); the same request unstreamed: "
                f"{f(s.get('unstreamed_total_ms'), '.0f')} ms; same text: {s.get('same_text_as_unstreamed')}.",
            ]
    a = res.get("adapters", {})
    if a:
        md += [
            "",
            "| adapters sharing one base (quickstart MiniLM LoRA) | server RSS MB after warm-up | USS MB |",
            "|---|---|---|",
            f"| 1 name, 1 process | {f(a['1 name']['rss_mb'], '.0f')} | {f(a['1 name']['uss_mb'], '.0f')} |",
            f"| 4 names (4 adapters on one PEFT model), 1 process | {f(a['4 names']['rss_mb'], '.0f')} | {f(a['4 names']['uss_mb'], '.0f')} |",
            f"| 4 separate processes (4 x 1 name) | {f(a['4 processes (4 x 1 name)']['rss_mb'], '.0f')} | - |",
            "",
            f"Each added adapter: {f(a['extra_mb_per_added_adapter'])} MB.",
        ]
    b = res.get("barrage", {})
    if b:
        md += [
            "",
            f"Barrage: {b['requests']} requests from {b['clients']} clients in {f(b['wall_s'], '.1f')} s; "
            f"5xx: {b['server_errors_5xx']}; client-side failures (reset, timeout): {b['client_side_failures']}; "
            f"after it, the same good request gives the same probabilities: {b['after']['same_probs_as_before']} "
            f"(max diff {b['after']['max_abs_diff']}); good requests during it: {b['good_during_barrage']['ok']}/"
            f"{b['good_during_barrage']['sent']} answered (max {f(b['good_during_barrage'].get('max_ms'), '.0f')} ms); "
            f"/metrics request series {b['metrics_request_series']['before']} -> {b['metrics_request_series']['after']} "
            f"({b['metrics_request_series']['from_random_unknown_paths']} of them from the "
            f"{b['metrics_request_series']['random_unknown_paths_sent']} random unknown paths).",
            "",
            "| kind | sent | statuses | expected | ok |",
            "|---|---|---|---|---|",
        ]
        for row in b["kinds"]:
            st = ", ".join(f"{k}: {v}" for k, v in row["statuses"].items())
            ok = "yes" if row["as_expected"] else "**no**"
            md.append(f"| {row['kind']} | {row['sent']} | {st} | {row['expected']} | {ok} |")
        for s in b["slow_clients"]:
            ok = "yes" if s["result"].startswith("HTTP/1.1 408") else "**no**"
            md.append(f"| slow client: {s['kind']} | 1 | {s['result']} after {s['after_s']} s | 408 | {ok} |")
        st = b.get("stalled_header_connections")
        if st:
            ok = "yes" if st["good_request_past_the_header_deadline"] == 200 else "**no**"
            md.append(
                f"| {st['connections']} connections with stalled headers (over the limit), then 1 good request | 1 | "
                f"{st['good_request_meanwhile']} at 1 s; {st['good_request_past_the_header_deadline']} past the header "
                f"deadline ({st['stalled_connections_closed_by_the_server']} stalled ones closed by the server) | 200 past the deadline | {ok} |"
            )
    if res.get("errors"):
        md += ["", "Errors:", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(md) + "\n"


def portable(text: str, work: Path) -> str:
    """Committed results name paths relative to the repo (and `$WORK` for --work), not this machine's."""
    return text.replace(f"{ROOT}/", "").replace(str(work.resolve()), "$WORK").replace(str(work), "$WORK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke test of every path")
    ap.add_argument("--lm-run", help="a finished causal-lm run folder to serve (default: train a short one, cached)")
    ap.add_argument("--work", default="/tmp/tunesmith-serve-bench", help="logs, the merged model, the LM run")
    ap.add_argument("--out", help="where serve.{json,md} go (default benchmarks/results; with --quick: --work)")
    ap.add_argument(
        "--no-thread-variants", action="store_true", help="skip the classifier servers run with OMP_NUM_THREADS=1"
    )
    ap.add_argument("--parts", default="classifier,pipeline,lm,adapters,barrage", help="comma-separated subset")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="MIN",
        help="first wait up to MIN minutes until no other process uses >= 30%% of a core (polled every 30 s)",
    )
    args = ap.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict = {"quick": args.quick, "sizes": size}
    if args.wait_quiet:
        results["wait_quiet"] = wait_quiet(args.wait_quiet)
        say(f"machine quiet: {results['wait_quiet']}")
    errors = []
    t0 = time.perf_counter()
    with HeavyWatch() as watch:
        for name, fn in (
            ("classifier", lambda: part_classifier(size, work, not args.no_thread_variants)),
            ("pipeline", lambda: part_pipeline(size, work)),
            ("lm", lambda: part_lm(size, work, args.lm_run)),
            ("adapters", lambda: part_adapters(work)),
            ("barrage", lambda: part_barrage(size, work)),
        ):
            if name not in parts:
                continue
            say(f"part {name}")
            t = time.perf_counter()
            try:
                results[name] = fn()
                results[name]["part_wall_s"] = r(time.perf_counter() - t, 1)
            except Exception as err:  # one part failing still leaves the others' results
                errors.append(f"{name}: {type(err).__name__}: {str(err)[-1500:]}")
                say(f"part {name} FAILED: {err}")
    results["wall_s"] = r(time.perf_counter() - t0, 1)
    results["other_heavy"] = sorted(watch.seen.values(), key=lambda o: -o["max_cpu_pct"])
    results["other_heavy_seen"] = bool(watch.seen)
    watch.annotate(results)
    results["machine"] = machine()
    if errors:
        results["errors"] = errors
    cmd = ".venv/bin/python benchmarks/serve.py" + (" --quick" if args.quick else "")
    cmd += f" --lm-run {args.lm_run}" if args.lm_run else ""
    cmd += f" --wait-quiet {args.wait_quiet:g}" if args.wait_quiet else ""
    text = markdown(results, cmd)
    out = Path(args.out) if args.out else work if args.quick else ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = "serve-quick" if args.quick else "serve"
    (out / f"{stem}.json").write_text(portable(json.dumps(results, indent=2) + "\n", Path(args.work)))
    (out / f"{stem}.md").write_text(portable(text, Path(args.work)))
    print(json.dumps(results, indent=1))
    print(text)
    say(f"done in {results['wall_s']}s" + (f"; {len(errors)} part(s) failed" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
