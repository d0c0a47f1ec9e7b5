"""Image batches: decoded, augmented (training) and preprocessed on demand, ahead of the loop in worker processes.

The loop tells a split which rows it will ask for in an epoch (`upcoming`); with `workers` > 0 a torch DataLoader
decodes those micro-batches in background processes while the model trains on the current one. Each micro-batch
is a pure function of (rows, epoch), so prefetching changes nothing but the time it takes.
"""

from __future__ import annotations

import numpy as np
import torch

from ...utils import fingerprint
from .augment import augmented, sample_seed
from .sources import load_rgb, to_rgb


class Pixels:
    """rows -> pixel_values [n, 3, H, W] float32, with or without the training augmentation (picklable)."""

    def __init__(self, processor, compose=None, skip_resize: bool = False, seed: int = 0, max_pixels: int = 40_000_000):
        self.processor, self.compose, self.skip_resize = processor, compose, skip_resize
        self.seed, self.max_pixels = seed, max_pixels

    def __call__(self, sources: list, rows: list[int], epoch: int | None) -> torch.Tensor:
        images = [np.asarray(load_rgb(sources[r], self.max_pixels)) for r in rows]
        kwargs = {}
        if self.compose is not None and epoch is not None:
            images = [augmented(self.compose, im, sample_seed(self.seed, epoch, r)) for im, r in zip(images, rows)]
            if self.skip_resize:
                kwargs = {"do_resize": False, "do_center_crop": False}
        return preprocess(self.processor, images, **kwargs)


def preprocess(processor, images: list, **kwargs) -> torch.Tensor:
    """The model's image processor on RGB images (PIL or HWC uint8 arrays)."""
    out = processor(images=images, return_tensors="np", **kwargs)["pixel_values"]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class _Planned(torch.utils.data.Dataset):
    """Item k = micro-batch k of the plan (DataLoader with batch_size=None: one item is one batch)."""

    def __init__(self, pixels: Pixels, sources: list, plan: list[list[int]], epoch: int):
        self.pixels, self.sources, self.plan, self.epoch = pixels, sources, plan, epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.pixels(self.sources, self.plan[k], self.epoch)


class ImageBatches:
    """One split as `Batches` (engine/batches.py): units are images; `batch` gives pixel_values (+ labels)."""

    def __init__(self, split, pixels: Pixels, train: bool = False, workers: int = 0, key: str = ""):
        self.sources, self.targets, self.refs = split.sources, split.labels, split.refs
        self.pixels, self.train, self.workers = pixels, train, workers
        self.lengths = [1] * len(self.sources)
        # What the pixels depend on besides the images: the linear-probe feature cache is keyed by it.
        self.fingerprint = fingerprint([split.fingerprint()], [key])
        self.epoch: int | None = None
        self._plan: list[list[int]] = []
        self._iter = None

    def __len__(self) -> int:
        return len(self.sources)

    def units(self, rows: list[int]) -> int:
        return len(rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return 0

    def upcoming(self, epoch: int, plan: list[list[int]]) -> None:
        """The rows `batch` will be asked for, in order, for the rest of this epoch (this process's shares)."""
        self.epoch = epoch if self.train else None
        self._plan, self._iter = list(plan), None
        if self.workers > 0 and plan:
            loader = torch.utils.data.DataLoader(
                _Planned(self.pixels, self.sources, self._plan, self.epoch),
                batch_size=None,
                shuffle=False,
                num_workers=self.workers,
                prefetch_factor=2,
                persistent_workers=False,
                # Its own generator: an iterator draws a seed for its workers, and drawing it from the global RNG
                # would shift every later random draw (dropout) of a resumed run against the uninterrupted one.
                generator=torch.Generator().manual_seed(epoch),
            )
            self._iter = iter(loader)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, torch.Tensor]:
        pixel_values = None
        if self._plan and list(rows) == self._plan[0]:
            self._plan.pop(0)
            if self._iter is not None:
                pixel_values = next(self._iter)
        elif self._plan:  # asked off-plan (a validation pass on the training split): stop prefetching
            self._plan, self._iter = [], None
        if pixel_values is None:
            pixel_values = self.pixels(self.sources, rows, self.epoch if self.train else None)
        out = {"pixel_values": pixel_values}
        if with_targets:
            out["labels"] = torch.tensor([self.targets[r] for r in rows], dtype=torch.long)
        return out


def auto_workers(setting, augmenting: bool) -> int:
    """images.workers: `auto` decodes in the training process on 2 cores or fewer (measured, benchmarks/images.py:
    a worker cost 7% there, 74 -> 69 images/s, competing with training for the same cores), else in
    min(4, cores // 4) worker processes when there is augmentation to do (1 at least)."""
    import os

    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 2 or not augmenting:
        return 0
    return max(1, min(4, cores // 4))


@torch.no_grad()
def predict_sources(model, processor, sources: list, batch_size: int, autocast) -> np.ndarray:
    """Probabilities for images given as paths, bytes or PIL images (any mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(sources), batch_size):
        images = [to_rgb(s) if hasattr(s, "mode") else load_rgb(s) for s in sources[i : i + batch_size]]
        pixels = preprocess(processor, [np.asarray(im) for im in images]).to(device)
        with autocast():
            out.append(torch.softmax(model(pixel_values=pixels).logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
