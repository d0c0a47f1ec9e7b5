"""The report side of the image audit: `ImageAuditReport` (counts, blocking messages, JSON), its warnings, its
Markdown view and the figure of pairs to look at.

A person decides from these whether the data is fit to train on, so every finding names its first images (their
paths) and the figure puts the suspected copies side by side: a near duplicate is judged faster by eye than by bits.
`image_audit` computes the findings and imports this module, not the other way round.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config.schema import AuditConfig
from ..utils import atomic_write_figure, atomic_write_text
from .audit import DuplicateFindings, Leak
from .label_noise import LabelNoiseFindings

TINY_SIDE = 32
"""Images whose shorter side is below this are tiny: upscaled to the model's input, they carry little."""
LARGE_PIXELS = 25_000_000
"""Images above this many pixels are large: slow to decode in every epoch (consider resizing them once)."""


@dataclass
class ImageStats:
    """Sizes and modes of one set: tiny images carry little, huge ones slow every epoch, odd modes get converted."""

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

    @classmethod
    def measure(cls, sizes: list[tuple[int, int]], modes: list[str], skipped: dict[str, list]) -> ImageStats:
        out = cls(images=len(sizes), skipped={reason: len(v) for reason, v in skipped.items()})
        if sizes:
            w, h = (np.array(v, np.int64) for v in zip(*sizes))
            out.width = {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())}
            out.height = {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())}
            out.tiny = (np.nonzero(np.minimum(w, h) < TINY_SIDE)[0] + 1).tolist()
            out.large = (np.nonzero(w * h > LARGE_PIXELS)[0] + 1).tolist()
        out.modes = dict(Counter(modes).most_common())
        return out


@dataclass
class ImageAuditReport:
    """What `image_audit.audit_images` found; the same methods as the text audit's `AuditReport`."""

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
                f"{leak.set} {p['ref']} ~ {leak.reference} {p['reference_ref']}" for p in leak.pairs[:3] if "ref" in p
            )
            out.append(
                f"leakage: {len(leak.pairs)} of {leak.rows_checked} {leak.set} images ({leak.share:.1%}) also occur in "
                f"{leak.reference} ({kinds}){', e.g. ' + first if first else ''}; remove them from {leak.set} (or "
                "re-split: exact and near duplicates then stay on one side) or set audit.block_on_leakage: false"
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


def render(r: ImageAuditReport, pairs_png: str | None = None) -> str:
    n = r.config.max_examples
    out = ["# Image data audit", ""]
    out += [f"- **{name}**: {r.sources[name]} ({s.images} images)" for name, s in r.stats.items()]
    out += ["- rows are 1-based positions of the images in their set", ""]
    out += ["## Verdict", ""]
    out += [f"- **BLOCKING** {msg}" for msg in r.blocking] or ["- nothing blocks training"]
    out += [f"- {w}" for w in r.warnings] + [""]

    out += [
        "## Images",
        "",
        "| set | images | skipped | width min/median/max | height min/median/max | modes | tiny | large |",
        "|---|---:|---:|---|---|---|---:|---:|",
    ]
    for name, s in r.stats.items():
        w = "/".join(f"{s.width[k]:g}" for k in ("min", "median", "max")) if s.width else "-"
        h = "/".join(f"{s.height[k]:g}" for k in ("min", "median", "max")) if s.height else "-"
        modes = ", ".join(f"{m} {k}" for m, k in s.modes.items()) or "-"
        out.append(
            f"| {name} | {s.images} | {sum(s.skipped.values())} | {w} | {h} | {modes} | {_rows(s.tiny)} | "
            f"{_rows(s.large)} |"
        )
    for name, reasons in r.skipped.items():
        for reason, examples in reasons.items():
            out.append(f"\n{name}: {len(examples)} left out ({reason}), e.g. " + "; ".join(examples[:3]))
    out.append("")

    out += [
        "## Duplicates",
        "",
        "Exact: the same decoded RGB pixels (whatever the file format, mode or metadata). Near: perceptual hashes "
        f"(pHash, 64 bits) at most {r.max_distance} bits apart" + ("" if r.config.near_duplicates else " (disabled)"),
        "",
        "| set | exact groups | redundant images | conflicting exact | near clusters | near images | conflicting near |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in r.duplicates.items():
        out.append(
            f"| {name} | {len(d.exact_groups)} | {d.redundant_rows} | {len(d.exact_conflicts)} | "
            f"{len(d.near_clusters)} | {sum(map(len, d.near_clusters))} | {len(d.near_conflicts)} |"
        )
    for name, d in r.duplicates.items():
        if d.exact_conflicts or d.near_conflicts:
            groups = "; ".join(str(g) for g in (d.exact_conflicts + d.near_conflicts)[:n])
            out += ["", f"Same picture, different labels in {name} (rows): {groups}"]
        if d.examples:
            out += ["", f"<details><summary>{name}: first {len(d.examples)} groups</summary>", ""]
            for group in d.examples:
                out += [f"- {group[0]}"] + [f"  - {t}" for t in group[1:]]
            out += ["", "</details>"]
    out.append("")

    out += ["## Leakage", ""]
    if not r.leakage:
        out.append("Only one set was given: nothing to compare.")
    for leak in r.leakage:
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(leak.counts().items())) or "none"
        out.append(
            f"- **{leak.set} vs {leak.reference}**: {len(leak.pairs)} of {leak.rows_checked} images "
            f"({leak.share:.1%}) leak ({kinds})"
        )
        for p in leak.pairs[:n]:
            out.append(
                f"  - {leak.set} row {p['row']} {p.get('ref', '')} ({p.get('label', '')}) ~ {leak.reference} row "
                f"{p['reference_row']} {p.get('reference_ref', '')} ({p.get('reference_label', '')}): {p['kind']}, "
                f"{p['distance']} bits"
            )
    if pairs_png:
        out += ["", f"First pairs side by side: ![pairs]({pairs_png})"]
    out.append("")

    out += _label_errors(r.label_noise, n)
    out += ["## Class balance", ""]
    labels = list(dict.fromkeys(y for counts in r.balance.values() for y in counts))
    out += ["| label | " + " | ".join(r.balance) + " |", "|---|" + "---:|" * len(r.balance)]
    for y in labels:
        cells = [_share(c.get(y, 0), sum(c.values())) for c in r.balance.values()]
        out.append(f"| {y} | " + " | ".join(cells) + " |")
    out += ["", "Stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items()), ""]
    return "\n".join(out)


def _label_errors(ln, n: int) -> list[str]:
    out = ["## Likely label errors (train)", ""]
    if ln.skipped:
        return out + [f"Not checked: {ln.skipped}.", ""]
    out.append(
        f"Confident learning (cleanlab) on {ln.folds}-fold out-of-fold probabilities of a logistic regression on "
        f"{ln.model} (accuracy {ln.model_accuracy:.3f}, kappa {ln.kappa:.2f}); cleanlab estimates "
        f"{ln.estimated_errors} wrong labels."
    )
    if ln.withheld:
        out += ["", f"**Not listed**: {ln.withheld}; it would flag {ln.withheld_count} images, mostly hard ones."]
    else:
        est = f"estimated precision {ln.estimated_precision:.2f}" if ln.estimated_precision is not None else "none"
        out += [
            "",
            f"{len(ln.issues)} of {ln.checked_rows} images flagged, most suspicious first ({est}). `p(given)` is the "
            "out-of-fold probability of the image's label: look at the image and fix its label.",
        ]
    if ln.excluded_labels:
        out.append(f"Labels with too few images to check: {ln.excluded_labels}.")
    if ln.issues:
        out += ["", "| row | given | suggested | p(given) | image |", "|---:|---|---|---:|---|"]
        out += [
            f"| {i.row} | {i.given} | {i.suggested} | {i.self_confidence:.3f} | {i.text.replace('|', '/')} |"
            for i in ln.issues[:n]
        ]
    return out + [""]


def _rows(rows: list[int]) -> str:
    if not rows:
        return "0"
    return f"{len(rows)} (" + ", ".join(map(str, rows[:3])) + (", ..." if len(rows) > 3 else "") + ")"


def _share(k: int, total: int) -> str:
    return f"{k} ({k / total:.1%})" if total else "0"


def warnings_of(r: ImageAuditReport, label_names: list[str]) -> list[str]:
    """One line per non-blocking problem worth a look."""
    out = []
    for name, reasons in r.skipped.items():
        why = ", ".join(f"{len(v)} {reason}" for reason, v in reasons.items())
        out.append(f"{name}: {sum(map(len, reasons.values()))} images left out ({why})")
    for name, s in r.stats.items():
        if s.tiny:
            out.append(f"{name}: {len(s.tiny)} images smaller than {TINY_SIDE} px on a side (rows {_first(s.tiny)})")
        if s.large:
            out.append(
                f"{name}: {len(s.large)} images above {LARGE_PIXELS / 1e6:g} megapixels (rows {_first(s.large)}): slow to decode every "
                "epoch; resize them once"
            )
    for name, d in r.duplicates.items():
        if d.redundant_rows:
            out.append(f"{name}: {d.redundant_rows} exact duplicate images in {len(d.exact_groups)} groups")
        if d.near_clusters:
            out.append(
                f"{name}: {len(d.near_clusters)} near-duplicate clusters ({sum(map(len, d.near_clusters))} images)"
            )
        if d.exact_conflicts or d.near_conflicts:
            out.append(
                f"{name}: the same picture with different labels: {len(d.exact_conflicts)} exact groups, "
                f"{len(d.near_conflicts)} near clusters (rows {_first((d.exact_conflicts + d.near_conflicts)[0])})"
            )
    ln = r.label_noise
    if ln.issues:
        out.append(
            f"train: {len(ln.issues)} likely label errors (of {ln.checked_rows} images checked; estimated precision "
            f"{ln.estimated_precision:.2f}), e.g. " + "; ".join(i.text for i in ln.issues[:3])
        )
    train = r.balance.get("train", {})
    if len(train) > 1 and max(train.values()) >= r.config.imbalance_warning * min(train.values()):
        out.append(f"train: classes are imbalanced ({max(train.values())} vs {min(train.values())} images)")
    missing = [y for y in label_names if y not in train]
    if missing:
        out.append(f"train: labels without training images: {missing}")
    return out


def _first(rows: list[int], n: int = 5) -> str:
    return ", ".join(map(str, rows[:n])) + (", ..." if len(rows) > n else "")


def pairs_to_show(leakage: list[Leak], near: list[dict], n: int) -> list[dict]:
    """The first `n` pairs worth a look, in the figure's shape: near leaks (exact copies look alike), exact leaks, then
    the `near` pairs of the training set."""
    leaks = [
        {"set": k.set, "row": p["row"], "ref": p["ref"], "label": p["label"], "other_set": k.reference,
         "other_row": p["reference_row"], "other_ref": p["reference_ref"], "other_label": p["reference_label"],
         "kind": f"leak ({p['kind']})", "distance": p["distance"]}
        for k in leakage for p in k.pairs[:n]
    ]  # fmt: skip
    return (sorted(leaks, key=lambda p: p["kind"] != "leak (near)") + near)[:n]


def save_pairs_figure(pairs: list[dict], open_image: Callable, path: Path) -> bool:
    """Draw each pair side by side with its sets, rows, labels and distance; False when no image could be opened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 2, figsize=(6, 2.8 * len(pairs)), squeeze=False)
    opened = 0
    for row, p in enumerate(pairs):
        for col, (split, rownum, ref, label) in enumerate(
            [
                (p["set"], p["row"], p["ref"], p["label"]),
                (p["other_set"], p["other_row"], p["other_ref"], p["other_label"]),
            ]
        ):
            ax = axes[row][col]
            ax.axis("off")
            ax.set_title(f"{split} row {rownum} ({label})\n{_tail(ref)}", fontsize=8)
            try:
                img = open_image(split, ref).convert("RGB")
            except Exception as err:  # a figure with a hole beats no report: say why in the hole
                ax.text(0.5, 0.5, f"cannot open:\n{type(err).__name__}", ha="center", va="center", fontsize=8)
                continue
            img.thumbnail((256, 256))
            ax.imshow(img, interpolation="nearest")  # tiny images: show their pixels, not a blur
            opened += 1
        axes[row][0].text(
            1.05, -0.08, f"{p['kind']}, {p['distance']} bits", transform=axes[row][0].transAxes, ha="center", fontsize=8
        )
    fig.tight_layout()
    if opened:
        atomic_write_figure(fig, path)
    plt.close(fig)
    return bool(opened)


def _tail(ref: str, n: int = 40) -> str:
    return ref if len(ref) <= n else "…" + ref[-(n - 1) :]
