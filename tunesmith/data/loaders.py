"""Read CSV / JSONL / Parquet / saved `datasets` folders into DataFrames, with errors that say where."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..utils import resolve_path

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
    spec: str, fmt: str = "auto", encoding: str = "utf-8", errors: str = "strict"
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Load one data source. A saved `datasets.DatasetDict` folder returns {split name: DataFrame}."""
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
        df = _read_csv(text, spec, path.suffix.lower() == ".tsv") if fmt == "csv" else _read_jsonl(text, spec)
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


def _read_csv(text: str, spec: str, tsv: bool) -> pd.DataFrame:
    if not text.strip():
        raise DataError(f"{spec}: the file is empty; point data.* at a file with examples")
    try:
        return pd.read_csv(io.StringIO(text), sep="\t" if tsv else ",", keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as err:
        raise DataError(f"{spec}: malformed CSV ({str(err).strip()}); check quoting on that line") from None


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
