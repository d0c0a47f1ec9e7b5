"""What every classification task reports beyond its headline: the per-slice plot and the flat figures for MLflow."""

from __future__ import annotations

from pathlib import Path

from .slices import plot_slices


def plot_run_slices(metrics: dict, path: Path) -> bool:
    slices = {n: s for n, s in (metrics.get("slices") or {}).items() if n != "fairness" and "slices" in s}
    if not slices:
        return False
    plot_slices(slices, metrics["test"]["macro_f1"], path, "test macro-F1 per slice (worst in red)")
    return True


def tracked_figures(metrics: dict) -> dict[str, float]:
    """The scalar figures of the extended evaluation, flat, for MLflow."""
    out: dict[str, float] = {}
    for m, ci in (metrics.get("test_ci") or {}).items():
        if isinstance(ci, dict) and "low" in ci:
            out[f"test_{m}_ci_low"], out[f"test_{m}_ci_high"] = ci["low"], ci["high"]
    for name, m in (metrics.get("sets") or {}).items():
        if "macro_f1" in m:
            out[f"set_{name}_macro_f1"], out[f"set_{name}_accuracy"] = m["macro_f1"], m["accuracy"]
    for name, s in (metrics.get("slices") or {}).items():
        if isinstance(s, dict) and s.get("gap") is not None:
            out[f"worst_slice_gap_{name.replace(' ', '_')}"] = s["gap"]
    cal = metrics.get("calibration") or {}
    if "ece" in cal:
        out["test_ece"] = cal["ece"]
        if "after_scaling" in cal:
            out["test_ece_after_temperature"], out["temperature"] = cal["after_scaling"]["ece"], cal["temperature"]
    for name, p in ((metrics.get("robustness") or {}).get("perturbations") or {}).items():
        out[f"robustness_{name}_macro_f1_drop"] = p["macro_f1_drop"]
    eff = metrics.get("efficiency") or {}
    for key in ("batch_1_latency_ms_p50", "batch_1_latency_ms_p95", "batch_32_per_second"):
        if key in eff:
            out[key] = eff[key]
    if "extended_seconds" in metrics:
        out["extended_evaluation_seconds"] = metrics["extended_seconds"]["total"]
    return out
