"""monitor.json, monitor.md, monitor.html and monitor.png of `tunesmith monitor` (each written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluate.pages import figure, html_page, markdown_page, png
from ..utils import atomic_write_bytes, atomic_write_json, atomic_write_text

TEST_NAMES = {
    "length": "text length",
    "oov": "out-of-vocabulary rate",
    "embedding": "embedding MMD",
    "labels": "predicted labels",
    "confidence": "confidence",
}

CAPTIONS = {
    "monitor.png": "Drift per window (Holm-adjusted p-values, PSI) and the latest window against the reference",
}


def write_monitor(report: dict, ref, latest, out: Path) -> None:
    """`ref`, `latest`: the reference rows and the latest tested window's rows (for the histograms)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "monitor.json", report)
    tested = [w for w in report["windows"] if "skipped" not in w]
    image = plot(report, tested, ref, latest, TEST_NAMES)
    atomic_write_bytes(out / "monitor.png", image)
    title = f"Monitor: {report['model']}"
    intro = (
        f"Traffic {report['traffic']} ({report['window']} windows) against the reference: {report['reference']} "
        f"({report['reference_rows']} rows). Alert when a Holm-adjusted p-value of the five drift tests is below "
        f"{report['alpha']:g}"
        + (f", a PSI reaches {report['psi_alert']:g}" if report["psi_alert"] is not None else "")
        + ", or live macro-F1 lies wholly below the test figure. Out-of-vocabulary words: not in "
        + f"{report['vocabulary']}."
    )
    secs = sections(report, tested, TEST_NAMES)
    atomic_write_text(out / "monitor.md", markdown_page(title, intro, secs, ["monitor.png"], CAPTIONS))
    atomic_write_text(out / "monitor.html", html_page(title, intro, secs, {"monitor.png": image}, CAPTIONS, ("Now",)))


def sections(report: dict, tested: list[dict], names: dict) -> list[dict]:
    head = ["window", "n", *[names[t] + " p (Holm)" for t in names], "MMD²", "C2ST AUC", "labels PSI", "conf. PSI"]
    rows = []
    for w in report["windows"]:
        if "skipped" in w:
            rows.append([w["window"], w["n"], *["-"] * (len(head) - 3), w["skipped"]])
            continue
        e = w["embedding"]
        rows.append(
            [
                w["window"] + (" **ALERT**" if w["alert"] else ""),
                w["n"],
                *[f"{w['p_holm'][t]:.3g}" for t in names],
                f"{e['mmd2']:.4f}",
                f"{e['classifier']['auc']:.2f}",
                f"{w['labels']['psi']:.3f}",
                f"{w['tests']['confidence']['psi']:.3f}",
            ]
        )
    latest = tested[-1]
    feat_rows = [
        [names[k], f"{v['ref_mean']:.3f}", f"{v['cur_mean']:.3f}", f"{v['ks']:.3f}", f"{v['p']:.3g}", f"{v['psi']:.3f}"]
        for k, v in latest["tests"].items()
    ]
    lab = latest["labels"]
    label_rows = [[k, f"{lab['ref'].get(k, 0):.1%}", f"{lab['cur'].get(k, 0):.1%}"] for k in lab["ref"]]
    out = [
        {"title": "Now", "text": [latest["alert_line"]]},
        {"title": "Windows", "table": (head, rows), "image": "monitor.png"},
        {
            "title": f"Latest window: features ({latest['window']})",
            "table": (["feature", "reference mean", "window mean", "KS", "p", "PSI"], feat_rows),
        },
        {
            "title": "Latest window: predicted labels",
            "text": [f"chi-square {lab['chi2']:.2f}, p={lab['p']:.3g}, PSI {lab['psi']:.3f}"],
            "table": (["label", "reference", "window"], label_rows),
        },
    ]
    live = [w for w in tested if (w.get("live") or {}).get("macro_f1") is not None]
    if live:
        out.append(
            {
                "title": "Live quality (feedback labels)",
                "text": [f"test macro-F1 {report['test_macro_f1']:.3f}" if report["test_macro_f1"] else ""],
                "table": (
                    ["window", "labelled", "accuracy [CI]", "macro-F1 [CI]", "below test?"],
                    [
                        [
                            w["window"],
                            w["live"]["n"],
                            _ci(w["live"], "accuracy"),
                            _ci(w["live"], "macro_f1"),
                            "yes" if w["live"]["below_test"] else "no",
                        ]
                        for w in live
                    ],
                ),
            }
        )
    return out


def _ci(live: dict, key: str) -> str:
    ci = live["ci"][key]
    return f"{live[key]:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def plot(report: dict, tested: list[dict], ref, latest_rows, names: dict) -> bytes:
    plt, fig = figure(13, 7.5)
    x = np.arange(len(tested))
    ticks = [w["window"][:16] for w in tested]
    ax = fig.add_subplot(2, 3, 1)
    for t in names:
        ax.plot(x, [max(w["p_holm"][t], 1e-6) for w in tested], marker="o", label=names[t])
    ax.axhline(report["alpha"], color="red", ls="--", lw=1, label=f"alpha {report['alpha']:g}")
    ax.set_yscale("log")
    ax.set_title("Drift tests per window (Holm-adjusted p)")
    ax.legend(fontsize=7)
    _ticks(ax, x, ticks)
    ax = fig.add_subplot(2, 3, 2)
    for t in ("length", "oov", "confidence"):
        ax.plot(x, [w["tests"][t]["psi"] for w in tested], marker="o", label=names[t])
    ax.plot(x, [w["labels"]["psi"] for w in tested], marker="o", label=names["labels"])
    for level in (0.1, 0.25):
        ax.axhline(level, color="grey", ls=":", lw=1)
    ax.set_title("PSI per window (0.1 moderate, 0.25 major)")
    ax.legend(fontsize=7)
    _ticks(ax, x, ticks)
    ax = fig.add_subplot(2, 3, 3)
    live = [(i, w["live"]) for i, w in enumerate(tested) if (w.get("live") or {}).get("macro_f1") is not None]
    if live:
        xs = [i for i, _ in live]
        f1 = np.array([v["macro_f1"] for _, v in live])
        err = np.array(
            [[v["macro_f1"] - v["ci"]["macro_f1"]["low"], v["ci"]["macro_f1"]["high"] - v["macro_f1"]] for _, v in live]
        )
        ax.errorbar(xs, f1, yerr=err.T, fmt="o", capsize=3, label="live macro-F1 (95% CI)")
        if report["test_macro_f1"]:
            ax.axhline(report["test_macro_f1"], color="green", ls="--", label="test macro-F1")
        ax.legend(fontsize=7)
        _ticks(ax, x, ticks)
    else:
        ax.text(0.5, 0.5, "no feedback labels", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Live quality")
    latest = tested[-1]
    ax = fig.add_subplot(2, 3, 4)
    ax.hist(ref["score"], bins=20, range=(0, 1), alpha=0.5, density=True, label="reference")
    ax.hist(latest_rows["score"], bins=20, range=(0, 1), alpha=0.5, density=True, label="latest window")
    ax.set_title(f"Confidence: reference vs latest (PSI {latest['tests']['confidence']['psi']:.2f})")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 5)
    lab = latest["labels"]
    keys = list(lab["ref"])
    xi = np.arange(len(keys))
    ax.bar(xi - 0.2, [lab["ref"][k] for k in keys], 0.4, label="reference")
    ax.bar(xi + 0.2, [lab["cur"].get(k, 0) for k in keys], 0.4, label="latest window")
    ax.set_xticks(xi, keys, rotation=30, fontsize=7)
    ax.set_title(f"Predicted labels (p={lab['p']:.2g})")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 6)
    ax.plot(x, [w["embedding"]["classifier"]["auc"] for w in tested], marker="o", color="purple")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(0.3, 1.0)
    ax.set_title("Embedding drift: classifier two-sample AUC")
    _ticks(ax, x, ticks)
    return png(plt, fig)


def _ticks(ax, x, labels) -> None:
    ax.set_xticks(x, labels, rotation=30, fontsize=7, ha="right")
