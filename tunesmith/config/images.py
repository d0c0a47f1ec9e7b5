"""The `images:` section: what image-classification runs read (where the pictures are, their size, augmentation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError

AUGMENTATIONS = {
    "random_resized_crop": "a random crop of 60-100% of the area (scale: [lo, hi]), resized to the model's size",
    "hflip": "a horizontal flip, half the time",
    "vflip": "a vertical flip, half the time (not for pictures with an up and a down)",
    "rotation": "a random rotation up to N degrees (rotation: 15)",
    "color_jitter": "random brightness/contrast/saturation/hue ({brightness: 0.2, contrast: 0.2, ...})",
    "brightness": "a random brightness change up to the given share (brightness: 0.2)",
    "contrast": "a random contrast change up to the given share (contrast: 0.2)",
    "blur": "a Gaussian blur, 20% of the time",
    "noise": "Gaussian noise, 20% of the time",
    "grayscale": "grey levels, 10% of the time",
}
"""The short names; any albumentations class by its own name (e.g. `{CLAHE: {p: 0.5}}`) works too."""


@dataclass
class ImagesConfig:
    column: str = "image"
    """Tables (CSV, JSONL, Parquet, `datasets` folders): the column holding each image, as a path (relative to the
    table's folder, or absolute) or as bytes (a `datasets` Image feature). Folders need no column: `root/<label>/*.png`."""
    size: int | None = None
    """Side of the square the model sees; default: the model's own image processor (e.g. 224). Smaller is much
    faster on CPU (the cost grows with the square of the side) at some accuracy."""
    augment: list = field(default_factory=list)
    """Training-time augmentation, applied on the fly and seeded by (seed, epoch, image): a resumed run sees the
    same pictures. A list of names or {name: setting}: `random_resized_crop`, `hflip`, `vflip`, `rotation: 15`,
    `color_jitter: {brightness: 0.2}`, `brightness: 0.2`, `contrast: 0.2`, `blur`, `noise`, `grayscale`, or any
    albumentations transform by its class name (`{CLAHE: {p: 0.5}}`). Validation and test images are never augmented."""
    workers: int | Literal["auto"] = "auto"
    """Processes that decode and augment training images ahead of the loop (a DataLoader); 0 decodes in the training
    process. `auto`: 0 on 2 cores or fewer (there a worker only competes with training: measured in docs/images.md),
    else up to 4 when augmenting."""
    min_size: int = 8
    """Images narrower or lower than this many pixels are left out (and counted)."""
    max_pixels: int = 40_000_000
    """Images with more pixels than this are left out (and counted): a guard against decompression bombs."""
    bad_images: Literal["skip", "error"] = "skip"
    """Unreadable, missing, tiny or huge images: `skip` leaves them out and reports how many and which (first
    examples), `error` stops at the first one."""

    def check(self) -> None:
        if self.size is not None and not 16 <= self.size <= 1024:
            raise ConfigError(f"images.size={self.size} must be between 16 and 1024 pixels (or null: the model's own)")
        if self.workers != "auto" and (not isinstance(self.workers, int) or self.workers < 0):
            raise ConfigError(f"images.workers={self.workers!r} must be `auto` or a number of processes (0 or more)")
        if self.min_size < 1 or self.max_pixels < self.min_size**2:
            raise ConfigError("images.min_size must be at least 1 and images.max_pixels at least min_size squared")
        for entry in self.augment:
            augment_entry(entry)


def augment_entry(entry) -> tuple[str, object]:
    """(name, setting) of one `images.augment` entry; a ConfigError names what is wrong and the known names."""
    if isinstance(entry, str):
        name, value = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        name, value = next(iter(entry.items()))
    else:
        raise ConfigError(
            f"images.augment: {entry!r} is not a name or a one-key mapping (e.g. `rotation: 15`, `hflip`)"
        )
    if not isinstance(name, str) or not (name in AUGMENTATIONS or name[:1].isupper()):
        raise ConfigError(
            f"images.augment: unknown augmentation {name!r}; use one of {', '.join(AUGMENTATIONS)} "
            "or an albumentations transform by its class name (e.g. CLAHE)"
        )
    return name, value
