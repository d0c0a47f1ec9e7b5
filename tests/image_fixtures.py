"""Tiny generated images and a tiny random vision model, built in code (no downloads), for image-task tests.

The toy task: each picture is a field of noise with one filled shape (square, disc or cross) in a random colour,
place and size; the label is the shape. It needs spatial features, so no colour statistic solves it.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np

SHAPES = ("cross", "disc", "square")


def shape_image(label: str, rng: random.Random, size: int = 32) -> np.ndarray:
    """An RGB uint8 picture of one shape on noise."""
    nrng = np.random.default_rng(rng.randrange(2**31))
    # A dim gradient in a random direction under noise: distinct pictures stay distinct at thumbnail scale too
    # (on flat noise, two discs at one place look like near duplicates to the audit, and rightly so).
    yy, xx = np.mgrid[:size, :size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
    low, high = nrng.integers(0, 40, 3), nrng.integers(50, 110, 3)
    img = (low + ramp[..., None] * (high - low) + nrng.integers(0, 30, (size, size, 3))).astype(np.uint8)
    colour = np.array([rng.randrange(120, 256) for _ in range(3)], dtype=np.uint8)
    r = rng.randrange(size // 5, size // 3)
    cx, cy = rng.randrange(r, size - r), rng.randrange(r, size - r)
    yy, xx = np.mgrid[:size, :size]
    if label == "square":
        mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    elif label == "disc":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    else:
        w = max(1, r // 3)
        mask = ((abs(xx - cx) <= w) & (abs(yy - cy) <= r)) | ((abs(yy - cy) <= w) & (abs(xx - cx) <= r))
    img[mask] = colour
    return img


def toy_images(n: int, seed: int = 0, size: int = 32) -> list[tuple[np.ndarray, str]]:
    """n (image, label) pairs, labels cycling through SHAPES (balanced)."""
    rng = random.Random(seed)
    return [(shape_image(SHAPES[i % 3], rng, size), SHAPES[i % 3]) for i in range(n)]


def png_bytes(img: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    from PIL import Image

    im = Image.fromarray(img)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_folder(root: Path, pairs: list[tuple[np.ndarray, str]], prefix: str = "img") -> Path:
    """root/<label>/<prefix>_<i>.png"""
    for i, (img, label) in enumerate(pairs):
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{prefix}_{i:04d}.png").write_bytes(png_bytes(img))
    return root


def write_table(path: Path, pairs: list[tuple[np.ndarray, str]], images_dir: str = "pics") -> Path:
    """A CSV/JSONL/Parquet (by suffix) with relative image paths (CSV/JSONL) or image bytes (Parquet)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df = pd.DataFrame({"image": [png_bytes(img) for img, _ in pairs], "label": [y for _, y in pairs]})
        df.to_parquet(path)
        return path
    (path.parent / images_dir).mkdir(exist_ok=True)
    refs = []
    for i, (img, _) in enumerate(pairs):
        name = f"{images_dir}/{path.stem}_{i:04d}.png"
        (path.parent / name).write_bytes(png_bytes(img))
        refs.append(name)
    df = pd.DataFrame({"image": refs, "label": [y for _, y in pairs]})
    if path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False)
    return path


def build_tiny_vision(folder: Path, labels: int = 3, size: int = 32, seed: int = 0) -> Path:
    """A tiny random MBConv classifier (4 blocks, ~10k parameters) + an image processor, saved as an HF folder."""
    import torch
    from transformers import ViTImageProcessor

    from tunesmith.models.vision.mbconv import MBConvConfig, MBConvForImageClassification

    torch.manual_seed(seed)
    config = MBConvConfig(
        stem_channels=8,
        stages=[[3, 1, 1, 8, 1], [3, 2, 2, 16, 2], [3, 2, 2, 24, 1]],
        head_channels=32,
        dropout=0.0,
        num_labels=labels,
        image_size=size,
    )
    MBConvForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_resize=True
    ).save_pretrained(folder)
    return folder


def pretrain_tiny_vision(folder: Path, steps: int = 150, size: int = 32, seed: int = 11) -> Path:
    """`build_tiny_vision`, then trained (full, Adam) on other toy pictures with a 5-way head: a "pretrained"
    backbone whose features already tell shapes apart (as a real one's would), and whose head every run replaces."""
    import torch

    from tunesmith.models.vision.mbconv import MBConvForImageClassification

    build_tiny_vision(folder, labels=5, size=size, seed=seed)
    model = MBConvForImageClassification.from_pretrained(folder)
    pairs = toy_images(96, seed=seed, size=size)
    x = torch.tensor(np.stack([img for img, _ in pairs]), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
    y = torch.tensor([SHAPES.index(label) for _, label in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(y), (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x[rows]).logits, y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder)
    return folder
