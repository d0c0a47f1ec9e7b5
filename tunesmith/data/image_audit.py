"""Image audit: exact and near duplicates, leakage between splits, likely label errors, balance, sizes and modes.

The image counterpart of `tunesmith.data.audit`, same report shape. The loader decodes every image once and calls
`image_keys`; the audit reads only those keys (and the backbone's features, for label errors):

- exact duplicates share the sha256 of their decoded RGB pixels (and size), so a PNG and a lossless WebP of one
  picture match, a grey PNG and its RGB copy match, and metadata never matters;
- near duplicates are within `max_distance` bits of each other's 64-bit perceptual hash (`imagehash.phash`: the
  signs of the low 8x8 DCT of a 32x32 grey thumbnail), which survives re-compression, brightness changes, small
  crops and resizes. Pairs are found by multi-index hashing (the 64 bits are cut into bands; two hashes within d
  bits agree within d // bands bits on at least one band), then verified exactly: a reported pair is never a guess.
Rows are 1-based positions of images in their set; `refs` name them (a path or "row N").
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from math import comb
from typing import Any

import numpy as np

from ..config.schema import AuditConfig
from ..errors import ConfigError
from .audit import DuplicateFindings, Leak
from .image_audit_markdown import ImageAuditReport, ImageStats, pairs_to_show, warnings_of
from .image_match import confirmed
from .label_noise import LabelNoiseFindings, label_errors_from_features

PHASH_DISTANCE = 6
"""Default near-duplicate distance (bits of 64; phash distances are even). Measured on 200 generated 32x32 pictures
(tests/unit/test_image_audit.py): JPEG q60, brightness +-10% and a 2x resize match at 6 bits 99-100% of the time, a
1-px crop + resize 65% (8 bits: 90%); no distinct pair is closer than 14 bits. It is conservative because a near
leak blocks training: for uniform random hashes 8 bits gives ~3 chance pairs among 100k images, 6 bits ~0.05."""
MAX_DISTANCE = 16
"""Beyond this distinct pictures match (a quarter of the bits; distinct pairs sit at 32 +- 4) and the search slows."""
_TABLE_BITS = 24  # bands up to this wide are looked up in a dense table; wider ones by binary search
_CHUNK = 1 << 22  # candidate pairs verified per step


def image_keys(img) -> tuple[str, int]:
    """(exact content key, 64-bit perceptual hash) of a decoded image; cheap enough to call on every image once.

    The key hashes the RGB pixels and the size (not the file), the hash is taken from a 32x32 thumbnail made with
    `reducing_gap` (a box reduction first), so a 4000x3000 photo costs ~10 ms instead of ~170 ms.
    """
    import imagehash
    from PIL import Image

    rgb = img if img.mode == "RGB" else img.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    thumb = rgb.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0).convert("L")
    bits = imagehash.phash(thumb).hash.flatten()
    return digest.hexdigest(), int.from_bytes(np.packbits(bits).tobytes(), "big")


@dataclass
class ImageSet:
    """What one split contributes to the audit (the loader fills it while it decodes)."""

    name: str
    keys: list[str]
    phashes: np.ndarray
    """uint64, one per image."""
    labels: list[int]
    """Positions in `label_names`."""
    sizes: list[tuple[int, int]]
    """(width, height) of each image."""
    modes: list[str]
    """The file's own mode (L, RGB, RGBA, CMYK, P, I;16...), before conversion to RGB."""
    refs: list[str]
    """How each image is named in the report: its path, or "row N"."""
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """Reason -> the images the loader could not use (they are counted, not audited)."""
    source: str = ""
    """Where the set came from (a folder or a table), for the report header."""
    thumbs: np.ndarray | None = None
    """16x16 grey thumbnails (image_match.thumbnail): a hash match counts only where they correlate too."""

    def __post_init__(self) -> None:
        fields = (self.keys, self.phashes, self.labels, self.sizes, self.modes, self.refs)
        if len({len(v) for v in fields}) > 1:
            raise ValueError(f"ImageSet {self.name}: keys, phashes, labels, sizes, modes, refs differ in length")


# ---- near duplicates by perceptual hash: multi-index hashing, verified with popcounts


def _bands(d: int, n_index: int, n_query: int) -> tuple[list[tuple[int, int]], dict[int, np.ndarray]]:
    """The cheapest banding for distance `d`: (shift, width) of each band and, per width, the probe masks.

    With m bands a pair within d bits agrees within t = d // m bits on some band; each query probes every value within
    t flips of its band. Cost: probes (sum of C(w, k), k <= t) per query and band, plus the candidates they collect
    (n_index / 2^w per probe for uniform bits). Few wide bands win for large sets, more bands for small d.
    """
    best = None
    for m in range(1, min(d + 1, 16) + 1):
        widths = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
        t = d // m
        probes = sum(sum(comb(w, k) for k in range(t + 1)) for w in widths)
        cost = probes * n_query * (1 + 4 * n_index / 2 ** min(widths)) + sum(2 ** min(w, _TABLE_BITS) for w in widths)
        if best is None or cost < best[0]:
            best = (cost, widths, t)
    _, widths, t = best
    shifts = np.cumsum([0] + widths[:-1]).tolist()
    masks = {
        w: np.array([sum(1 << b for b in c) for k in range(t + 1) for c in combinations(range(w), k)], np.uint64)
        for w in set(widths)
    }
    return list(zip(shifts, widths)), masks


def _hash_pairs(index: np.ndarray, query: np.ndarray, d: int, self_join: bool) -> tuple[np.ndarray, ...]:
    """(query position, index position, distance) of every verified pair within `d` bits (unique hashes in, i < j
    when `self_join`)."""
    index, query = index.astype(np.uint64), query.astype(np.uint64)
    found_q, found_i = [], []
    if len(index) and len(query):
        bands, masks = _bands(d, len(index), len(query))
        for shift, width in bands:
            low = np.uint64((1 << width) - 1)
            codes, qcodes = (index >> np.uint64(shift)) & low, (query >> np.uint64(shift)) & low
            order = np.argsort(codes, kind="stable")
            if width <= _TABLE_BITS:  # bucket starts in a dense table: a gather instead of a binary search
                start = np.concatenate([[0], np.cumsum(np.bincount(codes.astype(np.int64), minlength=1 << width))])
                locate = lambda p, s=start: (s[p.astype(np.int64)], s[p.astype(np.int64) + 1])
            else:
                ordered = codes[order]
                locate = lambda p, s=ordered: (np.searchsorted(s, p, "left"), np.searchsorted(s, p, "right"))
            for flip in masks[width]:
                lo, hi = locate(qcodes ^ flip)
                for q, i in _expand(lo, hi - lo, order):
                    keep = np.bitwise_count(query[q] ^ index[i]) <= d
                    if self_join:
                        keep &= q < i
                    found_q.append(q[keep])
                    found_i.append(i[keep])
    if not found_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    q, i = np.concatenate(found_q), np.concatenate(found_i)
    code = np.unique(q * len(index) + i)  # a pair close on several bands is found once per band
    q, i = code // len(index), code % len(index)
    return q, i, np.bitwise_count(query[q] ^ index[i]).astype(np.int64)


def _expand(lo: np.ndarray, n: np.ndarray, order: np.ndarray):
    """(query rows, index rows) of every bucket member, in steps of at most ~_CHUNK pairs."""
    rows = np.nonzero(n)[0]
    ends = np.cumsum(n[rows])
    start = 0
    while start < len(rows):
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _CHUNK, "right")))
        r = rows[start:stop]
        size = n[r]
        offsets = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        yield np.repeat(r, size), order[np.repeat(lo[r], size) + offsets]
        start = stop


def near_duplicate_pairs(phashes: np.ndarray, max_distance: int, thumbs=None) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (k, 2) of positions i < j, Hamming distances (k,)) of images within `max_distance` bits.

    Images with one hash value are linked to its first image only (a star, not all pairs: a thousand copies give 999
    pairs), and distinct values are linked through their first images; the connected components are the same.
    """
    values, first, inverse = np.unique(np.asarray(phashes, np.uint64), return_index=True, return_inverse=True)
    q, i, dist = _hash_pairs(values, values, max_distance, self_join=True)
    copies = np.nonzero(first[inverse] != np.arange(len(inverse)))[0]
    a = np.concatenate([first[q], first[inverse[copies]]])
    b = np.concatenate([first[i], copies])
    pairs = np.sort(np.stack([a, b], axis=1), axis=1) if len(a) else np.zeros((0, 2), np.int64)
    pairs, dist = pairs.astype(np.int64), np.concatenate([dist, np.zeros(len(copies), np.int64)])
    if thumbs is not None and len(pairs):
        keep = confirmed(pairs[:, 0], pairs[:, 1], thumbs, thumbs)
        pairs, dist = pairs[keep], dist[keep]
    return pairs, dist


def cross_matches(
    train_phashes: np.ndarray, other_phashes: np.ndarray, max_distance: int, train_thumbs=None, other_thumbs=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(other positions, train positions, distances): for each image of `other` within `max_distance` bits of some
    training image, the nearest one (ties: the first)."""
    t_values, t_first = np.unique(np.asarray(train_phashes, np.uint64), return_index=True)
    o_values, o_inverse = np.unique(np.asarray(other_phashes, np.uint64), return_inverse=True)
    q, i, dist = _hash_pairs(t_values, o_values, max_distance, self_join=False)
    order = np.lexsort((t_first[i], dist, q))  # per query: the nearest, then the first training image
    head = order[np.unique(q[order], return_index=True)[1]]
    best, best_dist = np.full(len(o_values), -1, np.int64), np.zeros(len(o_values), np.int64)
    best[q[head]], best_dist[q[head]] = t_first[i[head]], dist[head]
    other = np.nonzero(best[o_inverse] >= 0)[0]
    train, dist = best[o_inverse[other]], best_dist[o_inverse[other]]
    if train_thumbs is not None and other_thumbs is not None and len(other):
        keep = confirmed(other, train, other_thumbs, train_thumbs)
        other, train, dist = other[keep], train[keep], dist[keep]
    return other, train, dist


def _components(n: int, keys: list[str], pairs: np.ndarray) -> np.ndarray:
    """Component label of each position, linking exact copies (same key) and the given near `pairs`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first: dict[str, int] = {}
    a = np.array([first.setdefault(k, pos) for pos, k in enumerate(keys)], np.int64)
    a, b = np.concatenate([a, pairs[:, 0]]), np.concatenate([np.arange(len(keys)), pairs[:, 1]])
    return connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)[1]


def near_duplicate_groups_images(
    keys: list[str], phashes: np.ndarray, max_distance: int = PHASH_DISTANCE, thumbs=None
) -> np.ndarray:
    """A group id per image (the smallest position of its group): exact copies and near duplicates share one, so a
    split that keeps groups whole leaks neither (`splitting.grouped_split` takes these as `groups`)."""
    labels = _components(len(keys), keys, near_duplicate_pairs(phashes, max_distance, thumbs)[0])
    smallest = np.full(labels.max() + 1 if len(labels) else 0, len(labels), np.int64)
    np.minimum.at(smallest, labels, np.arange(len(labels)))
    return smallest[labels]


# ---- the audit


def audit_images(
    sets: dict[str, ImageSet],
    label_names: list[str],
    cfg: AuditConfig | None = None,
    features: dict[str, np.ndarray] | None = None,
    feature_name: str = "features",
    stop_at_leakage: bool = False,
    *,
    max_distance: int | None = None,
    open_image: Callable[[str, str], Any] | None = None,
) -> ImageAuditReport:
    """Audit the image sets of a run ({"train": ..., "validation": ..., "test": ...}); changes nothing.

    `features`: set name -> one backbone vector per image; `features["train"]` is the label-error model's only view
    (without it the check is skipped, and said so). `max_distance`: near-duplicate bits (default
    `audit.image_hash_distance` when the config has it, else PHASH_DISTANCE). `stop_at_leakage`: a blocking leak
    skips the label-error model (a run refuses to start anyway). `open_image` is kept for `save` (the pairs figure).
    """
    cfg = cfg or AuditConfig()
    cfg.check()
    if "train" not in sets:
        raise ValueError(f"audit_images needs a 'train' set (got {sorted(sets)})")
    d = max_distance if max_distance is not None else int(getattr(cfg, "image_hash_distance", PHASH_DISTANCE))
    if not 0 <= d <= MAX_DISTANCE:
        raise ConfigError(f"image near-duplicate distance {d} must be between 0 and {MAX_DISTANCE} bits (of 64)")
    near = d if cfg.near_duplicates else None
    order = ["train"] + [n for n in sets if n != "train"]
    clock, seconds = time.perf_counter(), {}
    stats = {name: ImageStats.measure(sets[name].sizes, sets[name].modes, sets[name].skipped) for name in order}
    duplicates, shown = {}, []
    for name in order:
        duplicates[name], pairs = _duplicates(sets[name], near, label_names, cfg.max_examples)
        if name == "train":
            shown += pairs
    seconds["duplicates"], clock = round(time.perf_counter() - clock, 3), time.perf_counter()
    leakage = [
        _leak(sets[later], sets[ref], near, label_names, cfg.max_examples)
        for i, later in enumerate(order[1:], start=1)
        for ref in order[:i]
    ]
    shown = pairs_to_show(leakage, shown, cfg.max_examples)
    seconds["leakage"], clock = round(time.perf_counter() - clock, 3), time.perf_counter()

    if not cfg.label_errors:
        noise = LabelNoiseFindings(skipped="disabled (audit.label_errors: false)")
    elif stop_at_leakage and any(k.blocks(cfg) for k in leakage):
        noise = LabelNoiseFindings(skipped="the split leaks (training stops before it matters)")
    elif not features or features.get("train") is None:
        noise = LabelNoiseFindings(skipped="no backbone features were given (the label-error model's only view)")
    else:
        labels = [label_names[y] for y in sets["train"].labels]
        noise = label_errors_from_features(
            features["train"], labels, sets["train"].refs, cfg.label_error_folds, cfg.seed, feature_name,
            cfg.label_error_min_kappa,
        )  # fmt: skip
    seconds["label_errors"] = round(time.perf_counter() - clock, 3)

    balance = {name: dict(Counter(label_names[y] for y in sets[name].labels).most_common()) for name in order}
    sources = {name: sets[name].source or name for name in order}
    skipped = {name: sets[name].skipped for name in order if sets[name].skipped}
    report = ImageAuditReport(sources, stats, duplicates, leakage, noise, balance, [], cfg, d, skipped, shown, seconds)
    report.open_image = open_image
    report.warnings.extend(warnings_of(report, label_names))
    return report


def _duplicates(s: ImageSet, d: int | None, names: list[str], max_examples: int) -> tuple[DuplicateFindings, list]:
    """Exact groups and near clusters of one set (1-based rows), and one pair of each of the first near clusters."""
    f = DuplicateFindings()
    where: dict[str, list[int]] = {}
    for pos, key in enumerate(s.keys):
        where.setdefault(key, []).append(pos + 1)
    f.exact_groups = [rows for rows in where.values() if len(rows) > 1]
    f.redundant_rows = sum(len(g) - 1 for g in f.exact_groups)
    label = lambda row: s.labels[row - 1]
    f.exact_conflicts = [g for g in f.exact_groups if len({label(r) for r in g}) > 1]
    shown = []
    if d is not None and s.keys:
        pairs, dist = near_duplicate_pairs(s.phashes, d, s.thumbs)
        keys = np.array(s.keys)
        distinct = keys[pairs[:, 0]] != keys[pairs[:, 1]]  # a component with two keys holds such a pair
        pairs, dist = pairs[distinct], dist[distinct]
        comp = _components(len(s.keys), s.keys, pairs)
        member = np.isin(comp, comp[pairs[:, 0]])
        grouped = np.nonzero(member)[0][np.argsort(comp[member], kind="stable")]
        splits = np.nonzero(np.diff(comp[grouped]))[0] + 1
        f.near_clusters = sorted((g + 1).tolist() for g in np.split(grouped, splits)) if len(grouped) else []
        f.near_conflicts = [c for c in f.near_clusters if len({label(r) for r in c}) > 1]
        seen: set[int] = set()
        for k in np.lexsort((pairs[:, 0], dist)):
            c = int(comp[pairs[k, 0]])
            if len(shown) == max_examples:
                break
            if c not in seen:
                seen.add(c)
                a, b = (int(x) for x in pairs[k])
                shown.append(
                    {"set": s.name, "row": a + 1, "ref": s.refs[a], "label": names[s.labels[a]], "other_set": s.name,
                     "other_row": b + 1, "other_ref": s.refs[b], "other_label": names[s.labels[b]], "kind": "near",
                     "distance": int(dist[k])}
                )  # fmt: skip
    for cluster in (f.exact_groups + f.near_clusters)[:max_examples]:
        f.examples.append([f"[row {r}, {names[label(r)]}] {s.refs[r - 1]}" for r in cluster[:5]])
    return f, shown


def _leak(later: ImageSet, ref: ImageSet, d: int | None, names: list[str], max_examples: int) -> Leak:
    """Every image of `later` that is an exact copy or (with `d`) a near duplicate of an image of `ref`."""
    first = {key: pos for pos, key in reversed(list(enumerate(ref.keys)))}
    found = {pos: (first[k], "exact", 0) for pos, k in enumerate(later.keys) if k in first}
    if d is not None and len(found) < len(later.keys):
        rest = np.array([p for p in range(len(later.keys)) if p not in found], np.int64)
        thumbs = later.thumbs[rest] if later.thumbs is not None else None
        other, train, dist = cross_matches(ref.phashes, np.asarray(later.phashes)[rest], d, ref.thumbs, thumbs)
        found.update({int(rest[o]): (int(t), "near", int(k)) for o, t, k in zip(other, train, dist)})
    leak = Leak(later.name, ref.name, rows_checked=len(later.keys))
    for n, pos in enumerate(sorted(found)):
        t, kind, dist = found[pos]
        pair = dict(row=pos + 1, reference_row=t + 1, kind=kind, similarity=round(1 - dist / 64, 3), distance=dist)
        if n < max_examples:
            pair.update(ref=later.refs[pos], reference_ref=ref.refs[t])
            pair.update(label=names[later.labels[pos]], reference_label=names[ref.labels[t]])
        leak.pairs.append(pair)
    return leak
