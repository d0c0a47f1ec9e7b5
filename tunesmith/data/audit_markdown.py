"""The readable side of an AuditReport: its warnings and its Markdown view (what a person reads before training)."""

from __future__ import annotations


def render(r) -> str:  # r: an AuditReport (audit.py imports this module, not the other way round)
    n = r.config.max_examples
    out = ["# Data audit", ""]
    out += [f"- **{name}**: {r.sources[name]} ({s.rows} rows)" for name, s in r.schema.items()]
    out += [f"- text column `{r.text_column}`, label column `{r.label_column}`; row numbers count data rows from 1", ""]

    out += ["## Verdict", ""]
    if r.blocking:
        out += [f"- **BLOCKING** {msg}" for msg in r.blocking]
    else:
        out.append("- nothing blocks training")
    out += [f"- {w}" for w in r.warnings] + [""]

    out += [
        "## Schema",
        "",
        "| set | rows | missing text | empty text | non-text | missing label | encoding | labels once |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in r.schema.items():
        out.append(
            f"| {name} | {s.rows} | {_rows(s.missing_text)} | {_rows(s.empty_text)} | {_rows(s.non_text)} | "
            f"{_rows(s.missing_label)} | {_rows(s.encoding)} | {len(s.singleton_labels)} |"
        )
    out.append("")

    out += [
        "## Duplicates",
        "",
        f"Near duplicates: Jaccard >= {r.config.near_threshold} on {r.config.shingle_size}-{r.config.shingle_unit} shingles"
        + (" or on word sequences (4+ words)" if r.config.near_words else "")
        + " after dropping case, punctuation, symbols and accents"
        + ("" if r.config.near_duplicates else " (disabled)")
        + ".",
        "",
    ]
    out += [
        "| set | exact groups | redundant rows | conflicting exact | near clusters | near rows | conflicting near |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in r.duplicates.items():
        out.append(
            f"| {name} | {len(d.exact_groups)} | {d.redundant_rows} | {len(d.exact_conflicts)} | {len(d.near_clusters)} | "
            f"{sum(map(len, d.near_clusters))} | {len(d.near_conflicts)} |"
        )
    for name, d in r.duplicates.items():
        if d.exact_conflicts or d.near_conflicts:
            out += [
                "",
                f"Conflicting labels in {name} (rows): "
                + "; ".join(str(g) for g in (d.exact_conflicts + d.near_conflicts)[:n]),
            ]
        if d.examples:
            out += ["", f"<details><summary>{name}: first {len(d.examples)} clusters</summary>", ""]
            for cluster in d.examples:
                out += [f"- {cluster[0]}"] + [f"  - {t}" for t in cluster[1:]]
            out += ["", "</details>"]
    out.append("")

    out += ["## Leakage", ""]
    if not r.leakage:
        out.append("Only one set was given: nothing to compare.")
    for leak in r.leakage:
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(leak.counts().items())) or "none"
        out.append(
            f"- **{leak.set} vs {leak.reference}**: {len(leak.pairs)} of {leak.rows_checked} rows ({leak.share:.1%}) leak ({kinds})"
        )
        for p in leak.pairs[:n]:
            out.append(
                f"  - {leak.set} row {p['row']} ~ {leak.reference} row {p['reference_row']} ({p['kind']}, {p['similarity']:.2f}): {p.get('text', '')}"
            )
    out.append("")

    ln = r.label_noise
    out += ["## Likely label errors (train)", ""]
    if ln.skipped:
        out.append(f"Not checked: {ln.skipped}.")
    else:
        views = ", ".join(f"{k} {v:.3f}" for k, v in ln.view_accuracy.items())
        est = (
            f"estimated precision {ln.estimated_precision:.2f}"
            if ln.estimated_precision is not None
            else "nothing flagged"
        )
        out.append(
            f"Confident learning (cleanlab) on {ln.folds}-fold out-of-fold probabilities of {ln.model} "
            f"(accuracy {ln.model_accuracy:.3f}, kappa {ln.kappa:.2f}; each view: {views}); "
            f"cleanlab estimates {ln.estimated_errors} wrong labels."
        )
        if ln.withheld:
            out += ["", f"**Not listed**: {ln.withheld}; it would flag {ln.withheld_count} rows, mostly hard examples."]
        else:
            out += [
                "",
                f"{len(ln.issues)} of {ln.checked_rows} rows flagged, most suspicious first ({est}). "
                "`p(given)` is the out-of-fold probability of the row's label; read the text and fix the label, "
                "or let `prepare.label_issues` drop or relabel them.",
            ]
        if ln.excluded_labels:
            out.append(f"Labels with too few rows to check: {ln.excluded_labels}.")
        if ln.issues:
            out += ["", "| row | given | suggested | p(given) | text |", "|---:|---|---|---:|---|"]
            for i in ln.issues[:n]:
                out.append(f"| {i.row} | {i.given} | {i.suggested} | {i.self_confidence:.3f} | {_cell(i.text)} |")
    out.append("")

    out += ["## Class balance", ""]
    labels = sorted({y for counts in r.balance.values() for y in counts})
    out += ["| label | " + " | ".join(r.balance) + " |", "|---|" + "---:|" * len(r.balance)]
    for y in labels:
        out.append(
            f"| {y} | "
            + " | ".join(_share(counts.get(y, 0), sum(counts.values())) for counts in r.balance.values())
            + " |"
        )
    out.append("")

    out += [
        "## Text length",
        "",
        "| set | unit | mean | p50 | p90 | p99 | max | truncated |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in r.lengths.items():
        if s.get("count"):
            trunc = f"{s['truncated_share']:.1%} (> {s['max_length']})" if "truncated_share" in s else "-"
            out.append(
                f"| {name} | {s['unit']} | {s['mean']} | {s['p50']:g} | {s['p90']:g} | {s['p99']:g} | {s['max']} | {trunc} |"
            )
    out += ["", "Stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items()), ""]
    return "\n".join(out)


def _rows(rows: list[int]) -> str:
    if not rows:
        return "0"
    head = ", ".join(map(str, rows[:3])) + (", ..." if len(rows) > 3 else "")
    return f"{len(rows)} ({head})"


def _share(k: int, total: int) -> str:
    return f"{k} ({k / total:.1%})" if total else "0"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def warnings_of(r) -> list[str]:  # r: an AuditReport
    """One line per non-blocking problem worth a look."""
    out = []
    for name, s in r.schema.items():
        for key, what in [
            ("missing_text", "no text"),
            ("empty_text", "empty text"),
            ("non_text", "a non-text value"),
            ("missing_label", "no label"),
            ("encoding", "encoding problems (U+FFFD or control characters)"),
        ]:
            rows = getattr(s, key)
            if rows:
                out.append(f"{name}: {len(rows)} rows with {what} (rows {_first(rows)})")
        if s.singleton_labels:
            out.append(
                f"{name}: labels that occur once: {sorted(s.singleton_labels)} (they cannot be split or learned)"
            )
        if s.unseen_labels:
            out.append(f"{name}: labels missing from train: {sorted(s.unseen_labels)}")
    for name, d in r.duplicates.items():
        if d.redundant_rows:
            out.append(f"{name}: {d.redundant_rows} exact duplicate rows in {len(d.exact_groups)} groups")
        if d.near_clusters:
            out.append(
                f"{name}: {len(d.near_clusters)} near-duplicate clusters ({sum(map(len, d.near_clusters))} rows)"
            )
        if d.exact_conflicts or d.near_conflicts:
            out.append(
                f"{name}: duplicates with conflicting labels: {len(d.exact_conflicts)} exact groups, {len(d.near_conflicts)} near clusters"
            )
    ln = r.label_noise
    if ln.issues:
        out.append(
            f"train: {len(ln.issues)} likely label errors (of {ln.checked_rows} rows checked; estimated precision "
            f"{ln.estimated_precision:.2f})"
        )
    for name, counts in r.balance.items():
        if len(counts) > 1 and max(counts.values()) >= r.config.imbalance_warning * min(counts.values()):
            out.append(
                f"{name}: classes are imbalanced ({max(counts.values())} vs {min(counts.values())} rows); consider prepare.balance"
            )
    for name, stats in r.lengths.items():
        if stats.get("truncated_rows"):
            many = stats["truncated_share"] > r.config.truncation_warning
            out.append(
                f"{name}: {stats['truncated_rows']:,} of {stats['count']:,} texts ({stats['truncated_share']:.1%}) are longer "
                f"than max_length {stats['max_length']} and are truncated, losing {stats['truncated_tokens_mean']:,.0f} "
                f"tokens on average ({stats['truncated_tokens_max']:,} at most)"
                + ("; consider a larger data.max_length" if many else "")
            )
    return out


def _first(rows: list[int], n: int = 5) -> str:
    return ", ".join(map(str, rows[:n])) + (", ..." if len(rows) > n else "")
