"""Where images come from, and decoding them safely.

Three layouts: a folder per class (`root/<label>/**/*.png`, optionally under `train/`, `validation/`, `test/`), a
table (CSV, JSONL, Parquet) with an image column (a path relative to the table, or bytes) and a label column, and a
saved `datasets` folder whose Image feature arrives as {"bytes", "path"}. Every image is decoded once when the data
is loaded (`scan`): what cannot be used (missing, unreadable, tiny, huge) is left out and counted, never a traceback.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ...utils import resolve_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}
DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


class BadImage(Exception):
    """An image that cannot be used; `reason` is one of: missing, unreadable, tiny, huge."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Rows:
    """One source's images before decoding: what to open, what to call it, its label, its other columns."""

    sources: list
    """A path (str) or the encoded bytes, per image."""
    refs: list[str]
    """How reports name each image: its path, or `<table>:row N`."""
    labels: list
    meta: dict[str, list] = field(default_factory=dict)
    """The table's other columns (eval.slice_by reads them)."""
    notes: list[str] = field(default_factory=list)


def open_image(source, max_pixels: int):
    """The decoded image (PIL) in its own mode; BadImage when it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    if source is None or (isinstance(source, float) and np.isnan(source)):
        raise BadImage("missing", "no image in this row")
    if isinstance(source, str) and not Path(source).is_file():
        raise BadImage("missing", "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if img.width * img.height > max_pixels:  # checked on the header, before decoding the pixels
                raise BadImage("huge", f"{img.width}x{img.height} pixels (images.max_pixels {max_pixels:,})")
            img.load()
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise BadImage("unreadable", str(err).splitlines()[0][:120] if str(err) else type(err).__name__) from None
    return img


def to_rgb(img):
    """RGB pixels of any mode: transparency over white, CMYK and palettes converted, 16-bit grey scaled to 8 bits."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(a.max()))
        return Image.fromarray(np.clip(a / hi * 255, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(source, max_pixels: int = 40_000_000):
    """Open + convert: what batches, predictions and reports use (after `scan` accepted the image)."""
    return to_rgb(open_image(source, max_pixels))


class LazyImages:
    """A sequence of RGB images decoded when indexed: one pass over a big split without holding it in memory."""

    def __init__(self, sources: list, max_pixels: int = 40_000_000):
        self.sources, self.max_pixels = sources, max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        return load_rgb(self.sources[i], self.max_pixels)


def rows_of(
    spec: str, images_cfg, data_cfg, meta_columns: list[str] = (), need_labels: bool = True
) -> Rows | dict[str, Rows]:
    """The rows of one data source (a folder or a table); a folder with train/validation/test inside gives each."""
    path = resolve_path(spec)
    if not path.exists():
        raise DataError(
            f"{spec}: not found; check the data.* paths in the config (relative paths start at {Path.cwd()})"
        )
    if path.is_dir() and not any((path / f).exists() for f in DATASET_FILES):
        return _folder(path, spec)
    from ...data.loaders import load_table, require_columns

    table = load_table(spec, data_cfg.format, data_cfg.encoding, data_cfg.encoding_errors, data_cfg.delimiter)
    base = path if path.is_dir() else path.parent
    if isinstance(table, dict):  # a DatasetDict: its own splits
        picked = {k: table[n] for k, names in SPLIT_FOLDERS.items() for n in names if n in table}
        return {
            k: _table(df, f"{spec}[{k}]", base, images_cfg, data_cfg, meta_columns, need_labels)
            for k, df in picked.items()
        }
    require_columns(table, {"image": images_cfg.column}, spec, fix="set images.column")
    return _table(table, spec, base, images_cfg, data_cfg, meta_columns, need_labels)


def _table(df: pd.DataFrame, spec: str, base: Path, images_cfg, data_cfg, meta_columns, need_labels=True) -> Rows:
    from ...data.loaders import label_str, require_columns

    require_columns(df, {"image": images_cfg.column}, spec, fix="set images.column")
    labels = df[data_cfg.label_column].map(label_str).tolist() if data_cfg.label_column in df.columns else None
    if labels is None and not need_labels:
        labels = [None] * len(df)
    if labels is None:
        raise DataError(
            f"{spec}: no label column '{data_cfg.label_column}' (columns: {', '.join(map(str, df.columns[:20]))}); "
            "set data.label_column"
        )
    sources = [_source(v, base) for v in df[images_cfg.column]]
    refs = [
        s if isinstance(s, str) else f"{spec}:row {i + 2 if spec.endswith('.csv') else i + 1}"
        for i, s in enumerate(sources)
    ]
    meta = {c: df[c].astype(str).tolist() for c in meta_columns if c in df.columns}
    return Rows(sources, refs, labels, meta)


def _source(value, base: Path):
    """A path (resolved against the table's folder) or bytes, from a cell (str, bytes, or {"bytes", "path"})."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else base / p)


def _folder(root: Path, spec: str) -> Rows | dict[str, Rows]:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = {d.name.lower(): d for d in subdirs}
    splits = {k: names[n] for k, options in SPLIT_FOLDERS.items() for n in options if n in names}
    if "train" in splits or ("test" in splits and len(splits) == len(subdirs)):
        return {k: _class_folders(d, f"{spec.rstrip('/')}/{d.name}") for k, d in splits.items()}
    return _class_folders(root, spec)


def _class_folders(root: Path, spec: str) -> Rows:
    """`root/<label>/**/<image>`: the label is the first folder under root."""
    sources, labels, ignored = [], [], 0
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in classes:
        for f in sorted(d.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    sources.append(str(f))
                    labels.append(d.name)
                else:
                    ignored += 1
    loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not sources:
        raise DataError(
            f"{spec}: no images in class folders; expected {spec.rstrip('/')}/<label>/*.png (or .jpg, .webp, ...)"
            + (
                f" ({len(loose)} images lie directly in it: move each into a folder named after its label)"
                if loose
                else ""
            )
        )
    notes = [f"{spec}: {ignored} files that are not images were ignored"] if ignored else []
    if loose:
        notes.append(f"{spec}: {len(loose)} images directly in the folder (no label folder) were ignored")
    return Rows(sources, list(sources), labels, {}, notes)


@dataclass
class Scanned:
    """What decoding every image of a source found: the usable rows' keys, sizes and modes, and what was skipped."""

    keep: list[int]
    keys: list[str]
    phashes: np.ndarray
    thumbs: np.ndarray
    sizes: list[tuple[int, int]]
    modes: list[str]
    skipped: dict[str, list[str]]


def scan(rows: Rows, images_cfg, what: str, progress: bool = True) -> Scanned:
    """Decode every image once: content key + perceptual hash (the audit), size and mode; skip or stop on bad ones."""
    from tqdm.auto import tqdm

    from ...data.image_audit import image_keys
    from ...data.image_match import SIDE, thumbnail

    keep, keys, hashes, thumbs, sizes, modes = [], [], [], [], [], []
    skipped: dict[str, list[str]] = {}
    it = tqdm(range(len(rows.sources)), desc=f"images: {what}", unit="img", disable=not progress, leave=False)
    for i in it:
        try:
            img = open_image(rows.sources[i], images_cfg.max_pixels)
            if min(img.size) < images_cfg.min_size:
                raise BadImage("tiny", f"{img.width}x{img.height} (images.min_size {images_cfg.min_size})")
            if rows.labels[i] is None:
                raise BadImage("unlabelled", "no label")
            mode, size = img.mode, img.size
            rgb = to_rgb(img)
            key, ph = image_keys(rgb)
            thumbs.append(thumbnail(rgb))
        except BadImage as bad:
            if images_cfg.bad_images == "error":
                raise DataError(
                    f"{rows.refs[i]}: {bad} ({what}); fix or remove it, or set images.bad_images: skip"
                ) from None
            skipped.setdefault(bad.reason, []).append(f"{rows.refs[i]} ({bad})")
            continue
        keep.append(i)
        keys.append(key)
        hashes.append(ph)
        sizes.append(size)
        modes.append(mode)
    thumbs = np.stack(thumbs) if thumbs else np.zeros((0, SIDE * SIDE), np.float16)
    return Scanned(keep, keys, np.array(hashes, dtype=np.uint64), thumbs, sizes, modes, skipped)


def skipped_note(what: str, skipped: dict[str, list[str]]) -> str | None:
    """One line: how many images of `what` were left out, why, and the first examples."""
    if not skipped:
        return None
    n = sum(len(v) for v in skipped.values())
    why = ", ".join(f"{len(v)} {reason}" for reason, v in skipped.items())
    first = "; ".join(v[0] for v in list(skipped.values())[:3])
    return f"{what}: left out {n} image(s) ({why}; images.bad_images: skip), e.g. {first}"
