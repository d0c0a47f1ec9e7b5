"""report.md of a generative run: loss/perplexity and generation scores before vs after, sample generations."""

from __future__ import annotations

from pathlib import Path

from ...evaluate.markdown import forgetting_section
from ...utils import atomic_write_text, human_bytes

SCORES = [
    ("exact_match", "exact match"),
    ("rougeL", "ROUGE-L"),
    ("bleu", "BLEU"),
    ("chrf", "chrF"),
    ("json_valid", "valid JSON with the keys"),
    ("field_exact_match", "JSON fields exact (mean)"),
    ("faithful_rate", "faithfulness (extracted values found in the input)"),
]


def write_generative_report(
    run_dir: Path, cfg, info: dict, metrics: dict, rows: list[dict], show: int = 8, head: list[tuple] | None = None
) -> None:
    """`head`: the table's first rows, (label, before, after); default: test loss and perplexity."""
    t, p = info["timings"], info["parameters"]
    test, before = metrics["test"], metrics.get("before") or {}
    if head is None:
        head = [
            ("loss (per trained token)", before.get("loss"), test["loss"]),
            ("perplexity", before.get("perplexity"), test["perplexity"]),
        ]
    lines = [
        f"# {info['name']}",
        "",
        f"- **Task**: {cfg.task} | **model**: `{cfg.model.name}` ({info['model']['kind']}) | **strategy**: `{info['strategy']}` | "
        f"**trainable parameters**: {p['trainable']:,} of {p['total']:,} ({100 * p['trainable'] / p['total']:.2f}%)",
        f"- **Precision**: {info['precision']} | **packing**: {info.get('packing', False)} | **best step**: {metrics['best_step']} of {metrics['steps']}"
        f"{' (early stop)' if metrics['stopped_early'] else ''}",
        f"- **Training**: {t['train_seconds']:.0f} s, {t['samples_per_second']:.2f} samples/s, {t['tokens_per_second']:.0f} tokens/s, "
        f"peak memory {t['peak_rss_mb']:.0f} MB | **saved**: {human_bytes(info['saved_bytes'])}",
        "- **Data**: "
        + ", ".join(f"{k} {v['rows']} samples (`{v['fingerprint']}`)" for k, v in info["data"]["splits"].items())
        + f" | format {info['data']['format']} | lint: `lint.txt`",
        "",
        "## Test",
        "",
        "| | before fine-tuning | after |",
        "|---|---|---|",
        *(f"| {label} | {_f(b)} | {_f(a)} |" for label, b, a in head),
    ]
    gb, ga = before.get("generation") or {}, test.get("generation") or {}
    for key, label in SCORES:
        if key in ga:
            lines.append(f"| generation: {label} | {_f(gb.get(key))} | {_f(ga[key])} |")
    for key in sorted(k for k in ga if k.startswith("field_") and k != "field_exact_match"):
        lines.append(f"| JSON field `{key[6:]}` exact | {_f(gb.get(key))} | {_f(ga[key])} |")
    if ga:
        lines.append(
            f"\nGeneration scores over {ga['n']} held-out test prompts ({'sampled' if cfg.generate.do_sample else 'greedy'} decoding, "
            f"at most {cfg.generate.max_new_tokens} new tokens)."
        )
    lines += mix_section(metrics.get("mix"))
    lines += ["", *forgetting_section(metrics)]
    if rows:
        lines += ["", "## Sample generations", "", "| prompt | reference | before | after |", "|---|---|---|---|"]
        for r in rows[:show]:
            lines.append("| " + " | ".join(_cell(r.get(k)) for k in ("prompt", "reference", "before", "after")) + " |")
        lines.append(f"\nAll {len(rows)} in `generations.jsonl`.")
    lines += [
        "",
        "![training curves](training_curves.png)",
        "",
        "## Use it",
        "",
        "```bash",
        f'tunesmith generate {run_dir} --prompt "..."',
        f"tunesmith chat {run_dir}",
        "```",
        "",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))


def mix_section(mix: dict | None) -> list[str]:
    """data.mix: per source, its training rows, configured and realised share of the trained samples, test loss."""
    if not mix:
        return []
    lines = [
        "",
        "## Data mix",
        "",
        "| source | train rows | configured share | trained share (samples) | test loss before | after |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in mix.items():
        lines.append(
            f"| {_cell(name)} | {m.get('rows', '-')} | {_f(m.get('configured'))} | {_f(m.get('share'))} "
            f"({m.get('examples', '-')}) | {_f(m.get('before_test_loss'))} | {_f(m.get('test_loss'))} |"
        )
    lines.append(
        "\nShares of the samples the run trained on: every step (with gradient accumulation: every micro-batch) "
        "draws from one source, by weight. Test loss per trained token on the source's own test rows."
    )
    return lines


def mix_lines(mix: dict | None) -> list[str]:
    """The printed summary's rows for a data mix (the same figures as report.md's table)."""
    if not mix:
        return []
    lines = ["", f"{'mix source':24}{'rows':>7}{'config':>8}{'trained':>9}{'test loss before':>18}{'after':>8}"]
    for name, m in mix.items():
        before, after = _f(m.get("before_test_loss")), _f(m.get("test_loss"))
        lines.append(
            f"{name[:23]:24}{m.get('rows', '-'):>7}{_pct(m.get('configured')):>8}{_pct(m.get('share')):>9}"
            f"{before:>18}{after:>8}"
        )
    return lines


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _cell(text, limit: int = 300) -> str:
    if text is None:
        return "-"
    text = str(text)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"
