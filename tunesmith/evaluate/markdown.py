"""Markdown sections for the extended evaluation (report.md and MODEL_CARD.md share them)."""

from __future__ import annotations

from ..utils import atomic_write_text, human_bytes

CI_SHOWN = ["macro_f1", "accuracy", "weighted_f1", "macro_precision", "macro_recall", "loss"]


def ci_table(metrics: dict) -> list[str]:
    test, ci = metrics["test"], metrics.get("test_ci") or {}
    if "error" in ci or not ci:
        return []
    lines = [f"| test metric | value | {ci['level']:.0%} bootstrap CI |", "|---|---|---|"]
    for m in CI_SHOWN:
        if m in ci and m in test:
            lines.append(f"| {m} | {test[m]:.4f} | {ci[m]['low']:.4f} - {ci[m]['high']:.4f} |")
    return lines + ["", f"({ci['resamples']} bootstrap resamples of the {test['n']} test items.)", ""]


def sets_section(metrics: dict) -> list[str]:
    sets = metrics.get("sets") or {}
    if not sets:
        return []
    lines = ["## Other evaluation sets", "", "| set | rows | macro-F1 (95% CI) | accuracy |", "|---|---|---|---|"]
    t = metrics["test"]
    lines.append(
        f"| test (in-domain) | {t['n']} | {_with_ci(t, metrics.get('test_ci'), 'macro_f1')} | {t['accuracy']:.4f} |"
    )
    for name, m in sets.items():
        if "error" in m:
            lines.append(f"| {name} | - | error: {m['error']} | - |")
        else:
            lines.append(
                f"| {name} (`{m['data']}`) | {m['n']} | {_with_ci(m, m.get('ci'), 'macro_f1')} | {m['accuracy']:.4f} |"
            )
    return lines + [""]


def slices_section(metrics: dict, limit: int = 12) -> list[str]:
    slices = metrics.get("slices") or {}
    if not slices:
        return []
    if "error" in slices:
        return ["## Slices", "", f"Not computed: {slices['error']}", ""]
    lines = ["## Slices (test)", ""]
    for name, s in slices.items():
        if name == "fairness":
            continue
        worst = (
            f"worst slice **{s['worst']}**, {100 * s['gap']:.1f} macro-F1 points below the whole test set"
            if s["worst"]
            else f"no slice has {s['min_size']}+ items"
        )
        lines += [f"**{name}**: {worst}.", "", "| slice | n | macro-F1 | accuracy |", "|---|---|---|---|"]
        rows = (
            sorted(s["slices"].items(), key=lambda kv: kv[1]["macro_f1"])[:limit]
            if len(s["slices"]) > limit
            else s["slices"].items()
        )
        lines += [f"| {g} | {r['n']} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} |" for g, r in rows]
        lines += [""] + (
            [f"({len(s['slices']) - limit} more slices in metrics.json)", ""] if len(s["slices"]) > limit else []
        )
    if "fairness" in slices:
        f = slices["fairness"]
        lines += [
            f"**Fairness across `{f['column']}`** ({', '.join(f'{g}: {n}' for g, n in f['groups'].items())}): "
            f"demographic-parity difference {f['demographic_parity_difference']:.3f}, equalized-odds difference "
            f"{f['equalized_odds_difference']:.3f} (largest over the classes, one-vs-rest; 0 = parity).",
            "",
        ]
    return lines + ["![slices](slices.png)", ""]


def calibration_section(metrics: dict) -> list[str]:
    c = metrics.get("calibration")
    if not c or "error" in c:
        return []
    line = f"Expected calibration error (10 bins) **{c['ece']:.4f}**, test NLL {c['nll']:.4f}."
    if "temperature" in c:
        a = c["after_scaling"]
        line += (
            f" Temperature scaling fitted on validation: T = {c['temperature']:.3f}, ECE {a['ece']:.4f}, NLL {a['nll']:.4f} "
            f"(labels unchanged; T > 1 means the model was over-confident)."
        )
    return ["## Calibration", "", line, "", "![reliability diagram](reliability.png)", ""]


def robustness_section(metrics: dict) -> list[str]:
    r = metrics.get("robustness")
    if not r or "error" in r:
        return []
    lines = [
        "## Robustness",
        "",
        f"The same {r['n']} test items (stratified sample), clean macro-F1 {r['clean']['macro_f1']:.4f}:",
        "",
        "| perturbation | macro-F1 | drop (points) | accuracy drop (points) | predictions flipped | texts changed |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in r["perturbations"].items():
        lines.append(
            f"| {name} | {p['macro_f1']:.4f} | {100 * p['macro_f1_drop']:+.1f} | {100 * p['accuracy_drop']:+.1f} | "
            f"{p['flipped']:.1%} | {p['texts_changed']:.0%} |"
        )
    return lines + ["", "![robustness](robustness.png)", ""]


def efficiency_section(metrics: dict) -> list[str]:
    e = metrics.get("efficiency")
    if not e or "error" in e:
        return []
    size = f", model folder {human_bytes(e['model_size_bytes'])}" if "model_size_bytes" in e else ""
    gpu = f", peak GPU memory {e['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in e else ""
    return [
        "## Inference efficiency",
        "",
        f"On {e['device']} with {e['threads']} thread(s), tokenization included: batch 1 latency p50 "
        f"**{e['batch_1_latency_ms_p50']:.1f} ms**, p95 {e['batch_1_latency_ms_p95']:.1f} ms ({e['batch_1_per_second']:.0f} texts/s); "
        f"batch 32: **{e['batch_32_per_second']:.0f} texts/s**{size}; peak process memory {e['peak_rss_mb']:.0f} MB "
        f"(includes training){gpu}.",
        "",
    ]


def forgetting_section(metrics: dict) -> list[str]:
    """What the original model knew, before -> after (eval.reference), with the remedies the run used."""
    f = metrics.get("forgetting") or {}
    sets = {k: v for k, v in f.items() if isinstance(v, dict)}
    if not sets:
        return []
    lines = ["## Forgetting (reference sets)", "", f"**{f.get('summary', '')}**", ""]
    lines += ["| set | measure | rows | before | after | change |", "|---|---|---|---|---|---|"]
    for name, m in sets.items():
        if m["kind"] == "retention":
            ci = (
                f" ({m['level']:.0%} CI {100 * m['ci'][0]:+.1f} to {100 * m['ci'][1]:+.1f}, p={m['p']:.3g})"
                if "ci" in m
                else ""
            )
            lines.append(
                f"| {name} | earlier task's macro-F1, its head retained | {m['rows']} | {m['before']:.4f} | "
                f"{m['after']:.4f} | {100 * m['change']:+.1f} points{ci} |"
            )
        elif m["kind"] == "drift":
            lines.append(
                f"| {name} | representation: linear CKA / cosine-similarity correlation | {m['rows']} | 1 / 1 | "
                f"{m['cka']:.4f} / {m['cosine_correlation']:.4f} | {m['cka'] - 1:+.4f} / {m['cosine_correlation'] - 1:+.4f} |"
            )
        elif m["kind"] == "perplexity":
            lines.append(
                f"| {name} | perplexity per token | {m['rows']} | {m['before']:.3f} | {m['after']:.3f} | {m['change_pct']:+.1f}% |"
            )
            if m.get("contains_after") is not None:
                g = m["generation"]["after"]["n"]
                lines.append(
                    f"| {name} | answers kept (answer in the generation, {g} prompts) | {g} | "
                    f"{m['contains_before']:.3f} | {m['contains_after']:.3f} | {m['contains_after'] - m['contains_before']:+.3f} |"
                )
    return lines + ["", "Before = the model this run started from; after = the fine-tuned one (best checkpoint).", ""]


def cost_line(metrics: dict) -> list[str]:
    s = metrics.get("extended_seconds")
    if not s:
        return []
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in s.items() if k != "total")
    return [f"_Extended evaluation took {s['total']:.1f}s ({parts})._", ""]


def extended_markdown(metrics: dict) -> list[str]:
    """All sections, in reading order."""
    ci = ci_table(metrics)
    return (
        [*(["## Test metrics with confidence intervals", ""] + ci if ci else [])]
        + forgetting_section(metrics)
        + sets_section(metrics)
        + slices_section(metrics)
        + calibration_section(metrics)
        + robustness_section(metrics)
        + efficiency_section(metrics)
        + cost_line(metrics)
    )


def _with_ci(m: dict, ci: dict | None, key: str) -> str:
    if ci and key in ci:
        return f"{m[key]:.4f} ({ci[key]['low']:.4f}-{ci[key]['high']:.4f})"
    return f"{m[key]:.4f}"


def add_to_report(run_dir, metrics: dict) -> None:
    """Insert the extended sections into report.md, before its "Load it" section."""
    from pathlib import Path

    path = Path(run_dir) / "report.md"
    extra = extended_markdown(metrics)
    if not extra or not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    head, sep, tail = text.partition("## Load it")
    atomic_write_text(path, head + "\n".join(extra) + "\n" + sep + tail)
