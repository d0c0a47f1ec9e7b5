"""The prediction log: every request and answer, appended as JSON lines by a writer thread (off the request path).

A record: time, request id, endpoint, the model name asked for, the model that answered and its version
(the run folder), the A/B route and arm, the input, the output (labels and probabilities, or completions),
latency and status; a shadow's record (shadow.py) also says `"arm": "shadow"` and `"shadow_of"`. Files rotate
by size: `LOG` -> `LOG.1` -> ... -> `LOG.<keep>`. `summarize` reads them all back: per-version traffic, errors,
latency and label distribution (`tunesmith log summarize LOG`), a shadow's traffic apart from its own.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError


class PredictionLog:
    def __init__(self, path: Path, rotate_bytes: int = 50_000_000, keep: int = 5, flush_s: float = 0.5):
        self.path, self.rotate_bytes, self.keep, self.flush_s = Path(path), rotate_bytes, keep, flush_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="prediction-log", daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        """Never blocks the request: the record is queued for the writer thread."""
        self._records.put(record)

    def close(self, timeout: float = 10.0) -> None:
        """Write every queued record, then stop."""
        self._records.put(None)
        self._thread.join(timeout)

    def _write(self) -> None:
        out = self.path.open("a", encoding="utf-8")
        try:
            while True:
                try:
                    record = self._records.get(timeout=self.flush_s)
                except queue.Empty:
                    out.flush()
                    continue
                if record is None:
                    return
                out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                if out.tell() >= self.rotate_bytes:
                    out.close()
                    self._rotate()
                    out = self.path.open("a", encoding="utf-8")
        finally:
            out.close()

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def log_files(path: Path) -> list[Path]:
    """The log and its rotated files, oldest first."""
    path = Path(path)
    rotated = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    files = sorted(rotated, key=lambda p: -int(p.suffix[1:])) + ([path] if path.exists() else [])
    if not files:
        raise ConfigError(f"prediction log '{path}' does not exist (start the server with --log {path})")
    return files


def read_log(path: Path):
    """Every record of the log and its rotated files, oldest first (a torn last line is skipped)."""
    for file in log_files(path):
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def summarize(path: Path) -> dict:
    """{version: {requests, errors, items, latency_ms p50/p95/p99, arms, labels | mean output chars}}.

    A model's answers as a shadow are their own entry, `"MODEL@VERSION (shadow of PRIMARY)"`, arm "shadow"."""
    groups: dict[tuple, dict] = defaultdict(
        lambda: {
            "requests": 0,
            "errors": 0,
            "items": 0,
            "latency": [],
            "arms": Counter(),
            "labels": Counter(),
            "chars": [],
        }
    )
    for rec in read_log(path):
        shadow_of = rec.get("shadow_of")
        g = groups[(rec.get("model"), rec.get("version"), shadow_of)]
        g["requests"] += 1
        g["errors"] += rec.get("status", 200) >= 400
        g["latency"].append(rec.get("latency_ms", 0.0))
        if shadow_of:
            g["arms"]["shadow"] += 1
        elif rec.get("arm"):
            g["arms"][f"{rec.get('route')}:{rec['arm']}"] += 1
        for out in rec.get("outputs") or []:
            g["items"] += 1
            if isinstance(out, dict) and "label" in out:
                g["labels"][out["label"]] += 1
            elif isinstance(out, str):
                g["chars"].append(len(out))
    summary = {}
    for (model, version, shadow_of), g in sorted(groups.items(), key=lambda kv: str(kv[0])):
        lat = np.array(g["latency"], dtype=float)
        entry = {
            "model": model,
            "version": version,
            "requests": g["requests"],
            "errors": g["errors"],
            "items": g["items"],
            "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 2) for q in ("p50", "p95", "p99")},
            "arms": dict(g["arms"]),
        }
        if shadow_of:
            entry["shadow_of"] = shadow_of
        if g["labels"]:
            entry["labels"] = {k: round(v / sum(g["labels"].values()), 4) for k, v in g["labels"].most_common()}
        if g["chars"]:
            entry["mean_output_chars"] = round(float(np.mean(g["chars"])), 1)
        summary[f"{model}@{version}" + (f" (shadow of {shadow_of})" if shadow_of else "")] = entry
    return summary


def summary_table(summary: dict) -> str:
    lines = [f"{'model':22} {'version':34} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8}  outputs"]
    for e in summary.values():
        if "labels" in e:
            outputs = ", ".join(f"{k} {v:.0%}" for k, v in e["labels"].items())
        else:
            outputs = f"mean {e.get('mean_output_chars', 0):.0f} chars" if e["items"] else "-"
        arms = f"  [{', '.join(f'{a} {n}' for a, n in e['arms'].items())}]" if e["arms"] else ""
        arms = f"  [shadow of {e['shadow_of']}]" if e.get("shadow_of") else arms
        lines.append(
            f"{str(e['model'])[:22]:22} {str(e['version'])[:34]:34} {e['requests']:>8} {e['errors']:>6} "
            f"{e['latency_ms']['p50']:>8.1f} {e['latency_ms']['p95']:>8.1f}  {outputs}{arms}"
        )
    return "\n".join(lines)
