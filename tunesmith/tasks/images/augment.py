"""Pixels for the model: the model's own image processor, after seeded albumentations at training time.

Evaluation images go through the model's image processor exactly as its authors preprocess (resize, center
crop, rescale, normalise). Training images are augmented first (`images.augment`), each with a seed drawn from
(run seed, epoch, image index): the same image in the same epoch is the same picture whichever process or
worker decodes it, so a resumed run trains on exactly the pictures the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ...config.images import augment_entry
from ...errors import ConfigError


def input_size(processor) -> int:
    """The side of the square the model sees (its crop size if it center-crops, else its resize size)."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if isinstance(size, int):
        return size
    return int(size.get("height") or size.get("shortest_edge") or size.get("width") or 224)


def resize_processor(processor, side: int) -> None:
    """Make the processor produce `side` x `side` pixels (images.size), keeping its resize/crop ratio."""
    size = getattr(processor, "size", None) or {}
    crop = input_size(processor)
    if "shortest_edge" in size:
        processor.size = {"shortest_edge": int(round(size["shortest_edge"] * side / crop))}
    else:
        processor.size = {"height": side, "width": side}
    if getattr(processor, "do_center_crop", False):
        processor.crop_size = {"height": side, "width": side}


def build_augment(entries: list, side: int):
    """An albumentations Compose for `images.augment` (None when empty), producing `side` x `side` if it crops."""
    if not entries:
        return None
    import albumentations as A

    steps = []
    for entry in entries:
        name, value = augment_entry(entry)
        steps.append(_transform(A, name, value, side))
    return A.Compose(steps)


def _transform(A, name: str, value, side: int):
    v = value if isinstance(value, dict) else {}
    if name == "random_resized_crop":
        scale = tuple(value) if isinstance(value, (list, tuple)) else tuple(v.get("scale", (0.6, 1.0)))
        return A.RandomResizedCrop(size=(side, side), scale=scale, ratio=tuple(v.get("ratio", (3 / 4, 4 / 3))))
    if name == "hflip":
        return A.HorizontalFlip(p=v.get("p", 0.5))
    if name == "vflip":
        return A.VerticalFlip(p=v.get("p", 0.5))
    if name == "rotation":
        limit = value if isinstance(value, (int, float)) else v.get("limit", 15)
        return A.Rotate(limit=limit, p=v.get("p", 1.0))
    if name == "color_jitter":
        keys = {k: v.get(k, 0.0) for k in ("brightness", "contrast", "saturation", "hue")}
        return A.ColorJitter(**keys, p=v.get("p", 1.0))
    if name in ("brightness", "contrast"):
        limit = value if isinstance(value, (int, float)) else v.get("limit", 0.2)
        other = "contrast_limit" if name == "brightness" else "brightness_limit"
        return A.RandomBrightnessContrast(**{f"{name}_limit": limit, other: 0.0}, p=v.get("p", 1.0))
    if name == "blur":
        return A.GaussianBlur(blur_limit=(3, 5), p=v.get("p", 0.2))
    if name == "noise":
        return A.GaussNoise(std_range=(0.02, 0.08), p=v.get("p", 0.2))
    if name == "grayscale":
        return A.ToGray(p=v.get("p", 0.1))
    cls = getattr(A, name, None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"images.augment: albumentations has no transform {name!r}")
    try:
        return cls(**v) if value is None or isinstance(value, dict) else cls(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"images.augment: {name}: {str(err).splitlines()[0]}") from None


def crops(entries: list) -> bool:
    """Whether the augmentation already produces the model's size (then the processor does not resize/crop)."""
    return any(augment_entry(e)[0] in ("random_resized_crop", "RandomResizedCrop", "RandomCrop") for e in entries)


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """A 32-bit seed for one image in one epoch: a pure function of the three (resume-exact, worker-independent)."""
    digest = hashlib.blake2b(f"{seed}|{epoch}|{row}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def augmented(compose, image: np.ndarray, seed: int) -> np.ndarray:
    compose.set_random_seed(seed)
    return compose(image=image)["image"]
