"""Image splits: load every source, decode-check each image, unify labels, split off what is missing.

Validation/test sets split from the training data are stratified by label and, by default, keep exact and
near duplicates (same pixels; perceptual hashes within audit.image_hash_distance) on one side, so the split
itself cannot leak a picture into the test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...errors import DataError
from ...utils import fingerprint
from .sources import Rows, Scanned, rows_of, scan, skipped_note


@dataclass
class ImageSplit:
    name: str
    sources: list
    refs: list[str]
    labels: list[int]
    keys: list[str]
    phashes: np.ndarray
    thumbs: np.ndarray
    sizes: list[tuple[int, int]]
    modes: list[str]
    meta: dict[str, list] = field(default_factory=dict)
    source: str = ""
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sources)

    def fingerprint(self) -> str:
        """The pixels' content keys and the labels: renaming or re-encoding losslessly keeps it."""
        return fingerprint(self.keys, self.labels)

    def take(self, rows, name: str | None = None, source: str | None = None) -> ImageSplit:
        rows = list(rows)
        return ImageSplit(
            name or self.name,
            [self.sources[r] for r in rows],
            [self.refs[r] for r in rows],
            [self.labels[r] for r in rows],
            [self.keys[r] for r in rows],
            self.phashes[rows] if len(rows) else np.zeros(0, dtype=np.uint64),
            self.thumbs[rows] if len(rows) else self.thumbs[:0],
            [self.sizes[r] for r in rows],
            [self.modes[r] for r in rows],
            {k: [v[r] for r in rows] for k, v in self.meta.items()},
            source or self.source,
            self.skipped,
        )


@dataclass
class ImageSplits:
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    label_names: list[str]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            s.name: {"rows": len(s), "fingerprint": s.fingerprint(), "source": s.source}
            for s in (self.train, self.validation, self.test)
        }

    def by_name(self) -> dict[str, ImageSplit]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def _scanned(rows: Rows, name: str, src: str, images_cfg, progress: bool) -> ImageSplit:
    s: Scanned = scan(rows, images_cfg, src, progress)
    k = s.keep
    return ImageSplit(
        name,
        [rows.sources[i] for i in k],
        [rows.refs[i] for i in k],
        [rows.labels[i] for i in k],  # strings until the label names are known
        s.keys,
        s.phashes,
        s.thumbs,
        s.sizes,
        s.modes,
        {c: [v[i] for i in k] for c, v in rows.meta.items()},
        src,
        s.skipped,
    )


def load_image_splits(cfg, progress: bool = True) -> ImageSplits:
    """The configured images as train/validation/test with label ids (cfg: the whole Config)."""
    d, im = cfg.data, cfg.images
    meta_columns = [*cfg.eval.slice_by, *([cfg.eval.sensitive_column] if cfg.eval.sensitive_column else [])]
    notes: list[str] = []
    found: dict[str, tuple[Rows, str]] = {}
    specs = {"train": d.path} if d.path else {k: getattr(d, k) for k in ("train", "validation", "test")}
    for name, spec in specs.items():
        if not spec:
            continue
        got = rows_of(spec, im, d, meta_columns)
        if isinstance(got, dict):
            if d.path is None:
                raise DataError(f"{spec}: holds train/validation/test itself; give it as data.path")
            if "train" not in got:
                raise DataError(f"{spec}: has no train split (found {', '.join(got) or 'none'})")
            found.update({k: (r, f"{spec.rstrip('/')}/{k}") for k, r in got.items()})
        else:
            found[name] = (got, spec)
    splits: dict[str, ImageSplit] = {}
    for name, (rows, src) in found.items():
        notes.extend(rows.notes)
        split = _scanned(rows, name, src, im, progress)
        if note := skipped_note(src, split.skipped):
            notes.append(note)
        if not len(split):
            raise DataError(f"{src}: none of its {len(rows.sources)} images could be used ({note})")
        splits[name] = split
    for name in [c for c in meta_columns if c not in {"size", "brightness"}]:
        if any(name not in s.meta for s in splits.values()):
            raise DataError(f"eval.slice_by: no column '{name}' in the image data; use size, brightness or a column")

    names, merged = _label_names(cfg, splits)
    notes.extend(merged)
    index = {n: i for i, n in enumerate(names)}
    for s in splits.values():
        s.labels = [index[y] if y in index else y for y in s.labels]
    train = splits["train"]
    if d.max_samples and len(train) > d.max_samples and len(splits) == 1:
        train = train.take(_stratified(train.labels, d.max_samples, cfg.seed), source=train.source)
        notes.append(f"subsampled {train.source} to {d.max_samples} images (stratified, seed {cfg.seed})")
    groups = None
    if d.group_near_duplicates and not {"validation", "test"} <= set(splits):
        from ...data.image_audit import near_duplicate_groups_images

        groups = near_duplicate_groups_images(train.keys, train.phashes, cfg.audit.image_hash_distance, train.thumbs)
        if len(set(groups)) < len(groups):
            notes.append(f"split so that exact and near-duplicate images stay on one side ({len(set(groups))} groups)")
    carved = 0.0
    if "test" not in splits:
        train, splits["test"], groups = _split_off(train, d.test_size, cfg.seed, "test", groups)
        carved = d.test_size
    if "validation" not in splits:
        share = d.validation_size / (1 - carved)
        train, splits["validation"], groups = _split_off(train, share, cfg.seed + 1, "validation", groups)
    splits["train"] = train
    for name in ("validation", "test"):
        unseen = sorted({y for y in splits[name].labels if isinstance(y, str)})
        if unseen:
            raise DataError(
                f"{splits[name].source}: labels {unseen} do not occur in the training images ({train.source}); "
                "add training images for them or remove those"
            )
    if len(set(train.labels)) < 2:
        raise DataError(f"{train.source}: every training image has one label; classification needs at least 2")
    return ImageSplits(splits["train"], splits["validation"], splits["test"], names, notes)


def _label_names(cfg, splits: dict[str, ImageSplit]) -> tuple[list[str], list[str]]:
    """The label order (data.labels, else sorted) and notes on merged spelling variants (data.normalize_labels)."""
    from ...data.loaders import unify_labels
    from ...data.splits import label_names

    series = {k: pd.Series(s.labels, dtype=object) for k, s in splits.items()}
    unified, merged = unify_labels(series, cfg.data.normalize_labels, cfg.data.labels, splits["train"].source)
    for k, s in splits.items():
        s.labels = unified[k].tolist()
    return label_names(cfg.data, set(splits["train"].labels), splits["train"].source), merged


def _stratified(labels: list[int], n: int, seed: int) -> list[int]:
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=labels)
    return sorted(keep.tolist())


def _split_off(split: ImageSplit, share: float, seed: int, what: str, groups):
    """(rest, split off, groups of rest), stratified by label; with groups, no group is cut in two."""
    from ...data.splitting import grouped_split

    if share <= 0:
        raise DataError(f"{split.source}: no {what} set: give data.{what} or a positive data.{what}_size")
    counts = pd.Series(split.labels).value_counts()
    if (counts < 2).any():
        raise DataError(
            f"{split.source}: label(s) {counts[counts < 2].index.tolist()} have one image only; a stratified {what} "
            "split needs at least 2 per label; add images or remove those"
        )
    table = pd.DataFrame({"label": split.labels, "row": np.arange(len(split))})
    rest, off, rest_groups = grouped_split(table, share, groups, seed, split.source, what)
    src = f"{split.source} (split {share:.0%})" if what == "test" else f"{split.source} (split)"
    return (
        split.take(rest["row"].tolist(), "train"),
        split.take(off["row"].tolist(), what, src),
        rest_groups,
    )
