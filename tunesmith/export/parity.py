"""The parity check every export gets: the exported artifact next to the trained run, on the run's own test inputs.

Reference: the run's model as trained (adapters not merged) in float32 without autocast, so the comparison
measures what the export changed (merge, conversion, quantization), not the run's bf16 inference.
Inputs: the run's test split re-derived from its saved config (its fingerprint checked against run.json), the
first `rows` of it (default 200 for classifiers, 16 samples for language models).

Classifiers (`classifier.py`): logits on the same token ids -> max |logit diff|, agreement of the predicted
labels, macro-F1 and accuracy of both, the exported tokenizer's ids against the run's, batch-1 / batch-32 latency.
Image classifiers (`image_classifier.py`): the same figures on the pixels of the first 128 test images (read from
the run's test_predictions.csv when its rows are image files, else from the re-derived split), with the exported
image processor's pixels against the run's in place of the tokenizer check.
Language models (`language_model.py`): next-token logits at every trained position of the test samples -> max
|logit diff| and the test perplexity of both; greedy continuations of the test prompts -> exact-match share and
first-token agreement; the exported tokenizer's ids on the rendered samples.

Each check has a tolerance (TOLERANCES, by the export's precision); an export outside one fails, and the
command exits with a ParityError naming the first miss.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from ..errors import TunesmithError


class ParityError(TunesmithError):
    """An export whose outputs differ from the trained run's beyond the stated tolerance."""

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines or []
        """The parity figures beside their tolerances (what the CLI prints before the error)."""


@dataclass(frozen=True)
class Tolerance:
    """What an export must meet, by its precision. None: measured and reported, not checked."""

    max_logit_diff: float | None
    """Largest |export logit - run logit| over every compared position."""
    min_agreement: float
    """Share of predicted labels (classifiers) or first greedy tokens (language models) that agree."""
    min_exact: float | None
    """Language models: share of greedy continuations that are identical, token for token."""
    max_metric_drop: float
    """Classifiers: macro-F1 of the run minus the export's (absolute). Language models: the export's test
    perplexity over the run's, minus 1 (relative increase)."""
    min_tokenizer_agreement: float = 1.0
    """Share of texts the exported tokenizer turns into the same ids as the run's."""


# precision -> tolerance. fp32: the same numbers up to summation order; f16/bf16: weights rounded to 11/8
# significant bits; int8/q8_0: 8-bit weights; low-bit: 4/5-bit GGUF blocks.
CLASSIFIER_TOLERANCES = {
    "fp32": Tolerance(1e-3, 1.0, None, 0.0),
    "int8": Tolerance(None, 0.95, None, 0.02),
}
LM_TOLERANCES = {
    "fp32": Tolerance(1e-3, 0.95, 0.9, 0.001),
    "f16": Tolerance(0.25, 0.9, 0.75, 0.005),
    "bf16": Tolerance(1.0, 0.85, 0.5, 0.02),
    "q8_0": Tolerance(None, 0.8, None, 0.02),
    "low-bit": Tolerance(None, 0.6, None, 0.10),
}
DEFAULT_ROWS = {"classifier": 200, "image-classifier": 128, "language-model": 16}


def tolerance(kind: str, precision: str, max_metric_drop: float | None = None) -> Tolerance:
    """The tolerance for an export of `kind` ("classifier" | "image-classifier" | "language-model") at `precision`;
    `max_metric_drop` (the --max-metric-drop flag) replaces its metric limit. Image classifiers are held to the
    text classifiers' limits: the same logits, labels and macro-F1 are compared."""
    table = LM_TOLERANCES if kind == "language-model" else CLASSIFIER_TOLERANCES
    tol = table[precision]
    return tol if max_metric_drop is None else dataclasses.replace(tol, max_metric_drop=float(max_metric_drop))


def verdict(measured: dict, tol: Tolerance, tokenizer_checked: bool = True) -> list[str]:
    """The tolerances `measured` misses (empty: it passes), each as one phrase."""
    misses = []
    diff = measured.get("max_abs_logit_diff")
    if tol.max_logit_diff is not None and diff is not None and not diff <= tol.max_logit_diff:
        misses.append(f"max |logit diff| {diff:.3g} > {tol.max_logit_diff:g}")
    agree = measured.get("label_agreement", measured.get("first_token_agreement"))
    what = "label agreement" if "label_agreement" in measured else "first-token agreement"
    if agree is not None and agree < tol.min_agreement:
        misses.append(f"{what} {agree:.1%} < {tol.min_agreement:.0%}")
    exact = measured.get("greedy_exact_match")
    if tol.min_exact is not None and exact is not None and exact < tol.min_exact:
        misses.append(f"greedy exact match {exact:.1%} < {tol.min_exact:.0%}")
    metric = measured.get("metric") or {}
    if metric and not metric["drop"] <= tol.max_metric_drop + 1e-9:
        if metric["name"] == "perplexity":
            misses.append(f"perplexity rise {metric['drop']:+.2%} > {tol.max_metric_drop:.1%}")
        else:
            misses.append(f"{metric['name']} drop {metric['drop']:.4f} > {tol.max_metric_drop:g}")
    tok = measured.get("tokenizer_agreement")
    if tokenizer_checked and tok is not None and tok < tol.min_tokenizer_agreement:
        misses.append(f"tokenizer agreement {tok:.1%} < {tol.min_tokenizer_agreement:.0%}")
    proc = measured.get("processor_agreement")  # an image processor: the same pixels, as a tokenizer the same ids
    if proc is not None and proc < tol.min_tokenizer_agreement:
        misses.append(f"image processor agreement {proc:.1%} < {tol.min_tokenizer_agreement:.0%}")
    return misses


def load_test_split(run, say=print):
    """(the run's test split object, a note on where it came from): re-derived from the run's config."""
    data = run.task.load_data()
    recorded = ((run.info.get("data") or {}).get("splits") or {}).get("test") or {}
    now = (data.summary or {}).get("test") or {}
    if recorded.get("fingerprint") and recorded.get("fingerprint") != now.get("fingerprint"):
        note = (
            f"the test split re-derived from {run.path / 'config.yaml'} differs from the run's (fingerprint "
            f"{now.get('fingerprint')} vs {recorded['fingerprint']}): the data changed since training; the "
            "comparison holds, the metrics are not the run's test metrics"
        )
        say(f"export: warning: {note}")
        return data, note
    return data, f"the run's test split (re-derived from config.yaml, fingerprint {now.get('fingerprint', '?')})"


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def median_ms(fn, repeats: int = 5, budget_s: float = 0.3, most: int = 30) -> float:
    """Median wall time of `fn()` in milliseconds, after one warm-up call: at least `repeats` calls, more (up to
    `most`) while they take under `budget_s` in all (fast calls are noisy on a shared machine)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (len(times) < most and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def parameter_bytes(model) -> int:
    """Bytes of the model's (unique) parameters and buffers as they are in memory."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def summary_lines(report: dict) -> list[str]:
    """What the CLI prints after an export: the parity figures beside their tolerances, and the verdict."""
    p = report.get("parity")
    notes = [f"note: {n}" for n in report.get("notes") or []]
    if not p:
        return [*notes, "parity: skipped"]
    tol = p["tolerances"]
    out = [*notes, f"parity ({report['format']} {report['quantize']} vs the trained run, {p['rows']} test rows):"]

    def limit(value, fmt):
        return f"(<= {fmt.format(value)})" if value is not None else "(reported)"

    if p.get("max_abs_logit_diff") is not None:
        out.append(
            f"  {'max |logit diff|':22}{p['max_abs_logit_diff']:>12.3g}   {limit(tol['max_logit_diff'], '{:g}')}"
        )
    for key, name in (("label_agreement", "label agreement"), ("first_token_agreement", "first-token agreement")):
        if key in p:
            out.append(f"  {name:22}{p[key]:>12.1%}   (>= {tol['min_agreement']:.0%})")
    if "greedy_exact_match" in p:
        out.append(
            f"  {'greedy exact match':22}{p['greedy_exact_match']:>12.1%}   "
            + (f"(>= {tol['min_exact']:.0%})" if tol["min_exact"] is not None else "(reported)")
        )
    if "tokenizer_agreement" in p:
        checked = "" if p.get("tokenizer_checked", True) else ", reported"
        out.append(f"  {'tokenizer agreement':22}{p['tokenizer_agreement']:>12.1%}   (>= 100%{checked})")
    if "processor_agreement" in p:
        out.append(f"  {'processor agreement':22}{p['processor_agreement']:>12.1%}   (>= 100%, the same pixels)")
    for m in [p.get("metric"), *p.get("other_metrics", [])]:
        if not m:
            continue
        if m is not p.get("metric"):
            note = "reported"
        elif m["name"] == "perplexity":
            note = f"rise {m['drop']:+.2%} <= {tol['max_metric_drop']:.1%}"
        else:
            note = f"drop {m['drop']:.4f} <= {tol['max_metric_drop']:g}"
        out.append(f"  {m['name']:22}{m['run']:>12.4f} -> {m['export']:.4f}   ({note})")
    for batch, ms in (p.get("latency_ms") or {}).get("export", {}).items():
        torch_ms = p["latency_ms"]["pytorch"][batch]
        out.append(
            f"  {'latency ' + batch.replace('_', ' '):22}{torch_ms:>9.2f} ms -> {ms:.2f} ms   (PyTorch fp32 -> export)"
        )
    out.append(
        f"  {'size':22}{report['pytorch_mb']:>9.1f} MB -> {report['size_mb']:.1f} MB   (PyTorch in memory -> export)"
    )
    out.append(f"parity: {report['status']}" + (f" ({'; '.join(p['failures'])})" if p["failures"] else ""))
    return out
