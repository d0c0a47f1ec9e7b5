"""Turn the configured data into train/validation/test splits of (text, label id) with label names."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from sklearn.model_selection import train_test_split

from ..config.schema import AuditConfig, DataConfig
from ..errors import DataError
from ..utils import fingerprint
from .loaders import label_str, load_table, require_columns, table_notes, unify_labels
from .splitting import grouped_split, near_duplicate_groups


@dataclass
class TextSplit:
    name: str
    texts: list[str]
    labels: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        return fingerprint(self.texts, self.labels)


@dataclass
class Splits:
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    label_names: list[str]
    notes: list[str] = field(default_factory=list)
    """What was done to the data on the way (dropped rows, subsampling), for the report."""

    def summary(self) -> dict:
        return {
            s.name: {"rows": len(s), "fingerprint": s.fingerprint(), "source": s.source}
            for s in (self.train, self.validation, self.test)
        }


def load_splits(cfg: DataConfig, seed: int, near: AuditConfig | None = None) -> Splits:
    """Load, check and split the data as configured. Raises DataError on anything unusable.

    `near`: the audit settings that decide near duplicates (the run's `audit:`), so the split keeps apart exactly
    what the audit would call leakage; default: the audit defaults with `seed`.
    """
    notes: list[str] = []
    frames: dict[str, tuple[pd.DataFrame, str]] = {}
    if cfg.path:
        loaded = _load(cfg, cfg.path)
        if isinstance(loaded, dict):  # a DatasetDict with its own splits
            for name in ("train", "validation", "test"):
                if name in loaded:
                    frames[name] = (loaded[name], f"{cfg.path}[{name}]")
            if "train" not in frames:
                raise DataError(f"{cfg.path}: the saved DatasetDict has no 'train' split (has {', '.join(loaded)})")
        else:
            frames["train"] = (loaded, cfg.path)
    else:
        for name in ("train", "validation", "test"):
            spec = getattr(cfg, name)
            if spec:
                loaded = _load(cfg, spec)
                if isinstance(loaded, dict):
                    raise DataError(f"{spec}: a DatasetDict folder; give it as data.path instead of data.{name}")
                frames[name] = (loaded, spec)

    for df, _ in frames.values():
        notes.extend(table_notes(df))
    tables = {name: _clean(df, cfg, src, notes) for name, (df, src) in frames.items()}
    train_df, train_src = tables["train"], frames["train"][1]
    labels, merged = unify_labels(
        {name: t["__label"] for name, t in tables.items()},
        cfg.normalize_labels,
        cfg.labels,
        ", ".join(dict.fromkeys(src for _, src in frames.values())),
    )
    for name, t in tables.items():
        t["__label"] = labels[name]
    notes.extend(merged)

    if cfg.max_samples and len(train_df) > cfg.max_samples and "test" not in tables and "validation" not in tables:
        train_df = _stratified_take(train_df, cfg.max_samples, seed, train_src)
        notes.append(f"subsampled {train_src} to {cfg.max_samples} rows (stratified, seed {seed})")
    _require_two_classes(train_df, train_src)

    carved = 0.0  # share of the original rows already split off as test
    groups = (
        _groups(train_df, cfg, near or AuditConfig(seed=seed))
        if ("test" not in tables or "validation" not in tables)
        else None
    )
    if groups is not None:
        kept = [
            k
            for k, on in (
                ("near duplicates", cfg.group_near_duplicates),
                (f"'{cfg.group_column}' groups", cfg.group_column),
            )
            if on
        ]
        notes.append(f"split so that {' and '.join(kept)} stay on one side ({len(set(groups))} groups)")
    if "test" not in tables:
        train_df, tables["test"], groups = _split_off(train_df, cfg.test_size, seed, train_src, "test", groups)
        frames["test"] = (None, f"{train_src} (split {cfg.test_size:.0%})")
        carved = cfg.test_size
    if "validation" not in tables:
        share = cfg.validation_size / (1 - carved)
        train_df, tables["validation"], groups = _split_off(train_df, share, seed + 1, train_src, "validation", groups)
        frames["validation"] = (None, f"{train_src} (split {cfg.validation_size:.0%})")
    tables["train"] = train_df

    names = label_names(cfg, set(train_df["__label"]), train_src)
    index = {name: i for i, name in enumerate(names)}
    for name in ("validation", "test"):
        unseen = sorted(set(tables[name]["__label"]) - set(index))
        if unseen:
            raise DataError(
                f"{frames[name][1]}: labels {unseen} do not occur in the training data ({train_src}); "
                f"add training examples for them or remove those rows"
            )
    splits = {
        name: TextSplit(
            name, tables[name]["__text"].tolist(), [index[y] for y in tables[name]["__label"]], frames[name][1]
        )
        for name in ("train", "validation", "test")
    }
    return Splits(splits["train"], splits["validation"], splits["test"], names, notes)


def _load(cfg: DataConfig, spec: str):
    return load_table(spec, cfg.format, cfg.encoding, cfg.encoding_errors, cfg.delimiter)


def _clean(df: pd.DataFrame, cfg: DataConfig, src: str, notes: list[str]) -> pd.DataFrame:
    require_columns(df, {"text": cfg.text_column, "label": cfg.label_column}, src)
    text, label = df[cfg.text_column], df[cfg.label_column]
    non_text = text.map(lambda v: v is not None and not isinstance(v, str) and not pd.isna(v))
    if non_text.any():
        rows = (non_text[non_text].index[:5] + 1).tolist()
        raise DataError(f"{src}: column '{cfg.text_column}' holds non-text values at rows {rows}; it must hold strings")
    empty = text.isna() | (text.fillna("").str.strip() == "") | label.map(label_str).isna()
    if empty.all():
        raise DataError(f"{src}: every row lacks a text or a label; check data.text_column and data.label_column")
    if empty.any():
        rows = (empty[empty].index[:5] + 1).tolist()
        notes.append(f"{src}: dropped {int(empty.sum())} rows with empty text or missing label (first rows: {rows})")
    kept = df.loc[~empty]
    labels = kept[cfg.label_column].map(label_str)
    out = pd.DataFrame({"__text": kept[cfg.text_column].astype(str).to_numpy(), "__label": labels.to_numpy()})
    if cfg.group_column and cfg.group_column in kept.columns:
        out[cfg.group_column] = kept[cfg.group_column].to_numpy()
    return out


def _require_two_classes(df: pd.DataFrame, src: str) -> None:
    labels = df["__label"].unique()
    if len(labels) < 2:
        raise DataError(f"{src}: all rows have the label '{labels[0]}'; classification needs at least 2 labels")


def _stratified_take(df: pd.DataFrame, n: int, seed: int, src: str) -> pd.DataFrame:
    keep, _ = _safe_split(df, n, seed, src, "subsample")
    return keep


def _split_off(df: pd.DataFrame, share: float, seed: int, src: str, what: str, groups=None):
    """(rest, split_off, groups of rest): stratified by label; with groups, no group is cut in two."""
    if share <= 0:
        raise DataError(f"{src}: no {what} set: give data.{what} or a positive data.{what}_size")
    _require_pairs(df, src, what)
    if groups is None:
        rest, off = _safe_split(df, share, seed, src, what, train_size=False)
        return rest, off, None

    rest, off, rest_groups = grouped_split(df.rename(columns={"__label": "label"}), share, groups, seed, src, what)
    return rest.rename(columns={"label": "__label"}), off.rename(columns={"label": "__label"}), rest_groups


def _groups(df: pd.DataFrame, cfg: DataConfig, audit: AuditConfig):
    """Group ids that must not be split: near-duplicate clusters and/or a source column."""
    if not cfg.group_near_duplicates and not cfg.group_column:
        return None

    table = pd.DataFrame({"text": df["__text"], "label": df["__label"]})
    if cfg.group_column:
        if cfg.group_column not in df.columns:
            raise DataError(
                f"{cfg.path or cfg.train}: no group column '{cfg.group_column}'; set data.group_column to an existing column"
            )
        table["group"] = df[cfg.group_column].to_numpy()
    near = audit if cfg.group_near_duplicates else None
    return near_duplicate_groups(table, cfg.group_column, near)


def _require_pairs(df: pd.DataFrame, src: str, what: str) -> None:
    counts = df["__label"].value_counts()
    rare = counts[counts < 2]
    if len(rare):
        raise DataError(
            f"{src}: label(s) {rare.index.tolist()} occur only once; a stratified {what} split needs at least 2 "
            f"rows per label; add examples or remove those rows"
        )


def _safe_split(df, size, seed, src, what, train_size=True):
    _require_pairs(df, src, what)
    kwargs = {"train_size" if train_size else "test_size": size}
    try:
        a, b = train_test_split(df, random_state=seed, stratify=df["__label"], **kwargs)
    except ValueError as err:
        raise DataError(
            f"{src}: cannot make a stratified {what} split ({err}); use more data or a larger data.{what}_size"
        ) from None
    return a.reset_index(drop=True), b.reset_index(drop=True)


def label_names(cfg: DataConfig, present: set[str], src: str) -> list[str]:
    """The label order: data.labels if given (all present labels must be in it), else sorted (numerically for digits)."""
    if cfg.labels:
        unknown = sorted(present - set(cfg.labels))
        if unknown:
            raise DataError(f"{src}: labels {unknown} are not in data.labels {cfg.labels}; add them there")
        return list(cfg.labels)
    if all(s.lstrip("-").isdigit() for s in present):
        return sorted(present, key=int)
    return sorted(present)
