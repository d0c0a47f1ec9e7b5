"""Render a comparison (evaluate/compare.py) as Markdown and as one self-contained HTML page with plots."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..utils import atomic_write_json, atomic_write_text, human_bytes
from .pages import figure, html_page, markdown_page, png
from .stats import p_text

PLOTS = {
    "metrics.png": "Test metrics with 95% confidence intervals",
    "per_class.png": "Per-class F1 delta vs the reference",
    "loss_curves.png": "Loss curves",
}


def write_comparison(result: dict, out: str | Path) -> tuple[Path, Path]:
    """compare.json, compare.md (+ PNG plots beside it) and compare.html (plots embedded) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = {
        name: fn(result)
        for name, fn in (
            ("metrics.png", plot_metrics),
            ("per_class.png", plot_per_class),
            ("loss_curves.png", plot_losses),
        )
    }
    pngs = {k: v for k, v in pngs.items() if v}
    for name, data in pngs.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / name)
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", render_markdown(result, list(pngs)))
    atomic_write_text(out / "compare.html", render_html(result, pngs))
    return out / "compare.md", out / "compare.html"


def headlines(result: dict) -> list[str]:
    lines = []
    for c in result["comparisons"]:
        line = f"{c['b']} vs {c['a']}: {c['verdict']}"
        if "mcnemar" in c:
            mc = c["mcnemar"]
            line += f"; McNemar: fixed {mc['fixed']}, broke {mc['broke']}, {p_text(mc['p'])}"
        lines.append(line)
    return lines


def sections(result: dict) -> list[dict]:
    """Title, text lines and an optional table (headers, rows) per section: one structure, two renderings."""
    runs, out = result["runs"], []
    out.append(
        {
            "title": "Verdict",
            "text": headlines(result)
            + (
                []
                if result["paired"]
                else ["The runs were tested on different data: figures are unpaired, no significance tests."]
            ),
        }
    )
    head = (
        ["run", "strategy", "model", "n test"]
        + [f"{m} ({100 * result['level']:.0f}% CI)" for m in ("macro_f1", "accuracy")]
        + ["ECE", "latency p50 ms", "train s", "saved"]
    )
    rows = [
        [
            r["name"],
            r["strategy"],
            r["model"],
            r["n"],
            *(_with_ci(r, m) for m in ("macro_f1", "accuracy")),
            _f(r["ece"]),
            _f(r["latency_ms_p50"], 1),
            _f(r["train_seconds"], 0),
            human_bytes(r["saved_bytes"]) if r["saved_bytes"] else "-",
        ]
        for r in runs
    ]
    out.append({"title": "Runs", "table": (head, rows), "image": "metrics.png"})
    for c in result["comparisons"]:
        paired = "low" in next(iter(c["metrics"].values()))
        head = ["metric", c["a"], c["b"], "delta (points)"] + (["95% CI", "p (permutation)"] if paired else [])
        rows = [
            [m, _f(d["a"]), _f(d["b"]), f"{100 * d['delta']:+.2f}"]
            + ([f"{100 * d['low']:+.2f} to {100 * d['high']:+.2f}", _p(d.get("p_holm", d["p"]))] if paired else [])
            for m, d in c["metrics"].items()
        ]
        out.append({"title": f"{c['b']} vs {c['a']}", "text": [c["verdict"]], "table": (head, rows)})
        if c.get("forgetting"):
            frows = [
                [
                    name,
                    d["measure"],
                    _f(d["a"]),
                    _f(d["b"]),
                    f"{100 * d['delta']:+.2f}",
                    f"{100 * d['low']:+.2f} to {100 * d['high']:+.2f}",
                    _p(d["p"]) if "p" in d else "-",
                ]
                for name, d in c["forgetting"].items()
            ]
            head = [
                "reference set",
                "measure",
                c["a"],
                c["b"],
                "delta (points)",
                f"{100 * result['level']:.0f}% CI",
                "p",
            ]
            out.append(
                {
                    "title": "Forgetting (reference sets)",
                    "text": [
                        "retention: the earlier task's macro-F1 with its head retained; cka: representation similarity to the starting model"
                    ],
                    "table": (head, frows),
                }
            )
        pc = [
            [k, _f(v["a"]), _f(v["b"]), f"{100 * v['delta']:+.2f}", int(v["support"])]
            for k, v in c["per_class"].items()
        ]
        out.append(
            {
                "title": "Per-class F1",
                "table": (["class", c["a"], c["b"], "delta (points)", "support"], pc),
                "image": "per_class.png",
            }
        )
        for name, sl in c["slices"].items():
            rows = [
                [g, v["n"], _f(v["a"]), _f(v["b"]), f"{100 * v['delta']:+.2f}"]
                for g, v in sorted(sl.items(), key=lambda kv: kv[1]["delta"])[:15]
            ]
            out.append(
                {
                    "title": f"Per-slice macro-F1: {name}",
                    "table": (["slice", "n", c["a"], c["b"], "delta (points)"], rows),
                }
            )
        for key, what in (
            ("fixed", f"Fixed by {c['b']} (wrong before, right now)"),
            ("broke", f"Broken by {c['b']} (right before, wrong now)"),
        ):
            if c.get(key):
                rows = [[_short(e["text"]), e["label"], e["a"], e["b"]] for e in c[key]]
                n = c["mcnemar"][key]
                out.append({"title": f"{what}: {n} items", "table": (["text", "label", c["a"], c["b"]], rows)})
    diff = result["config_diff"]
    out.append(
        {
            "title": "Config diff",
            "text": [] if diff else ["The configs are identical (apart from name/output_dir)."],
            "table": (["key", *[r["name"] for r in runs]], [[d["key"], *map(_v, d["values"])] for d in diff])
            if diff
            else None,
        }
    )
    rows = [
        [
            d["split"],
            "same" if d["same"] else "DIFFERENT",
            *(f"{n} rows `{fp}`" for n, fp in zip(d["rows"], d["fingerprint"])),
        ]
        for d in result["data_diff"]
    ]
    out.append(
        {"title": "Data diff", "table": (["split", "", *[r["name"] for r in runs]], rows), "image": "loss_curves.png"}
    )
    return out


def render_markdown(result: dict, images: list[str]) -> str:
    title, intro = _heading(result)
    return markdown_page(title, intro.replace("<code>", "`").replace("</code>", "`"), sections(result), images, PLOTS)


def render_html(result: dict, pngs: dict[str, bytes]) -> str:
    title, intro = _heading(result)
    return html_page(title, intro, sections(result), pngs, PLOTS, emphasis=("Verdict",))


def _heading(result: dict) -> tuple[str, str]:
    title = f"Comparison: {' vs '.join(r['name'] for r in result['runs'])}"
    path = html.escape(result["runs"][0]["path"])
    return title, f"Reference: <code>{path}</code>; deltas are B - reference on the same test items, in points (x100)."


def plot_metrics(result: dict) -> bytes | None:
    plt, fig = figure(7, 3.6)
    ax = fig.subplots()
    metrics, runs = ["macro_f1", "accuracy", "weighted_f1"], result["runs"]
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        vals = [r["metrics"][m] for m in metrics]
        ci = r.get("ci") or {}
        err = [
            [v - ci[m]["low"] if m in ci else 0 for m, v in zip(metrics, vals)],
            [ci[m]["high"] - v if m in ci else 0 for m, v in zip(metrics, vals)],
        ]
        ax.bar([j + i * width for j in range(len(metrics))], vals, width, yerr=err, capsize=4, label=r["name"])
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(metrics))], metrics)
    low = min(r["metrics"][m] for r in runs for m in metrics)
    ax.set_ylim(max(0, low - 0.1), 1), ax.set_ylabel("test"), ax.legend(fontsize=8), ax.grid(axis="y", alpha=0.3)
    return png(plt, fig)


def plot_per_class(result: dict) -> bytes | None:
    if not result["comparisons"] or not result["comparisons"][0]["per_class"]:
        return None
    plt, fig = figure(7, 3.4)
    ax = fig.subplots()
    classes = list(result["comparisons"][0]["per_class"])
    width = 0.8 / len(result["comparisons"])
    for i, c in enumerate(result["comparisons"]):
        ax.bar(
            [j + i * width for j in range(len(classes))],
            [100 * c["per_class"][k]["delta"] for k in classes],
            width,
            label=f"{c['b']} - {c['a']}",
        )
    ax.axhline(0, color="k", lw=1)
    ax.set_xticks(
        [j + width * (len(result["comparisons"]) - 1) / 2 for j in range(len(classes))],
        classes,
        rotation=30,
        ha="right",
    )
    ax.set_ylabel("F1 delta (points)"), ax.legend(fontsize=8), ax.grid(axis="y", alpha=0.3)
    return png(plt, fig)


def plot_losses(result: dict) -> bytes | None:
    if not any(r["history"] for r in result["runs"]):
        return None
    plt, fig = figure(8, 3.6)
    ax = fig.subplots()
    for i, r in enumerate(result["runs"]):
        train = [(h["step"], h["train_loss"]) for h in r["history"] if "train_loss" in h]
        val = [(h["step"], h["val_loss"]) for h in r["history"] if "val_loss" in h]
        if train:
            ax.plot(*zip(*train), color=f"C{i}", lw=0.8, alpha=0.6, label=f"{r['name']} train")
        if val:
            ax.plot(*zip(*val), "o-", color=f"C{i}", label=f"{r['name']} validation")
    ax.set_xlabel("optimizer step"), ax.set_ylabel("cross-entropy"), ax.legend(fontsize=7), ax.grid(alpha=0.3)
    return png(plt, fig)


def _with_ci(r: dict, m: str) -> str:
    v, ci = r["metrics"].get(m), (r.get("ci") or {}).get(m)
    if v is None:
        return "-"
    return f"{v:.4f} ({ci['low']:.4f}-{ci['high']:.4f})" if ci else f"{v:.4f}"


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _v(v) -> str:
    return "(unset)" if v is None else v if isinstance(v, str) else json.dumps(v, default=str)


def _short(text: str, n: int = 160) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."
