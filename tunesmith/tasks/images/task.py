"""Image classification: a label per image, a fresh classification head on a pretrained vision model.

images (folders, tables, `datasets`) -> decode check (bad images skipped and counted) -> audit (exact and
perceptual-hash duplicates, leakage, label errors on backbone features) -> leak-proof stratified split -> the
model's own preprocessing (+ seeded augmentation, decoded ahead in worker processes) -> cross-entropy ->
validation macro-F1 -> test metrics with intervals, the raw-pixel baseline beside them, slices by size and
brightness, calibration, robustness to blur/noise/brightness/JPEG, the most confident errors as a picture grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...engine.batches import predict_probs
from ...errors import ConfigError, DataError
from ...evaluate.metrics import METRIC_NAMES, classification_metrics, headline
from ...tracking.classification import classification_brief, classification_tracked, write_classification_outputs
from ..base import Findings, Prediction, Predictor, Task, TaskData
from .augment import build_augment, crops, input_size, resize_processor
from .batches import ImageBatches, Pixels, auto_workers, predict_sources
from .data import ImageSplits, load_image_splits
from .evaluation import audit_findings, image_evaluation

REFUSED = {
    "prompt-tuning": "soft prompts are token embeddings; a vision model has no token embeddings",
    "prefix-tuning": "prefixes are attention keys/values for token sequences; use lora, which adapts Conv2d and Linear",
}


class ImageClassificationTask(Task):
    name = "image-classification"
    summary = "A label per image: defects, species, products, scans, ... (a fresh head on a pretrained vision model)."
    metrics = ("macro_f1", *[m for m in METRIC_NAMES if m != "macro_f1"])
    uses = frozenset(
        {"data.label_column", "data.labels", "data.normalize_labels", "train.class_weights", "eval.*", "images.*"}
    )
    supports_cv = False
    supports_compare = True
    serves = frozenset({"classify"})

    # ---- data
    def load_data(self) -> TaskData:
        splits = load_image_splits(self.cfg)
        modes = pd.Series([m for s in splits.by_name().values() for m in s.modes]).value_counts().to_dict()
        notes = list(splits.notes)
        converted = {m: n for m, n in modes.items() if m != "RGB"}
        if converted:
            notes.append("converted to RGB: " + ", ".join(f"{n} {m}" for m, n in converted.items()))
        return TaskData(splits, splits.summary(), splits.label_names, notes, {"image_modes": modes})

    def load_tokenizer(self, source):
        """The model's image processor (the run's `tokenizer` slot), resized to images.size when set."""
        from ...models.vision.loading import load_image_processor

        processor = load_image_processor(source, self.cfg.model.revision, self.cfg.model.trust_remote_code)
        if self.cfg.images.size:
            resize_processor(processor, self.cfg.images.size)
        return processor

    def load_saved_tokenizer(self, folder: Path):
        from ...models.vision.loading import load_image_processor

        return load_image_processor(folder)

    def encoding_key(self) -> str:
        return f"images {self.cfg.images.size or 'model size'}"

    def check_data(self, data: TaskData, tokenizer, source=None) -> Findings:
        if not self.cfg.audit.enabled:
            return Findings()
        return audit_findings(self.cfg, data.splits, tokenizer, source)

    def check_strategy(self, strategy) -> None:
        if strategy.name in REFUSED:
            raise ConfigError(f"strategy {strategy.name} cannot train task {self.name}: {REFUSED[strategy.name]}")

    # ---- model
    def load_model(self, source, tokenizer, strategy, labels: list[str]):
        from ...models.vision.loading import load_image_classifier

        m = self.cfg.model
        return load_image_classifier(source, labels, m.revision, m.trust_remote_code, strategy.quantize)

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        s: ImageSplits = data.splits
        im, seed = self.cfg.images, self.cfg.seed
        self._processor, self._weights, self._names = tokenizer, None, s.label_names
        if self.cfg.train.class_weights != "none":
            from ...data.balance import class_weights

            weights = class_weights([s.label_names[y] for y in s.train.labels], s.label_names)
            self._weights = torch.tensor(weights, dtype=torch.float32)
        side = input_size(tokenizer)
        compose = build_augment(im.augment, side)
        key = f"{side}px"
        plain = Pixels(tokenizer, None, seed=seed, max_pixels=im.max_pixels)
        train = Pixels(tokenizer, compose, crops(im.augment), seed, im.max_pixels)
        workers = auto_workers(im.workers, compose is not None)
        return {
            "train": ImageBatches(s.train, train, train=True, workers=workers, key=f"{key} {im.augment}"),
            "validation": ImageBatches(s.validation, plain, key=key),
            "test": ImageBatches(s.test, plain, key=key),
        }

    def loss(self, model, inputs: dict):
        _frozen_norms_in_eval(model)
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        weight = self._weights.to(logits.device) if self._weights is not None else None
        return F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum")

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        data = batches["validation"]
        probs = predict_probs(model, data, self.cfg.eval.batch_size, ctx.autocast, ctx.rank, ctx.world)
        return classification_metrics(data.targets, probs, self._names)

    # ---- after training
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        s = data.splits
        probs = predict_probs(trained, batches["test"], self.cfg.eval.batch_size, ctx.autocast, ctx.rank, ctx.world)
        if not ctx.is_main:
            return {}
        self._probs = probs
        metrics = {"test": classification_metrics(s.test.labels, probs, s.label_names)}

        def predict(sources: list) -> np.ndarray:
            return predict_sources(model, self._processor, sources, self.cfg.eval.batch_size, ctx.autocast)

        metrics.update(image_evaluation(self.cfg, ctx.run_dir, s, probs, predict, trained, batches, ctx))
        return metrics

    def write_artifacts(self, run_dir, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx) -> None:
        super().write_artifacts(run_dir, metrics, history, data, info, ctx)
        s = data.splits
        write_classification_outputs(
            run_dir, self.cfg, info, metrics, data.labels, "image", s.test.refs, s.test.labels, self._probs
        )

    def headline(self, metrics: dict) -> dict[str, float]:
        return headline(metrics.get("test") or {})

    def tracked(self, metrics: dict) -> dict[str, float]:
        return classification_tracked(metrics)

    def brief(self, metrics: dict) -> str:
        return classification_brief(metrics)

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        t, test, b = info["timings"], metrics["test"], metrics.get("baseline") or {}
        lines = ["", f"{'':26}{'macro-F1':>10}{'accuracy':>10}"]
        lines.append(f"{'test (fine-tuned)':26}{test['macro_f1']:>10.4f}{test['accuracy']:>10.4f}")
        if b.get("test"):
            lines.append(f"{'test (' + b['name'] + ')':26}{b['test']['macro_f1']:>10.4f}{b['test']['accuracy']:>10.4f}")
        lines.append(
            f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.1f} images/s, peak memory {t['peak_rss_mb']:.0f} MB"
        )
        return lines

    def predictor(self, run) -> Predictor:
        return ImagePredictor(run)


def _frozen_norms_in_eval(model: nn.Module) -> None:
    """Batch norms whose weights are frozen keep their pretrained statistics (Keras' `trainable=False` semantics):
    a frozen convolutional base must not drift with the fine-tuning batches' statistics."""
    if not model.training:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            params = [p for p in m.parameters(recurse=False)]
            if params and not any(p.requires_grad for p in params):
                m.eval()


class ImagePredictor(Predictor):
    input_kind = "image"

    def read_inputs(self, path: str, column: str | None = None):
        """A table of images (paths relative to it, or bytes) or a folder of images (recursively)."""
        from ...utils import resolve_path
        from .sources import IMAGE_SUFFIXES, rows_of

        folder = resolve_path(path)
        if folder.is_dir() and not (folder / "dataset_info.json").exists():
            files = sorted(str(f) for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{path}: no images in this folder (or its subfolders)")
            return pd.DataFrame({"image": files}), files
        cfg = self.run.config
        images = cfg.images if column is None else dataclasses.replace(cfg.images, column=column)
        try:
            rows = rows_of(path, images, cfg.data, need_labels=False)
        except DataError as err:
            raise DataError(f"{err} (pass --image-column)") from None
        if isinstance(rows, dict):
            rows = rows.get("test") or next(iter(rows.values()))
        return pd.DataFrame({"image": rows.refs}), rows.sources

    def predict_probs(self, images: list, batch_size: int = 64) -> np.ndarray:
        """Class probabilities per image (paths, bytes or PIL images), columns in `run.label_names` order."""
        from .sources import BadImage

        m = self.run.load()
        try:
            return predict_sources(m.model, m.tokenizer, list(images), batch_size, m.autocast)
        except BadImage as bad:
            raise DataError(f"predict: an image cannot be used ({bad}); check the paths or bytes given") from None

    def evaluate(self, data: str, text_column: str | None = None, label_column: str | None = None, **_) -> dict:
        """Metrics of the run's model on another labelled image folder or table (`text_column`: the image column)."""
        from ...data.loaders import label_str
        from .sources import rows_of, scan, skipped_note

        cfg, names = self.run.config, self.run.label_names
        images = dataclasses.replace(cfg.images, column=text_column or cfg.images.column)
        rows = rows_of(data, images, dataclasses.replace(cfg.data, label_column=label_column or cfg.data.label_column))
        if isinstance(rows, dict):
            rows = rows.get("test") or next(iter(rows.values()))
        scanned = scan(rows, images, data, progress=False)
        labels = [label_str(rows.labels[i]) for i in scanned.keep]
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise DataError(f"{data}: labels {unknown} are not among the run's labels {names}")
        probs = self.predict_probs([rows.sources[i] for i in scanned.keep])
        metrics = classification_metrics([names.index(y) for y in labels], probs, names)
        metrics["data"] = str(data)
        if note := skipped_note(str(data), scanned.skipped):
            metrics["skipped"] = note
        return metrics

    def predict(self, images: list, batch_size: int = 64):
        names = self.run.label_names
        out = []
        for row in self.predict_probs(images, batch_size):
            k = int(row.argmax())
            out.append(Prediction(names[k], float(row[k]), {n: float(p) for n, p in zip(names, row)}))
        return out
