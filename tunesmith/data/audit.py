"""Data audit: schema problems, duplicates, leakage between splits, likely label errors, balance, lengths.

`audit()` checks DataFrames as they were read (before any cleaning), `audit_splits()` the
`Splits` that training uses. Neither changes the data; `tunesmith.data.prepare` does that.
Row numbers in a report are 1-based positions of data rows in their set (the header is not a row).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config.schema import AuditConfig
from ..utils import atomic_write_text
from .audit_markdown import render, warnings_of
from .dedup import Match, NearIndex, cross_matches, exact_groups, near_clusters
from .label_noise import LabelNoiseFindings, find_label_errors
from .lengths import length_stats
from .loaders import label_str, label_variants, require_columns
from .textkeys import normalize_text


@dataclass
class SchemaFindings:
    rows: int
    missing_text: list[int] = field(default_factory=list)
    empty_text: list[int] = field(default_factory=list)
    """Rows whose text is only whitespace."""
    non_text: list[int] = field(default_factory=list)
    """Rows whose text value is not a string (numbers, lists, ...)."""
    missing_label: list[int] = field(default_factory=list)
    encoding: list[int] = field(default_factory=list)
    """Rows with U+FFFD (an undecodable byte that was replaced), control characters or lone surrogates."""
    singleton_labels: dict[str, int] = field(default_factory=dict)
    """Labels that occur once: label -> its row."""
    unseen_labels: dict[str, int] = field(default_factory=dict)
    """Labels of a validation/test set that the training set lacks: label -> row count."""


@dataclass
class DuplicateFindings:
    exact_groups: list[list[int]] = field(default_factory=list)
    """Rows with identical normalised text, one list per text."""
    exact_conflicts: list[list[int]] = field(default_factory=list)
    """Exact groups whose rows carry different labels."""
    near_clusters: list[list[int]] = field(default_factory=list)
    """Rows of near-duplicate clusters (at least two different normalised texts each)."""
    near_conflicts: list[list[int]] = field(default_factory=list)
    """Near-duplicate clusters whose rows carry different labels."""
    redundant_rows: int = 0
    """Rows that exact deduplication removes (every copy after the first)."""
    examples: list[list[str]] = field(default_factory=list)
    """Texts of the first clusters (exact, then near), for reading."""


@dataclass
class Leak:
    set: str
    """The later set (validation or test) whose rows also occur in `reference`."""
    reference: str
    rows_checked: int
    pairs: list[dict] = field(default_factory=list)
    """{row, reference_row, kind: exact|near, similarity} for every leaked row."""

    @property
    def share(self) -> float:
        return len(self.pairs) / self.rows_checked if self.rows_checked else 0.0

    def counts(self) -> dict[str, int]:
        return dict(Counter(p["kind"] for p in self.pairs))

    def blocks(self, cfg: AuditConfig) -> bool:
        """Whether this overlap stops training under `cfg` (audit.block_on_leakage, audit.leakage_tolerance)."""
        return cfg.block_on_leakage and bool(self.pairs) and self.share > cfg.leakage_tolerance


@dataclass
class AuditReport:
    text_column: str
    label_column: str
    sources: dict[str, str]
    """Set name -> where it came from."""
    schema: dict[str, SchemaFindings]
    duplicates: dict[str, DuplicateFindings]
    leakage: list[Leak]
    label_noise: LabelNoiseFindings
    balance: dict[str, dict[str, int]]
    """Set name -> label -> rows."""
    lengths: dict[str, dict[str, float]]
    """Set name -> length statistics (unit, mean, percentiles, max, truncated share)."""
    warnings: list[str]
    config: AuditConfig
    seconds: dict[str, float] = field(default_factory=dict)
    label_variants: dict[str, dict[str, int]] = field(default_factory=dict)
    """Label names that differ only by case, spaces or Unicode form, across all sets: {canonical: {spelling: rows}}."""

    @property
    def blocking(self) -> list[str]:
        """One-line messages of the problems that should stop training."""
        out = []
        if self.label_variants:
            described = "; ".join(
                " vs ".join(f"{k!r} ({n})" for k, n in v.items()) for v in self.label_variants.values()
            )
            out.append(
                f"label variants: {described} would train as separate classes; fix the labels, or set "
                f"data.normalize_labels: true to merge them"
            )
        for leak in (k for k in self.leakage if k.blocks(self.config)):
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(leak.counts().items()))
            out.append(
                f"leakage: {len(leak.pairs)} of {leak.rows_checked} {leak.set} rows ({leak.share:.1%}) also occur in "
                f"{leak.reference} ({kinds}); remove them (`tunesmith data prepare` does) or set audit.block_on_leakage: false"
            )
        return out

    def counts(self) -> dict[str, Any]:
        """Headline numbers, flat, for logs and trackers."""
        out: dict[str, Any] = {}
        for name, s in self.schema.items():
            out[f"{name}.rows"] = s.rows
            for key in ("missing_text", "empty_text", "non_text", "missing_label", "encoding"):
                out[f"{name}.{key}"] = len(getattr(s, key))
        for name, d in self.duplicates.items():
            out[f"{name}.exact_duplicate_rows"] = d.redundant_rows
            out[f"{name}.exact_conflicts"] = len(d.exact_conflicts)
            out[f"{name}.near_duplicate_clusters"] = len(d.near_clusters)
            out[f"{name}.near_conflicts"] = len(d.near_conflicts)
        for leak in self.leakage:
            out[f"leakage.{leak.set}_in_{leak.reference}"] = len(leak.pairs)
        out["label_issues"] = len(self.label_noise.issues)
        out["label_variants"] = sum(len(v) - 1 for v in self.label_variants.values())
        out["blocking"] = len(self.blocking)
        return out

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["blocking"] = self.blocking
        out["counts"] = self.counts()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:

        return render(self)

    def save(self, folder: Path, stem: str = "audit") -> tuple[Path, Path]:
        """Write `<stem>.md` and `<stem>.json` into `folder` (each atomically)."""
        folder = Path(folder)
        md, js = folder / f"{stem}.md", folder / f"{stem}.json"
        atomic_write_text(md, self.to_markdown())
        atomic_write_text(js, self.to_json())
        return md, js


# --------------------------------------------------------------------------------------------


def audit(
    train_df: pd.DataFrame,
    others: dict[str, pd.DataFrame] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    options: AuditConfig | None = None,
    *,
    sources: dict[str, str] | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    embed_name: str = "features",
    stop_at_leakage: bool = False,
) -> AuditReport:
    """Audit a training table and optional later sets ({"validation": df, "test": df}); changes nothing.

    `tokenizer` (a Hugging Face tokenizer or any callable returning `input_ids`) measures lengths in
    its tokens instead of whitespace tokens; `max_length` adds the share of texts it would truncate.
    `embed` (texts -> one vector each, e.g. the frozen model about to be fine-tuned) gives the label-error
    model its second view (`embed_name` names it in the report); without it, TF-IDF alone.
    `stop_at_leakage`: a blocking leak skips the label-error model (a run refuses to start anyway).
    """
    cfg = options or AuditConfig()
    cfg.check()
    frames = {"train": train_df, **(others or {})}
    sources = {name: (sources or {}).get(name, name) for name in frames}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(seconds.get(stage, 0.0) + now - clock, 3)
        clock = now

    for name, df in frames.items():
        require_columns(
            df, {"text": text_column, "label": label_column}, sources[name], "pass the right --{role}-column"
        )

    tables = {name: _Table.read(df, text_column, label_column) for name, df in frames.items()}
    train_labels = set(tables["train"].labels.dropna())
    schema = {name: t.schema(train_labels if name != "train" else None) for name, t in tables.items()}
    lap("schema")

    indexes: dict[str, NearIndex | None] = {}
    duplicates = {}
    for name, t in tables.items():
        index = NearIndex.for_audit(t.keys, cfg) if cfg.near_duplicates and t.keys else None
        indexes[name] = index
        duplicates[name] = _duplicates(t, index, cfg.max_examples)
    lap("duplicates")

    leakage = []
    names = list(tables)
    for i, later in enumerate(names[1:], start=1):
        for ref in names[:i]:
            matches = cross_matches(tables[ref].keys, indexes[ref], tables[later].keys)
            leakage.append(_leak(later, ref, tables[later], tables[ref], matches, cfg.max_examples))
    lap("leakage")

    noise = LabelNoiseFindings(skipped="disabled (audit.label_errors: false)")
    if stop_at_leakage and any(
        k.blocks(cfg) for k in leakage
    ):  # training stops anyway: skip the costly label-error model
        noise = LabelNoiseFindings(skipped="the split leaks (training stops before it matters)")
    elif cfg.label_errors:
        t = tables["train"]
        labelled = [i for i, y in enumerate(t.key_labels) if y is not None]
        texts = [t.texts[i] for i in labelled]
        features = embed(texts) if embed is not None and cfg.label_error_model == "auto" and texts else None
        lap("label_features")
        noise = find_label_errors(
            texts,
            [t.key_labels[i] for i in labelled],
            [t.rows[i] for i in labelled],
            cfg.label_error_folds,
            cfg.seed,
            features=features,
            feature_name=embed_name,
            min_kappa=cfg.label_error_min_kappa,
        )
    lap("label_errors")

    balance = {name: dict(Counter(t.labels.dropna()).most_common()) for name, t in tables.items()}
    lengths = {name: length_stats(t.texts, tokenizer, max_length) for name, t in tables.items()}
    lap("balance_and_lengths")
    report = AuditReport(
        text_column, label_column, sources, schema, duplicates, leakage, noise, balance, lengths, [], cfg, seconds
    )
    report.label_variants = label_variants(Counter(y for t in tables.values() for y in t.labels.dropna()))
    report.warnings.extend(warnings_of(report))
    return report


def audit_splits(
    splits,
    cfg: AuditConfig | None = None,
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    embed_name: str = "features",
    stop_at_leakage: bool = False,
) -> AuditReport:
    """Audit the loaded `tunesmith.data.splits.Splits` (row numbers are positions within each split)."""
    frames, sources = {}, {}
    for split in (splits.train, splits.validation, splits.test):
        frames[split.name] = pd.DataFrame({"text": split.texts, "label": [splits.label_names[y] for y in split.labels]})
        sources[split.name] = split.source or split.name
    train = frames.pop("train")
    return audit(
        train,
        frames,
        "text",
        "label",
        cfg,
        sources=sources,
        tokenizer=tokenizer,
        max_length=max_length,
        embed=embed,
        embed_name=embed_name,
        stop_at_leakage=stop_at_leakage,
    )


# --------------------------------------------------------------------------------------------


@dataclass
class _Table:
    """One set, read once: raw columns plus the usable rows (a non-empty string text)."""

    text: pd.Series
    labels: pd.Series
    """Labels as strings (None where missing)."""
    usable: list[int]
    """0-based positions of rows with a usable text."""
    texts: list[str]
    keys: list[str]
    rows: list[int]
    """1-based row numbers of the usable rows."""
    key_labels: list[str | None]

    @classmethod
    def read(cls, df: pd.DataFrame, text_column: str, label_column: str) -> _Table:
        text = df[text_column].reset_index(drop=True)
        labels = pd.Series([label_str(v) for v in df[label_column]], dtype=object)  # None stays None (not NaN)
        usable = [i for i, v in enumerate(text) if isinstance(v, str) and v.strip()]
        texts = [text[i] for i in usable]
        return cls(
            text,
            labels,
            usable,
            texts,
            [normalize_text(s) for s in texts],
            [i + 1 for i in usable],
            [labels[i] for i in usable],
        )

    def schema(self, train_labels: set | None) -> SchemaFindings:
        s = SchemaFindings(rows=len(self.text))
        for i, v in enumerate(self.text):
            if v is None or (not isinstance(v, (str, list, dict)) and pd.isna(v)):
                s.missing_text.append(i + 1)
            elif not isinstance(v, str):
                s.non_text.append(i + 1)
            elif not v.strip():
                s.empty_text.append(i + 1)
            elif _bad_encoding(v):
                s.encoding.append(i + 1)
        s.missing_label = [i + 1 for i, y in enumerate(self.labels) if not isinstance(y, str)]
        present = [(i + 1, y) for i, y in enumerate(self.labels) if isinstance(y, str)]
        counts = Counter(y for _, y in present)
        s.singleton_labels = {y: row for row, y in present if counts[y] == 1}
        if train_labels is not None:
            s.unseen_labels = {y: n for y, n in counts.items() if y not in train_labels}
            s.singleton_labels = {}
        return s


def _bad_encoding(text: str) -> bool:
    if "\ufffd" in text:
        return True
    for ch in text:
        o = ord(ch)
        if (o < 32 and ch not in "\t\n\r") or 0xD800 <= o <= 0xDFFF or o == 0x7F:
            return True
    return False


def _duplicates(t: _Table, index: NearIndex | None, max_examples: int) -> DuplicateFindings:
    d = DuplicateFindings()
    groups = [[t.rows[i] for i in g] for g in exact_groups(t.keys)]
    d.exact_groups = groups
    d.redundant_rows = sum(len(g) - 1 for g in groups)
    label_of = dict(zip(t.rows, t.key_labels))
    d.exact_conflicts = [g for g in groups if len({label_of[r] for r in g} - {None}) > 1]
    if index is not None:
        d.near_clusters = [[t.rows[i] for i in c.rows] for c in near_clusters(t.keys, index)]
        d.near_conflicts = [c for c in d.near_clusters if len({label_of[r] for r in c} - {None}) > 1]
    text_of = dict(zip(t.rows, t.texts))
    for cluster in (groups + d.near_clusters)[:max_examples]:
        d.examples.append([f"[row {r}, {label_of[r]}] {_clip(text_of[r])}" for r in cluster[:5]])
    return d


def _leak(name: str, ref: str, t: _Table, r: _Table, matches: list[Match], max_examples: int) -> Leak:
    leak = Leak(name, ref, rows_checked=len(t.rows))
    for n, m in enumerate(matches):
        pair = {"row": t.rows[m.other], "reference_row": r.rows[m.train], "kind": m.kind, "similarity": m.similarity}
        if n < max_examples:
            pair.update(text=_clip(t.texts[m.other]), reference_text=_clip(r.texts[m.train]))
        leak.pairs.append(pair)
    return leak


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
