"""`tunesmith promote NAME --if-better RUN`: the candidate replaces production only when it is really better.

Both models predict the same rows of two test sets: the NEW one (recent data: the candidate's test split) and the
OLD one (the fixed benchmark: the test set production was tested on). On each, the paired comparison of `compare`:
the delta of the metric (candidate - production) with its paired-bootstrap interval, a paired permutation p-value
and McNemar. The candidate is promoted only if

- on the new data it is significantly better: delta > 0, p < alpha and the interval above 0; and
- on the old data it is not worse by more than `margin` (non-inferiority): the interval's lower end above -margin.

Otherwise the command refuses, printing the figures (exit code 3). Promoting registers the candidate as the next
version of NAME with its lineage (parent version, the data added, the comparison) in the version's tags and the
model card, then points the alias at it. Either way gate.json / gate.md land in the candidate's run folder.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ConfigError, RegistryError, RunError
from ..evaluate.predictions import read_predictions
from ..evaluate.stats import mcnemar, p_text, paired_delta
from ..runs.registry import describe_model_uri, promote, register, resolve
from ..runs.run import Run
from ..utils import atomic_write_json, atomic_write_text, read_json


def gate(
    name: str,
    candidate: str | Path,
    alias: str = "production",
    metric: str = "macro_f1",
    alpha: float = 0.05,
    margin: float = 0.01,
    new_test: str | Path | None = None,
    old_test: str | Path | None = None,
    uri: str | None = None,
    resamples: int = 2000,
    dry_run: bool = False,
    say=print,
) -> dict:
    if not 0 < alpha < 1 or margin < 0:
        raise ConfigError(f"promote: --alpha must be in (0, 1) and --margin 0 or more (got {alpha}, {margin})")
    if metric not in ("macro_f1", "accuracy", "weighted_f1"):
        raise ConfigError(f"promote: --metric {metric}: give macro_f1, accuracy or weighted_f1")
    current_uri = f"models:/{name}@{alias}"
    try:
        current = Run(resolve(current_uri, uri))
    except RegistryError:
        raise RegistryError(
            f"promote: {name} has no '{alias}' version to beat; register and promote the first one: "
            f"tunesmith register RUN --name {name} && tunesmith promote {name} 1 --to {alias}"
        ) from None
    parent = describe_model_uri(current_uri, uri)
    cand = Run(candidate)
    if cand.status != "complete":
        raise RunError(f"{candidate}: the run is {cand.status}; gate a finished run")
    if cand.label_names != current.label_names:
        raise RunError(
            f"promote: the candidate's labels {cand.label_names} differ from {current_uri}'s {current.label_names}"
        )
    retrained = read_json(cand.path / "retrain.json") if (cand.path / "retrain.json").is_file() else {}
    sets = test_sets(cand, current, retrained, new_test, old_test)
    k = len(cand.label_names)
    results = {}
    for role, (source, texts, y) in sets.items():
        a = current.predictor.predict_probs(texts).argmax(1)
        b = cand.predictor.predict_probs(texts).argmax(1)
        d = paired_delta(y, a, b, k, metric, resamples=resamples, seed=0)
        results[role] = {"source": source, "n": len(y), "delta": d, "mcnemar": mcnemar(y, a, b)}
    decision = decide(results, alpha, margin)
    v_cur = parent["version"]
    summary = lineage_line(results, v_cur, retrained, metric)
    out = {
        "name": name,
        "alias": alias,
        "current": {"version": v_cur, "run": str(current.path)},
        "candidate": str(cand.path),
        "metric": metric,
        "alpha": alpha,
        "margin": margin,
        "sets": results,
        **decision,
        "summary": summary,
    }
    if decision["promote"] and not dry_run:
        tags = {
            "parent_version": str(v_cur),
            "parent_run": str(current.path),
            "gate": summary,
            "data_added": data_added(retrained),
        }
        add_lineage_to_card(cand.path, name, v_cur, summary, retrained)
        registered = register(cand.path, name, uri, tags=tags)
        promote(name, registered["version"], alias, uri)
        out["promoted_version"] = registered["version"]
        summary = summary.replace("vNEW", f"v{registered['version']}")
        out["summary"] = summary
    atomic_write_json(cand.path / "gate.json", out)
    atomic_write_text(cand.path / "gate.md", gate_markdown(out))
    for line in gate_lines(out):
        say(line)
    return out


def test_sets(cand: Run, current: Run, retrained: dict, new_test, old_test) -> dict:
    """{"new": (source, texts, label ids), "old": ...}: explicit files, else the retrain's sets, else the candidate's
    test split (new) and production's test split (old)."""
    sets = retrained.get("sets") or {}
    if retrained and not sets.get("new_test") and not new_test:
        raise RunError(
            f"promote: {cand.path} was retrained without new data, so it has no new test set; give labelled recent "
            f"data with --new-test FILE"
        )
    chosen = {
        "new": new_test or sets.get("new_test") or cand.path / "test_predictions.csv",
        "old": old_test or sets.get("old_test") or current.path / "test_predictions.csv",
    }
    index = {n: i for i, n in enumerate(cand.label_names)}
    out = {}
    for role, path in chosen.items():
        path = Path(path)
        if not path.is_file():
            raise RunError(f"promote: the {role} test set {path} is missing; give it with --{role}-test FILE")
        df = read_predictions(path) if path.name == "test_predictions.csv" else pd.read_csv(path, keep_default_na=False)
        column = "label" if "label" in df.columns else cand.config.data.label_column
        if "text" not in df.columns or column not in df.columns:
            raise RunError(f"promote: {path} needs text and label columns (it has {', '.join(df.columns)})")
        unknown = sorted(set(df[column].astype(str)) - set(index))
        if unknown:
            raise RunError(f"promote: {path} has labels {unknown} the models do not know")
        out[role] = (str(path), df["text"].astype(str).tolist(), df[column].astype(str).map(index).to_numpy())
    return out


def decide(results: dict, alpha: float, margin: float) -> dict:
    new, old = results["new"]["delta"], results["old"]["delta"]
    better = new["delta"] > 0 and new["low"] > 0 and new["p"] < alpha
    kept = old["low"] > -margin
    reasons = []
    if not better:
        worse = new["high"] < 0 and new["p"] < alpha
        reasons.append(
            "it is not significantly better on the new data"
            if new["delta"] > 0
            else f"it is {'significantly worse' if worse else 'not better'} on the new data"
        )
    if not kept:
        width = (old["high"] - old["low"]) / 2
        hint = (
            f" (the interval is +-{100 * width:.1f} points wide on {results['old']['n']} rows: a margin below that "
            f"cannot be shown at this size; test on more rows or set --margin)"
            if old["delta"] > -margin and width > margin
            else ""
        )
        reasons.append(f"it may be worse than production on the old test set by more than the margin {margin:g}{hint}")
    return {"promote": better and kept, "better_on_new": better, "non_inferior_on_old": kept, "reasons": reasons}


def _fmt(d: dict) -> str:
    return f"{100 * d['delta']:+.1f} (95% CI {100 * d['low']:+.1f}..{100 * d['high']:+.1f}, {p_text(d['p'])})"


def lineage_line(results: dict, v_cur: int, retrained: dict, metric: str) -> str:
    """ "vNEW vs v2: +2.3 macro-F1 on recent data (95% CI +0.9..+3.6), -0.2 on the original test set (n.s.); ..."."""
    label = metric.replace("_f1", "-F1").replace("_", "-")
    new, old = results["new"]["delta"], results["old"]["delta"]
    sig = "" if old["p"] < 0.05 else ", n.s."
    line = (
        f"vNEW vs v{v_cur}: {100 * new['delta']:+.1f} {label} on recent data (95% CI {100 * new['low']:+.1f}.."
        f"{100 * new['high']:+.1f}, {p_text(new['p'])}), {100 * old['delta']:+.1f} on the original test set "
        f"(95% CI {100 * old['low']:+.1f}..{100 * old['high']:+.1f}{sig})"
    )
    added = data_added(retrained)
    return line + (f"; {added}" if added else "")


def data_added(retrained: dict) -> str:
    """ "added 200 corrected items (200 errors of the model) and 1679 new rows; replayed 1879 of 2099 old rows"."""
    parts = []
    fb, new, rep = retrained.get("feedback"), retrained.get("new"), retrained.get("replay")
    if fb:
        parts.append(f"{fb['rows']} corrected items ({fb.get('errors') or 0} errors of the model)")
    if new:
        parts.append(f"{new['train']['rows']} new rows")
    text = f"added {' and '.join(parts)}" if parts else ""
    if rep:
        text += f"; replayed {rep['rows']} of the {rep['of']} old training rows"
    dropped = sum((retrained.get("dropped") or {}).values())
    return text + (f" ({dropped} dropped as duplicates)" if dropped else "")


def add_lineage_to_card(path: Path, name: str, v_cur: int, summary: str, retrained: dict) -> None:
    card = path / "MODEL_CARD.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {path.name}\n"
    text = text.split("\n## Lineage\n")[0].rstrip() + "\n\n## Lineage\n\n"
    parent = retrained.get("parent") or {}
    text += (
        f"- Parent: {name} version {v_cur} ({parent.get('run', '?')}); started from {retrained.get('start', '?')}.\n"
    )
    text += f"- Promoted because: {summary.replace('vNEW', 'this version')}.\n"
    for key in ("new", "feedback", "replay"):
        entry = retrained.get(key)
        if entry:
            fp = entry.get("fingerprint") or (entry.get("train") or {}).get("fingerprint")
            rows = entry.get("rows") or (entry.get("train") or {}).get("rows")
            text += f"- Data: {key}, {rows} rows (fingerprint {fp}).\n"
    atomic_write_text(card, text)


def gate_lines(out: dict) -> list[str]:
    label = out["metric"].replace("_f1", "-F1").replace("_", "-")
    lines = [
        f"gate: candidate {Path(out['candidate']).name} vs {out['name']}@{out['alias']} (v{out['current']['version']})"
    ]
    for role, title in (("new", "new data"), ("old", "old test set")):
        r = out["sets"][role]
        d, m = r["delta"], r["mcnemar"]
        lines.append(
            f"  {title:13} n={r['n']:<5} {label} {d['a']:.3f} -> {d['b']:.3f}  delta {_fmt(d)}  "
            f"McNemar fixed {m['fixed']} broke {m['broke']} ({p_text(m['p'])})"
        )
    if out["promote"]:
        done = (
            f"promoted: {out['name']}@{out['alias']} -> version {out['promoted_version']}"
            if "promoted_version" in out
            else "would promote (dry run)"
        )
        lines.append(f"{done}. {out['summary']}")
    else:
        lines.append(f"refused: {'; '.join(out['reasons'])}; production stays v{out['current']['version']}")
    return lines


def gate_markdown(out: dict) -> str:
    head = "| set | n | production | candidate | delta [95% CI] | p | McNemar fixed / broke (p) |\n|---|---|---|---|---|---|---|\n"
    rows = ""
    for role in ("new", "old"):
        r = out["sets"][role]
        d, m = r["delta"], r["mcnemar"]
        rows += (
            f"| {role} ({Path(r['source']).name}) | {r['n']} | {d['a']:.4f} | {d['b']:.4f} | {100 * d['delta']:+.2f} "
            f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | {p_text(d['p'])} | {m['fixed']} / {m['broke']} ({p_text(m['p'])}) |\n"
        )
    verdict = "\n".join(gate_lines(out)[-1:])
    return (
        f"# Gate: {Path(out['candidate']).name} vs {out['name']}@{out['alias']} (v{out['current']['version']})\n\n"
        f"Rule: promote only if significantly better on the new data (alpha {out['alpha']:g}) and not worse than "
        f"{out['margin']:g} on the old test set (lower end of the 95% CI of the delta). Metric: {out['metric']}, "
        f"deltas in points.\n\n{head}{rows}\n**{verdict}**\n"
    )
