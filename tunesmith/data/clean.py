"""Cleaning rules of `prepare`, applied in a fixed order; every rule records what it did to how many rows.

A cleaned table has the columns `text`, `label`, `source_row` (1-based row of the input file) and,
when a group column is configured, `group`.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from ..config.schema import AuditConfig, PrepareConfig
from .dedup import NearIndex, exact_groups, near_clusters
from .loaders import label_str
from .textkeys import normalize_text


@dataclass
class CleanStep:
    rule: str
    set: str
    action: str
    """`dropped`, `changed` (text rewritten or label replaced) or `skipped` (asked for, not done: `detail` says why)."""
    rows: int
    detail: str = ""


def to_table(df: pd.DataFrame, text_column: str, label_column: str, group_column: str | None) -> pd.DataFrame:
    """The columns prepare works on, with each row's 1-based position in the input."""
    out = pd.DataFrame(
        {
            "text": df[text_column].astype(object).to_numpy(),
            "label": df[label_column].astype(object).map(label_str).to_numpy(),
            "source_row": range(1, len(df) + 1),
        }
    )
    if group_column:
        out["group"] = df[group_column].astype(object).map(lambda v: None if _missing(v) else str(v)).to_numpy()
    return out


def clean_table(
    t: pd.DataFrame, name: str, cfg: PrepareConfig, near: AuditConfig, label_fixes: dict[int, str], log: list[CleanStep]
) -> pd.DataFrame:
    """Apply the cleaning rules to one set; `label_fixes` maps source rows to a suggested label (train only)."""

    def drop(mask, rule: str, detail: str = "") -> None:
        nonlocal t
        n = int(mask.sum())
        if n:
            log.append(CleanStep(rule, name, "dropped", n, detail))
            t = t.loc[~mask].reset_index(drop=True)

    def change(new: pd.Series, column: str, rule: str, detail: str = "") -> None:
        n = int((new != t[column]).sum())
        if n:
            log.append(CleanStep(rule, name, "changed", n, detail))
            t[column] = new

    drop(t["text"].map(lambda v: not _missing(v) and not isinstance(v, str)), "non_text", "text value is not a string")
    drop(t["text"].map(_missing), "missing_text")
    drop(t["label"].isna(), "missing_label")
    if cfg.strip:
        change(t["text"].map(str.strip), "text", "strip", "leading/trailing whitespace")
    if cfg.normalize_unicode != "none":
        change(
            t["text"].map(lambda s: unicodedata.normalize(cfg.normalize_unicode, s)),
            "text",
            "normalize_unicode",
            cfg.normalize_unicode,
        )
    if cfg.drop_empty:
        drop(t["text"].map(lambda s: not s.strip()), "empty_text")
    words = t["text"].map(lambda s: len(s.split()))
    if cfg.min_words > 1:
        drop(words < cfg.min_words, "min_words", f"fewer than {cfg.min_words} words")
        words = t["text"].map(lambda s: len(s.split()))
    if cfg.max_words:
        drop(words > cfg.max_words, "max_words", f"more than {cfg.max_words} words")
    if label_fixes and cfg.label_issues != "keep":
        flagged = t["source_row"].isin(label_fixes.keys())
        if cfg.label_issues == "drop":
            drop(flagged, "label_issues", "likely label errors (cleanlab)")
        else:
            change(
                t["source_row"].map(label_fixes).where(flagged, t["label"]),
                "label",
                "label_issues",
                "relabelled to the suggested label",
            )
    t = _conflicts(t, name, cfg.conflicts, log)
    if cfg.drop_duplicates:
        drop(t["text"].map(normalize_text).duplicated(), "exact_duplicates", "kept the first of each group")
    if cfg.drop_near_duplicates and len(t):
        keys = t["text"].map(normalize_text).tolist()
        index = NearIndex.for_audit(keys, near)
        later = {r for c in near_clusters(keys, index) for r in c.rows[1:]}
        drop(
            pd.Series([i in later for i in range(len(t))]),
            "near_duplicates",
            f"similarity >= {near.near_threshold} (shingles{' or word sequences' if near.near_words else ''}); kept the first of each cluster",
        )
    return t


def _conflicts(t: pd.DataFrame, name: str, how: str, log: list[CleanStep]) -> pd.DataFrame:
    """Exact duplicates (after normalisation) that disagree on the label: drop them all, or relabel them to the majority."""
    if how == "keep":
        return t
    keys = t["text"].map(normalize_text).tolist()
    dropped, changed = [], 0
    labels = t["label"].tolist()
    for group in exact_groups(keys):
        votes = Counter(labels[i] for i in group)
        if len(votes) < 2:
            continue
        (top, n1), (_, n2) = votes.most_common(2)
        if how == "relabel" and n1 > n2:
            changed += sum(labels[i] != top for i in group)
            for i in group:
                labels[i] = top
        else:  # drop, or a tie that no majority decides
            dropped += group
    t = t.assign(label=labels)
    if changed:
        log.append(
            CleanStep(
                "label_conflicts", name, "changed", changed, "relabelled to the majority label of their duplicates"
            )
        )
    if dropped:
        log.append(
            CleanStep(
                "label_conflicts",
                name,
                "dropped",
                len(dropped),
                "duplicates with conflicting labels" + (" (tied vote)" if how == "relabel" else ""),
            )
        )
        t = t.drop(index=dropped).reset_index(drop=True)
    return t


def _missing(v) -> bool:
    return v is None or (not isinstance(v, (str, list, dict, tuple)) and bool(pd.isna(v)))
