"""Shadow mode: a candidate model answers the production model's traffic, and only the prediction log hears it.

`--shadow A=B`: every request that A answers (asked for by name, or as an A/B route's arm) is handed to B's
batcher too, by an asyncio task started once A's answer is computed. The client gets A's answer and never
waits on B; B being busy, failing or slow is a log record with its status and error, not the client's
problem. B's record has the same request id, endpoint and inputs as A's, `"arm": "shadow"` and
`"shadow_of": "A"`; `compare_arms` pairs the two back up (`tunesmith log shadow LOG`): agreement, each arm's
label distribution and confidence, and with true labels each arm's accuracy and an exact McNemar test.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import Counter as Metric

from ..errors import ConfigError, TunesmithError
from ..evaluate.stats import mcnemar
from .batching import Busy, Job
from .guard import ApiError
from .options import Shadow
from .pool import Served
from .predlog import read_log

SHADOWED = frozenset({"classify", "generate"})
"""What a candidate must serve when its primary does (chat is shadowed when both serve it)."""


def check_shadows(shadows: list[Shadow], models: dict[str, Served], routes: set[str], log) -> None:
    """Every mistake in `--shadow` is one line, at start."""
    seen = set()
    for shadow in shadows:
        p, c = shadow.primary, shadow.candidate
        flag = f"--shadow {p}={c}"
        if log is None:
            raise ConfigError(
                f"{flag}: shadowing needs --log FILE (the candidate's answers are only written to the prediction "
                "log, where `tunesmith log shadow FILE` compares them)"
            )
        if p == c:
            raise ConfigError(f"{flag}: a model cannot shadow itself; name another served model as the candidate")
        for name in (p, c):
            if name in routes:
                raise ConfigError(f"{flag}: '{name}' is a route; shadow a served model (one of the route's arms)")
            if name not in models:
                raise ConfigError(f"{flag}: '{name}' is not a served model ({', '.join(models)})")
        if shadow in seen:
            raise ConfigError(f"{flag}: given twice")
        seen.add(shadow)
        primary, candidate = models[p], models[c]
        missing = sorted((primary.serves & SHADOWED) - candidate.serves)
        if missing:
            offers = ", ".join(sorted(candidate.serves))
            raise ConfigError(f"{flag}: '{c}' does not {missing[0]}, which '{p}' serves (it offers: {offers})")
        kinds = primary.run.predictor.input_kind, candidate.run.predictor.input_kind
        if "classify" in primary.serves and kinds[0] != kinds[1]:
            raise ConfigError(f"{flag}: '{p}' classifies {kinds[0]}s but '{c}' classifies {kinds[1]}s")


def answers(endpoint: str, result: list) -> list:
    """A batcher's result as the client's answer and the log's record carry it: classify's results, or the texts."""
    if endpoint == "classify":
        return [{"label": p.label, "score": p.score, "probs": p.probs} for p in result]
    return [c.text for c in result]


class Shadows:
    """The candidates following each primary, and the tasks that run them off the request path."""

    def __init__(self, serving, shadows: list[Shadow]):
        self.serving = serving
        self.of: dict[str, list[str]] = defaultdict(list)
        for shadow in shadows:
            self.of[shadow.primary].append(shadow.candidate)
        self.pending: set[asyncio.Task] = set()  # the event loop holds tasks weakly: without this, GC may eat them
        self.outcomes = Metric(
            "tunesmith_shadow",
            "Shadow answers (logged, never returned) by candidate and status",
            ["model", "status"],
            registry=serving.telemetry.registry,
        )

    def follow(self, request, endpoint: str, job_for: Callable[[Served], Job]) -> None:
        """Hand the inputs the answering model just answered to each of its candidates; returns at once.

        `job_for(candidate)` builds the candidate's job (it may raise ApiError: logged as the record's error)."""
        state = request.state
        primary = state.served
        if self.serving.log is None or primary.name not in self.of:
            return
        for name in self.of[primary.name]:
            candidate = self.serving.models[name]
            if endpoint not in candidate.serves:  # chat on a seq2seq candidate: nothing to compare
                continue
            record = {
                "request_id": state.request_id,
                "endpoint": endpoint,
                "model": name,
                "version": candidate.version,
                "route": getattr(state, "route", None),
                "arm": "shadow",
                "shadow_of": primary.name,
                "inputs": state.inputs,
            }
            task = asyncio.get_running_loop().create_task(self.answer(candidate, record, job_for))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def answer(self, candidate: Served, record: dict, job_for) -> None:
        """The candidate's answer, or why there is none, as one log record; never raises (but for cancellation)."""
        t0, timeout = time.perf_counter(), self.serving.options.timeout_s
        kind = "classify" if record["endpoint"] == "classify" else "generate"
        out, status, error = None, 200, None
        try:
            result = await self.serving.batchers[candidate.name, kind].submit(job_for(candidate), timeout)
            out = answers(record["endpoint"], result)
        except Busy:
            status, error = 503, f"model '{candidate.name}' is busy"
        except TimeoutError:
            status, error = 504, f"no answer within {timeout:g}s"
        except ApiError as err:
            status, error = err.status, err.message
        except TunesmithError as err:
            status, error = 400, str(err)
        except asyncio.CancelledError:
            self.write(record, None, 503, "the server stopped before the candidate answered", t0)
            raise
        except Exception as err:  # noqa: BLE001 - a candidate's failure is logged, never the client's
            status, error = 500, f"{type(err).__name__}: {err}"
        self.write(record, out, status, error, t0)

    def write(self, record: dict, outputs, status: int, error: str | None, t0: float) -> None:
        latency = round((time.perf_counter() - t0) * 1000, 2)  # the candidate's own: queue + model, from hand-off
        done = {"time": time.time(), **record, "outputs": outputs, "latency_ms": latency, "status": status}
        self.serving.log.write({**done, "error": error} if error else done)
        self.outcomes.labels(record["model"], str(status)).inc()

    async def drain(self, timeout: float) -> None:
        """Let pending shadow answers finish (up to `timeout`), then cancel the rest (logged as 503)."""
        if not self.pending:
            return
        _, late = await asyncio.wait(set(self.pending), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)


# ---- reading the log back: per (primary, candidate) pair
def read_labels(path: str | Path) -> dict[str, str]:
    """`id,label` CSV -> {item id: true label}; an item id is `REQUEST_ID:i` (i: the item's 0-based position)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--labels '{path}' does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"id", "label"} <= set(reader.fieldnames or ()):
            raise ConfigError(
                f"--labels '{path}': needs columns id,label (it has: {', '.join(reader.fieldnames or [])})"
            )
        labels = {}
        for line, row in enumerate(reader, start=2):
            if row["id"] in labels and labels[row["id"]] != row["label"]:
                raise ConfigError(f"--labels '{path}', line {line}: id '{row['id']}' has two labels")
            labels[row["id"]] = row["label"]
    return labels


def compare_arms(log_path: str | Path, labels: dict[str, str] | None = None) -> dict:
    """Pair every shadow record with its primary's (same request id, endpoint, and inputs) and compare them.

    {"pairs": [{endpoint, primary: "A@version", shadow: "B@version", requests, items, shadow_errors,
    agreement, arms: {primary: {...}, shadow: {...}}, (classify with labels:) labelled, mcnemar}],
    "shadow_records", "unpaired"}. A classifier's arms: labels (distribution), mean_score, accuracy (with
    labels); a generator's: mean_chars, and agreement is the exact-match rate of the completions."""
    primaries: dict[tuple, list[dict]] = defaultdict(list)
    shadows = []
    for rec in read_log(log_path):
        if rec.get("shadow_of"):
            shadows.append(rec)
        elif rec.get("status", 200) < 400:
            primaries[rec.get("request_id"), rec.get("endpoint"), rec.get("model")].append(rec)
    groups: dict[tuple, dict] = {}
    unpaired = 0
    for rec in shadows:
        same = primaries.get((rec.get("request_id"), rec.get("endpoint"), rec["shadow_of"]), [])
        primary = next((p for p in reversed(same) if p.get("inputs") == rec.get("inputs")), None)
        if primary is None:  # rotated away, or a client reused a request id
            unpaired += 1
            continue
        key = (rec["endpoint"], f"{primary['model']}@{primary['version']}", f"{rec['model']}@{rec['version']}")
        g = groups.setdefault(key, {"requests": 0, "errors": 0, "ids": [], "a": [], "b": []})
        if rec.get("status", 200) >= 400 or rec.get("outputs") is None:
            g["errors"] += 1
            continue
        g["requests"] += 1
        for i, (a, b) in enumerate(zip(primary["outputs"] or [], rec["outputs"])):
            g["ids"].append(f"{rec['request_id']}:{i}")
            g["a"].append(a)
            g["b"].append(b)
    pairs = [pair_entry(key, g, labels) for key, g in sorted(groups.items())]
    return {"pairs": pairs, "shadow_records": len(shadows), "unpaired": unpaired}


def pair_entry(key: tuple, g: dict, labels: dict[str, str] | None) -> dict:
    endpoint, primary, shadow = key
    entry = {
        "endpoint": endpoint,
        "primary": primary,
        "shadow": shadow,
        "requests": g["requests"],
        "items": len(g["ids"]),
        "shadow_errors": g["errors"],
        "agreement": None,
    }
    if not g["ids"]:
        return entry
    if endpoint != "classify":
        entry["agreement"] = rate([a == b for a, b in zip(g["a"], g["b"])])
        entry["arms"] = {arm: {"mean_chars": round(float(np.mean([len(t) for t in g[k]])), 1)} for arm, k in ARMS}
        return entry
    preds = {k: [str(o["label"]) for o in g[k]] for k in ("a", "b")}
    entry["agreement"] = rate([a == b for a, b in zip(preds["a"], preds["b"])])
    entry["arms"] = {}
    for arm, k in ARMS:
        counts = Counter(preds[k])
        entry["arms"][arm] = {
            "labels": {label: round(n / len(preds[k]), 4) for label, n in counts.most_common()},
            "mean_score": round(float(np.mean([o["score"] for o in g[k]])), 4),
        }
    if labels is not None:
        known = [i for i, item in enumerate(g["ids"]) if item in labels]
        truth = [str(labels[g["ids"][i]]) for i in known]
        entry["labelled"] = len(known)
        for arm, k in ARMS:
            picked = [preds[k][i] for i in known]
            entry["arms"][arm]["accuracy"] = rate([p == t for p, t in zip(picked, truth)]) if known else None
        a, b = ([preds[k][i] for i in known] for k in ("a", "b"))
        entry["mcnemar"] = mcnemar(truth, a, b) if known else None
    return entry


ARMS = (("primary", "a"), ("shadow", "b"))


def rate(hits: list[bool]) -> float:
    return round(sum(hits) / len(hits), 4)


def shadow_table(comparison: dict) -> str:
    """A few lines per pair: what `tunesmith log shadow` prints."""
    lines = []
    for e in comparison["pairs"]:
        agree = "-" if e["agreement"] is None else f"{e['agreement']:.1%}"
        lines.append(
            f"{e['primary']} -> shadow {e['shadow']} ({e['endpoint']}): {e['requests']} requests, {e['items']} items, "
            f"agreement {agree}, shadow errors {e['shadow_errors']}"
        )
        for arm, stats in e.get("arms", {}).items():
            parts = []
            if stats.get("accuracy") is not None:
                parts.append(f"accuracy {stats['accuracy']:.1%} of {e['labelled']} labelled")
            if "mean_score" in stats:
                parts.append(f"mean score {stats['mean_score']:.3f}")
                parts.append("labels " + ", ".join(f"{k} {v:.0%}" for k, v in stats["labels"].items()))
            if "mean_chars" in stats:
                parts.append(f"mean {stats['mean_chars']:.0f} chars")
            name = e["primary"] if arm == "primary" else e["shadow"]
            lines.append(f"  {arm:7} {name}: {'; '.join(parts)}")
        if e.get("mcnemar"):
            m = e["mcnemar"]
            lines.append(
                f"  exact McNemar: the shadow is right where the primary is wrong on {m['fixed']}, "
                f"wrong where it is right on {m['broke']} (p={m['p']:.3g})"
            )
    if not comparison["pairs"]:
        lines.append("no shadow record pairs with a primary record (was the server started with --shadow?)")
    if comparison["unpaired"]:
        lines.append(f"{comparison['unpaired']} shadow records have no primary record in the log (rotated away?)")
    return "\n".join(lines)
