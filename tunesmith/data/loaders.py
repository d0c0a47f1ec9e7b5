"""Read CSV / JSONL / Parquet / saved `datasets` folders into DataFrames, with errors that say where."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..utils import resolve_path
from .textkeys import normalize_text

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def load_table(
    spec: str, fmt: str = "auto", encoding: str = "utf-8", errors: str = "strict", delimiter: str | None = None
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Load one data source. A saved `datasets.DatasetDict` folder returns {split name: DataFrame}.

    CSV: `delimiter` if given, else `,` (tab for .tsv); a file that does not parse that way, or parses into one
    column, is sniffed (`csv.Sniffer`) for `;`, tab or `|` and read that way when it fits; `table_notes` says so.
    """
    path = resolve_path(spec)
    if not path.exists():
        raise DataError(
            f"{spec}: data file not found; check data.* paths in the config (relative paths start at {Path.cwd()})"
        )
    if fmt == "auto":
        fmt = "hf" if path.is_dir() else SUFFIX_FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            raise DataError(
                f"{spec}: cannot tell the format from suffix '{path.suffix}'; set data.format to csv, jsonl, parquet or hf"
            )
    if fmt == "hf":
        return _load_hf(path, spec)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for broken files
            raise DataError(f"{spec}: not a readable Parquet file ({err}); check data.format") from None
    else:
        text = _decode(path, spec, encoding, errors)
        df = (
            _read_csv(text, spec, path.suffix.lower() == ".tsv", delimiter) if fmt == "csv" else _read_jsonl(text, spec)
        )
    if len(df) == 0:
        raise DataError(f"{spec}: the file has no rows; point data.* at a file with examples")
    return df


def _decode(path: Path, spec: str, encoding: str, errors: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding, errors=errors)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{spec} line {line}: not valid {encoding} (byte 0x{raw[err.start]:02x}); re-save the file as UTF-8, "
            f"set data.encoding to its real encoding, or set data.encoding_errors: replace"
        ) from None
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding '{encoding}'; use e.g. utf-8 or latin-1") from None


DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _read_csv(text: str, spec: str, tsv: bool, delimiter: str | None = None) -> pd.DataFrame:
    if not text.strip():
        raise DataError(f"{spec}: the file is empty; point data.* at a file with examples")

    def read(sep: str) -> pd.DataFrame:
        return pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=False, na_values=[""])

    default = delimiter or ("\t" if tsv else ",")
    try:
        df = read(default)
    except pd.errors.ParserError as err:
        sniffed = None if delimiter else _sniff(text, default)
        if sniffed is None:
            fix = "check quoting on that line" + ("" if delimiter else " (or set data.delimiter)")
            raise DataError(f"{spec}: malformed CSV ({str(err).strip()}); {fix}") from None
        try:
            df = read(sniffed)
        except pd.errors.ParserError:
            raise DataError(
                f"{spec}: malformed CSV ({str(err).strip()}); the file looks {DELIMITER_NAMES[sniffed]}-delimited but "
                f"does not parse that way either: check quoting, or set data.delimiter"
            ) from None
    else:
        sniffed = _sniff(text, default) if df.shape[1] == 1 and not delimiter else None
        if sniffed is None:
            return df
        retry = read(sniffed)
        if retry.shape[1] < 2:
            return df
        df = retry
    df.attrs["tunesmith_notes"] = [
        f"{spec}: read as {DELIMITER_NAMES[sniffed]}-delimited (sniffed; set data.delimiter to choose)"
    ]
    return df


def _sniff(text: str, tried: str) -> str | None:
    """The delimiter the head of the file uses, if it is another of `,;\t|` than `tried` (else None)."""
    head = text[:65536]
    head = head[: head.rfind("\n")] if "\n" in head else head
    try:
        found = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        return None
    return found if found != tried and found in head.partition("\n")[0] else None


def table_notes(df) -> list[str]:
    """What `load_table` decided on the way (e.g. a sniffed delimiter), for the run's data notes."""
    return list(getattr(df, "attrs", {}).get("tunesmith_notes", []))


def _read_jsonl(text: str, spec: str) -> pd.DataFrame:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{spec} line {n}: not valid JSON ({err.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{spec} line {n}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise DataError(f"{spec}: the file is empty; point data.* at a file with examples")
    return pd.DataFrame(rows)


def _load_hf(path: Path, spec: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{spec}: not a dataset saved with `save_to_disk` ({err}); check data.format") from None
    if isinstance(ds, datasets.DatasetDict):
        return {name: split.to_pandas() for name, split in ds.items()}
    return ds.to_pandas()


def label_str(v) -> str | None:
    """The one way a label value becomes a class name: None when missing, 3.0 -> "3", surrounding spaces dropped."""
    if v is None or (not isinstance(v, (str, list, dict, tuple)) and bool(pd.isna(v))):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip() or None


def label_key(name: str) -> str:
    """What makes two label names the same class: the key exact duplicates share (NFKC, case folded, spaces collapsed)."""
    return normalize_text(name)


def label_variants(counts: Counter, preferred: list[str] | None = None) -> dict[str, dict[str, int]]:
    """{canonical name: {spelling: rows}} for label names that differ only by case, spaces or Unicode form.

    The canonical name is the spelling in `preferred` (data.labels), else the most common one.
    """
    groups: dict[str, dict[str, int]] = defaultdict(dict)
    for name, n in counts.items():
        groups[label_key(name)][name] = n
    chosen = {label_key(p): p for p in preferred or []}
    out = {}
    for key, spellings in groups.items():
        if len(spellings) > 1:
            canon = chosen.get(key) or min(spellings, key=lambda s: (-spellings[s], s))
            out[canon] = dict(sorted(spellings.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def unify_labels(
    labels: dict[str, pd.Series], normalize: bool, preferred: list[str] | None, src: str
) -> tuple[dict[str, pd.Series], list[str]]:
    """The label columns of every set (names from `label_str`), with spelling variants merged or stopped.

    Without `normalize`, variants are a DataError naming them and their counts; with it, each is merged into
    its canonical name and a note says what was merged.
    """
    counts = Counter(v for series in labels.values() for v in series.dropna())
    variants = label_variants(counts, preferred)
    if not variants:
        return labels, []
    described = "; ".join(
        " vs ".join(f"{name!r} ({n:,} rows)" for name, n in spellings.items()) for spellings in variants.values()
    )
    if not normalize:
        raise DataError(
            f"{src}: labels that differ only in case, spaces or Unicode form would train as separate classes: "
            f"{described}; fix the labels, or set data.normalize_labels: true to merge each into its most common spelling"
        )
    mapping = {s: canon for canon, spellings in variants.items() for s in spellings if s != canon}
    merged = {name: series.map(lambda v: mapping.get(v, v)) for name, series in labels.items()}
    note = "merged label variants (data.normalize_labels): " + "; ".join(
        f"{', '.join(repr(s) for s in spellings if s != canon)} -> {canon!r}" for canon, spellings in variants.items()
    )
    return merged, [note]


def require_columns(df: pd.DataFrame, columns: dict[str, str], src: str, fix: str = "set data.{role}_column") -> None:
    """{role: column} must all be columns of `df`; else one line naming the file, the column, what exists, the fix."""
    for role, col in columns.items():
        if col not in df.columns:
            cols = ", ".join(map(str, df.columns[:20]))
            raise DataError(f"{src}: no {role} column '{col}' (columns: {cols}); {fix.format(role=role)}")


def pick_split(table: pd.DataFrame | dict[str, pd.DataFrame], name: str, src: str) -> pd.DataFrame:
    """One table from what `load_table` returned: a saved DatasetDict gives its `name` split (else its only one)."""
    if not isinstance(table, dict):
        return table
    if name in table:
        return table[name]
    if len(table) == 1:
        return next(iter(table.values()))
    raise DataError(
        f"{src}: the saved dataset has no '{name}' split (it has {', '.join(table)}); export that split to a file"
    )
