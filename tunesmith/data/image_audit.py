"""Image audit: exact and near duplicates, leakage between splits, likely label errors, balance, sizes and modes.

The image counterpart of `tunesmith.data.audit`, with the same report shape (counts, blocking, warnings, Markdown,
JSON). The loader decodes every image once and calls `image_keys`; the audit itself reads only those keys:

- exact duplicates share the sha256 of their decoded RGB pixels (and size), so a PNG and a lossless WebP of one
  picture match, a grey PNG and its RGB copy match, and metadata never matters;
- near duplicates are within `max_distance` bits of each other's 64-bit perceptual hash (`imagehash.phash`: the
  signs of the low 8x8 DCT of a 32x32 grey thumbnail), which survives re-compression, brightness changes, small
  crops and resizes. Pairs are found by multi-index hashing (the 64 bits are cut into bands; two hashes within d
  bits agree within d // bands bits on at least one band), then verified exactly: a reported pair is never a guess.

Label errors come from cleanlab on out-of-fold probabilities of a logistic regression on the backbone's features
(the lead computes them; images have no words for the text audit's TF-IDF view). Rows are 1-based positions of
images in their set; `refs` name them (a path or "row N").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ..config.schema import AuditConfig
from ..utils import atomic_write_text
from .audit import DuplicateFindings, Leak
from .image_audit_markdown import render, save_pairs_figure, warnings_of
from .label_noise import LabelIssue, LabelNoiseFindings

PHASH_DISTANCE = 6
"""Default near-duplicate distance (bits of 64). Measured on the planted tests: JPEG q=60, brightness +-15% and a
5% crop + resize stay within 0-6 bits; distinct pictures sit at 32 +- 4 bits, none of 20k pairs below 14."""
TINY_SIDE = 32
"""Images whose shorter side is below this are tiny: upscaled to the model's input, they carry little."""
LARGE_PIXELS = 25_000_000
"""Images above this many pixels are large: slow to decode in every epoch (consider resizing them once)."""
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


# ---- near duplicates by perceptual hash: multi-index hashing, verified with popcounts


def _bands(d: int, n_index: int, n_query: int) -> tuple[list[tuple[int, int]], np.ndarray | list]:
    """The cheapest banding for distance `d`: (shift, width) of each band and, per width, the probe masks.

    With m bands a pair within d bits agrees within t = d // m bits on some band; each query probes every value within
    t flips of its band. Cost: probes (sum of C(w, k), k <= t) per query and band, plus the candidates they collect
    (n_index / 2^w per probe for uniform bits). Few wide bands win for large sets, more bands for small d.
    """
    best = None
    for m in range(1, min(d + 1, 16) + 1):
        widths = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
        t = d // m
        probes = sum(sum(_comb(w, k) for k in range(t + 1)) for w in widths)
        cost = probes * n_query * (1 + 4 * n_index / 2 ** min(widths)) + sum(2 ** min(w, _TABLE_BITS) for w in widths)
        if best is None or cost < best[0]:
            best = (cost, widths, t)
    _, widths, t = best
    shifts = np.cumsum([0] + widths[:-1]).tolist()
    masks = {w: np.array([sum(1 << b for b in c) for k in range(t + 1) for c in combinations(range(w), k)], np.uint64)
             for w in set(widths)}
    return list(zip(shifts, widths)), masks


def _comb(n: int, k: int) -> int:
    from math import comb

    return comb(n, k)


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
            if width <= _TABLE_BITS:
                start = np.concatenate([[0], np.cumsum(np.bincount(codes.astype(np.int64), minlength=1 << width))])
            else:
                ordered = codes[order]
            for flip in masks[width]:
                probe = qcodes ^ flip
                if width <= _TABLE_BITS:
                    lo = start[probe.astype(np.int64)]
                    n = start[probe.astype(np.int64) + 1] - lo
                else:
                    lo = np.searchsorted(ordered, probe, "left")
                    n = np.searchsorted(ordered, probe, "right") - lo
                for q, i in _expand(lo, n, order):
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


def near_duplicate_pairs(phashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
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
    return pairs.astype(np.int64), np.concatenate([dist, np.zeros(len(copies), np.int64)])


def cross_matches(
    train_phashes: np.ndarray, other_phashes: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(other positions, train positions, distances): for each image of `other` within `max_distance` bits of some
    training image, the nearest one (ties: the first)."""
    t_values, t_first = np.unique(np.asarray(train_phashes, np.uint64), return_index=True)
    o_values, o_inverse = np.unique(np.asarray(other_phashes, np.uint64), return_inverse=True)
    q, i, dist = _hash_pairs(t_values, o_values, max_distance, self_join=False)
    best = np.full(len(o_values), -1, np.int64)
    best_dist = np.full(len(o_values), max_distance + 1, np.int64)
    for k in np.lexsort((t_first[i], dist))[::-1]:  # nearest last, so it wins
        best[q[k]], best_dist[q[k]] = t_first[i[k]], dist[k]
    other = np.nonzero(best[o_inverse] >= 0)[0]
    return other, best[o_inverse[other]], best_dist[o_inverse[other]]


def _components(n: int, keys: list[str], pairs: np.ndarray) -> np.ndarray:
    """Component label of each position, linking exact copies (same key) and the given near `pairs`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first: dict[str, int] = {}
    a = np.array([first.setdefault(k, pos) for pos, k in enumerate(keys)], np.int64)
    a, b = np.concatenate([a, pairs[:, 0]]), np.concatenate([np.arange(len(keys)), pairs[:, 1]])
    return connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)[1]


def near_duplicate_groups_images(keys: list[str], phashes: np.ndarray, max_distance: int = PHASH_DISTANCE) -> np.ndarray:
    """A group id per image (the smallest position of its group): exact copies and near duplicates share one, so a
    split that keeps groups whole leaks neither (`splitting.grouped_split` takes these as `groups`)."""
    labels = _components(len(keys), keys, near_duplicate_pairs(phashes, max_distance)[0])
    smallest = np.full(labels.max() + 1 if len(labels) else 0, len(labels), np.int64)
    np.minimum.at(smallest, labels, np.arange(len(labels)))
    return smallest[labels]


# ---- the report


@dataclass
class ImageStats:
    images: int
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason -> images the loader left out."""
    width: dict[str, float] = field(default_factory=dict)
    """min, median, max."""
    height: dict[str, float] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    tiny: list[int] = field(default_factory=list)
    """Rows whose shorter side is below TINY_SIDE."""
    large: list[int] = field(default_factory=list)
    """Rows with more than LARGE_PIXELS pixels."""


@dataclass
class ImageAuditReport:
    sources: dict[str, str]
    stats: dict[str, ImageStats]
    duplicates: dict[str, DuplicateFindings]
    leakage: list[Leak]
    label_noise: LabelNoiseFindings
    balance: dict[str, dict[str, int]]
    """Set name -> label -> images (most common first)."""
    warnings: list[str]
    config: AuditConfig
    max_distance: int
    """Near-duplicate distance used (bits of the 64-bit perceptual hash)."""
    skipped: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Set name -> reason -> examples of images left out by the loader."""
    pairs: list[dict] = field(default_factory=list)
    """The pairs worth seeing (leaked, then near duplicates in train): {set, row, ref, other_set, other_row, other_ref,
    kind, distance}; the first 8 go into `<stem>_pairs.png`."""
    seconds: dict[str, float] = field(default_factory=dict)
    open_image: Callable[[str, str], Any] | None = field(default=None, repr=False, compare=False)
    """(set name, ref) -> PIL image, for the pairs figure."""

    @property
    def blocking(self) -> list[str]:
        """One-line messages of the problems that should stop training: leakage, as in the text audit."""
        out = []
        for leak in (k for k in self.leakage if k.blocks(self.config)):
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(leak.counts().items()))
            first = "; ".join(
                f"{leak.set} {p.get('ref', 'row %d' % p['row'])} ~ {leak.reference} "
                f"{p.get('reference_ref', 'row %d' % p['reference_row'])}"
                for p in leak.pairs[:3]
            )
            out.append(
                f"leakage: {len(leak.pairs)} of {leak.rows_checked} {leak.set} images ({leak.share:.1%}) also occur in "
                f"{leak.reference} ({kinds}), e.g. {first}; remove them from {leak.set} (or re-split: exact and near "
                f"duplicates then stay on one side) or set audit.block_on_leakage: false"
            )
        return out

    def counts(self) -> dict[str, Any]:
        """Headline numbers, flat, for logs and trackers (names as in the text audit where the meaning is the same)."""
        out: dict[str, Any] = {}
        for name, s in self.stats.items():
            out[f"{name}.rows"] = s.images
            out[f"{name}.skipped"] = sum(s.skipped.values())
            out[f"{name}.tiny_images"] = len(s.tiny)
            out[f"{name}.large_images"] = len(s.large)
            if s.images:
                out[f"{name}.width_median"], out[f"{name}.height_median"] = s.width["median"], s.height["median"]
        for name, d in self.duplicates.items():
            out[f"{name}.exact_duplicate_rows"] = d.redundant_rows
            out[f"{name}.exact_conflicts"] = len(d.exact_conflicts)
            out[f"{name}.near_duplicate_clusters"] = len(d.near_clusters)
            out[f"{name}.near_conflicts"] = len(d.near_conflicts)
        leaked: dict[str, set] = {}
        for leak in self.leakage:
            out[f"leakage.{leak.set}_in_{leak.reference}"] = len(leak.pairs)
            leaked.setdefault(leak.set, set()).update(p["row"] for p in leak.pairs)
        out.update({f"{name}.leaked_rows": len(rows) for name, rows in leaked.items()})
        train = self.balance.get("train", {})
        if len(train) > 1:
            out["train.imbalance_ratio"] = round(max(train.values()) / min(train.values()), 3)
        out["label_issues"] = len(self.label_noise.issues)
        out["blocking"] = len(self.blocking)
        return out

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name != "open_image":
                value = getattr(self, f.name)
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _plain(value)
        out["blocking"] = self.blocking
        out["counts"] = self.counts()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self, pairs_png: str | None = None) -> str:
        return render(self, pairs_png)

    def save(
        self, folder: Path, stem: str = "audit", open_image: Callable[[str, str], Any] | None = None
    ) -> tuple[Path, ...]:
        """Write `<stem>.md`, `<stem>.json` and, when there are pairs and images to open, `<stem>_pairs.png`."""
        folder = Path(folder)
        opener = open_image or self.open_image
        written = []
        png = folder / f"{stem}_pairs.png"
        if self.pairs and opener is not None and save_pairs_figure(self.pairs[:8], opener, png):
            written.append(png)
        md, js = folder / f"{stem}.md", folder / f"{stem}.json"
        atomic_write_text(md, self.to_markdown(png.name if written else None))
        atomic_write_text(js, self.to_json())
        return (md, js, *written)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


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
    `audit.image_near_distance` when the config has it, else PHASH_DISTANCE). `stop_at_leakage`: a blocking leak
    skips the label-error model (a run refuses to start anyway). `open_image` is kept for `save` (the pairs figure).
    """
    cfg = cfg or AuditConfig()
    cfg.check()
    if "train" not in sets:
        raise ValueError(f"audit_images needs a 'train' set (got {sorted(sets)})")
    d = max_distance if max_distance is not None else int(getattr(cfg, "image_near_distance", PHASH_DISTANCE))
    near = d if cfg.near_duplicates else None
    order = ["train"] + [n for n in sets if n != "train"]
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(seconds.get(stage, 0.0) + now - clock, 3)
        clock = now

    stats = {name: _stats(sets[name]) for name in order}
    duplicates, shown = {}, []
    for name in order:
        duplicates[name], pairs = _duplicates(sets[name], near, label_names, cfg.max_examples)
        if name == "train":
            shown += pairs
    lap("duplicates")
    leakage = [
        _leak(sets[later], sets[ref], near, label_names, cfg.max_examples)
        for i, later in enumerate(order[1:], start=1)
        for ref in order[:i]
    ]
    leaks = [dict(p, set=k.set, other_set=k.reference) for k in leakage for p in k.pairs[: cfg.max_examples]]
    shown = sorted(leaks, key=lambda p: p["kind"] != "near") + shown  # near leaks first: exact copies look alike
    lap("leakage")

    if not cfg.label_errors:
        noise = LabelNoiseFindings(skipped="disabled (audit.label_errors: false)")
    elif stop_at_leakage and any(k.blocks(cfg) for k in leakage):
        noise = LabelNoiseFindings(skipped="the split leaks (training stops before it matters)")
    elif not features or features.get("train") is None:
        noise = LabelNoiseFindings(skipped="no backbone features were given (the label-error model's only view)")
    else:
        train = sets["train"]
        noise = label_errors_from_features(
            np.asarray(features["train"]),
            [label_names[y] for y in train.labels],
            list(range(1, len(train.labels) + 1)),
            train.refs,
            cfg.label_error_folds,
            cfg.seed,
            feature_name=feature_name,
            min_kappa=cfg.label_error_min_kappa,
        )
    lap("label_errors")

    balance = {name: dict(Counter(label_names[y] for y in sets[name].labels).most_common()) for name in order}
    report = ImageAuditReport(
        sources={name: sets[name].source or name for name in order},
        stats=stats,
        duplicates=duplicates,
        leakage=leakage,
        label_noise=noise,
        balance=balance,
        warnings=[],
        config=cfg,
        max_distance=d,
        skipped={name: sets[name].skipped for name in order if sets[name].skipped},
        pairs=[_pair_fields(p) for p in shown[: cfg.max_examples]],
        seconds=seconds,
        open_image=open_image,
    )
    report.warnings.extend(warnings_of(report, label_names))
    return report


def _stats(s: ImageSet) -> ImageStats:
    out = ImageStats(images=len(s.keys), skipped={reason: len(v) for reason, v in s.skipped.items()})
    if s.sizes:
        w, h = (np.array(v, np.int64) for v in zip(*s.sizes))
        out.width = {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())}
        out.height = {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())}
        out.tiny = (np.nonzero(np.minimum(w, h) < TINY_SIDE)[0] + 1).tolist()
        out.large = (np.nonzero(w * h > LARGE_PIXELS)[0] + 1).tolist()
    out.modes = dict(Counter(s.modes).most_common())
    return out


def _duplicates(s: ImageSet, d: int | None, names: list[str], max_examples: int) -> tuple[DuplicateFindings, list]:
    """Exact groups and near clusters of one set (1-based rows), and one pair of each of the first near clusters."""
    f = DuplicateFindings()
    where: dict[str, list[int]] = {}
    for pos, key in enumerate(s.keys):
        where.setdefault(key, []).append(pos + 1)
    f.exact_groups = [rows for rows in where.values() if len(rows) > 1]
    f.redundant_rows = sum(len(g) - 1 for g in f.exact_groups)
    label = lambda row: s.labels[row - 1]  # noqa: E731
    f.exact_conflicts = [g for g in f.exact_groups if len({label(r) for r in g}) > 1]
    shown = []
    if d is not None and s.keys:
        pairs, dist = near_duplicate_pairs(s.phashes, d)
        keys = np.array(s.keys)
        distinct = keys[pairs[:, 0]] != keys[pairs[:, 1]]  # a component with two keys holds such a pair
        pairs, dist = pairs[distinct], dist[distinct]
        comp = _components(len(s.keys), s.keys, pairs)
        for c in dict.fromkeys(comp[np.sort(pairs[:, 0])].tolist()):
            f.near_clusters.append((np.nonzero(comp == c)[0] + 1).tolist())
        f.near_clusters.sort()
        f.near_conflicts = [c for c in f.near_clusters if len({label(r) for r in c}) > 1]
        seen: set[int] = set()
        for k in np.lexsort((pairs[:, 0], dist)):
            c = int(comp[pairs[k, 0]])
            if c not in seen and len(shown) < max_examples:
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
    first: dict[str, int] = {}
    for pos, key in enumerate(ref.keys):
        first.setdefault(key, pos)
    found = {pos: (first[k], "exact", 0) for pos, k in enumerate(later.keys) if k in first}
    if d is not None and len(found) < len(later.keys):
        rest = np.array([p for p in range(len(later.keys)) if p not in found], np.int64)
        other, train, dist = cross_matches(ref.phashes, np.asarray(later.phashes)[rest], d)
        found.update({int(rest[o]): (int(t), "near", int(k)) for o, t, k in zip(other, train, dist)})
    leak = Leak(later.name, ref.name, rows_checked=len(later.keys))
    for n, pos in enumerate(sorted(found)):
        t, kind, dist = found[pos]
        pair = {"row": pos + 1, "reference_row": t + 1, "kind": kind, "similarity": round(1 - dist / 64, 3)}
        pair["distance"] = dist
        if n < max_examples:
            pair.update(ref=later.refs[pos], reference_ref=ref.refs[t])
            pair.update(label=names[later.labels[pos]], reference_label=names[ref.labels[t]])
        leak.pairs.append(pair)
    return leak


def _pair_fields(p: dict) -> dict:
    """A leak pair or a near pair in the one shape the figure and the Markdown read."""
    if "reference_row" not in p:
        return p
    return {
        "set": p["set"], "row": p["row"], "ref": p["ref"], "label": p["label"], "other_set": p["other_set"],
        "other_row": p["reference_row"], "other_ref": p["reference_ref"], "other_label": p["reference_label"],
        "kind": f"leak ({p['kind']})", "distance": p["distance"],
    }  # fmt: skip


def label_errors_from_features(
    features: np.ndarray,
    labels: list[str],
    rows: list[int],
    refs: list[str],
    folds: int,
    seed: int,
    feature_name: str = "features",
    min_kappa: float = 0.75,
) -> LabelNoiseFindings:
    """`label_noise.find_label_errors` with the features as the only view (it always adds TF-IDF of texts, and image
    refs are paths whose folder names would give the labels away). Same filter, ranking, kappa gate and fields."""
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows for {len(labels)} training images")
    counts = Counter(labels)
    rare = sorted(name for name, n in counts.items() if n < folds)
    keep = [i for i, v in enumerate(labels) if counts[v] >= folds]
    names = sorted({labels[i] for i in keep})
    if len(names) < 2:
        why = f"labels {rare} have fewer than {folds} images (one per fold)" if rare else "fewer than 2 labels"
        return LabelNoiseFindings(checked_rows=0, skipped=why)
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[labels[i]] for i in keep], dtype=int)
    x = np.asarray(features, np.float64)[keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # unit length, C=1: as label_noise measured
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(C=1.0, max_iter=2000), x, y, cv=cv, method="predict_proba", n_jobs=1)
    predicted = probs.argmax(axis=1)
    ranked = find_label_issues(
        y, probs, filter_by="prune_by_class", return_indices_ranked_by="self_confidence", n_jobs=1
    )
    estimated, kappa = int(num_label_issues(y, probs)), float(cohen_kappa_score(y, predicted))
    accuracy = round(float((predicted == y).mean()), 4)
    found = LabelNoiseFindings(
        checked_rows=len(keep),
        folds=folds,
        model=feature_name,
        model_accuracy=accuracy,
        view_accuracy={feature_name: accuracy},
        kappa=round(kappa, 4),
        estimated_errors=estimated,
        estimated_precision=round(min(1.0, estimated / len(ranked)), 3) if len(ranked) else None,
        excluded_labels=rare,
    )
    if min_kappa > 0 and kappa < min_kappa:
        found.withheld = (
            f"the out-of-fold model is too weak to tell a wrong label from a hard example (accuracy "
            f"{accuracy:.2f}, kappa {kappa:.2f} < audit.label_error_min_kappa {min_kappa})"
        )
        found.withheld_count = len(ranked)
        return found
    found.issues = [
        LabelIssue(rows[keep[i]], names[y[i]], names[int(predicted[i])], round(float(probs[i, y[i]]), 4), refs[keep[i]])
        for i in ranked
    ]
    return found
