"""Parity of an image-classifier export: logits of the exported model and of the trained run on the same pixels.

Rows: the first N images of the run's test split. They are read from the run's own `test_predictions.csv` (its
`image` column, its gold labels, its recorded probabilities) when every one of those rows names an image file
that still opens: that file IS the run's test split, in its order, and reading it costs N decodes, where
re-deriving the split from config.yaml decodes (and hashes) every image of every split. A run whose images were
bytes in a table or a `datasets` folder (refs like `data.parquet:row 7`), or whose files moved, falls back to the
task's own data loading (the split re-derived from config.yaml, its fingerprint checked, as for text).
Pixels: the run's image processor on the decoded RGB images (`tasks/images/batches.preprocess`), in batches of 32.

Measured: max and mean |logit diff| and max |probability diff|, agreement of the predicted labels, macro-F1 and
accuracy of both against the gold labels, the share of images the exported image processor turns into the same
pixels as the run's (the analogue of a tokenizer check), batch-1 / batch-32 latency of PyTorch and the export;
reported only: the export's probabilities against those test_predictions.csv recorded (the run's own inference
precision, rounded to 5 decimals).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..tasks.images.batches import preprocess
from ..tasks.images.sources import BadImage, load_rgb
from .classifier import compare_classifier, softmax, torch_logits
from .parity import load_test_split, max_abs_diff, median_ms

BATCH = 32
PIXEL_TOLERANCE = 1e-6
"""Largest |pixel diff| at which the exported processor counts as giving the same pixels (float32 rounding)."""
CALIBRATION_IMAGES = 128
"""Training images static int8 measures activation ranges on (32 and 128 gave the same labels on EfficientNet-Lite0)."""


@dataclass
class ImageInputs:
    images: list
    """The decoded RGB test images (PIL), in the split's order; labels and pixel batches in the same order."""
    labels: list[int]
    label_names: list[str]
    refs: list[str]
    batches: list[dict]
    """{"pixel_values": [<= 32, 3, H, W] float32} from the run's image processor."""
    source: str
    recorded: np.ndarray | None = None
    """test_predictions.csv's probabilities of these rows (when the rows came from it)."""


def image_inputs(run, processor, rows: int, say=print) -> ImageInputs:
    """The first `rows` test images of the run and their pixels, as the run's predictor makes them."""
    picked = _from_predictions(run, rows) or _from_data(run, rows, say)
    images, labels, refs, source, recorded = picked
    batches = [{"pixel_values": pixels(processor, images[i : i + BATCH])} for i in range(0, len(images), BATCH)]
    return ImageInputs(images, labels, run.label_names, refs, batches, source, recorded)


def pixels(processor, images: list) -> torch.Tensor:
    return preprocess(processor, [np.asarray(im) for im in images])


def _from_predictions(run, rows: int):
    """(images, labels, refs, source, recorded probabilities) from test_predictions.csv, or None when it cannot
    stand for the split (missing, no image column, a row that is not an openable file, an unknown label)."""
    import pandas as pd

    path = run.path / "test_predictions.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path, nrows=rows, dtype={"image": str, "label": str}, keep_default_na=False)
    names = run.label_names
    prob_columns = [f"p_{n}" for n in names]
    if "image" not in df.columns or "label" not in df.columns or df.empty:
        return None
    refs = [str(r) for r in df["image"]]
    if not all(Path(r).is_file() for r in refs) or not set(df["label"].astype(str)) <= set(names):
        return None
    try:
        images = [load_rgb(r, run.config.images.max_pixels) for r in refs]
    except BadImage:
        return None
    labels = [names.index(str(y)) for y in df["label"]]
    recorded = df[prob_columns].to_numpy(np.float64) if set(prob_columns) <= set(df.columns) else None
    return images, labels, refs, f"the run's test_predictions.csv (the first {len(refs)} test images)", recorded


def _from_data(run, rows: int, say):
    data, source = load_test_split(run, say)
    test = data.splits.test
    n = min(rows, len(test))
    images = [load_rgb(s, run.config.images.max_pixels) for s in test.sources[:n]]
    return images, [int(y) for y in test.labels[:n]], list(test.refs[:n]), source, None


def calibration_batches(run, processor, say=print, n: int = CALIBRATION_IMAGES) -> tuple[list[np.ndarray], dict]:
    """Pixel batches of up to `n` of the run's training images (a seeded sample) for static int8, and what
    export.json records about them. Training images, never test ones: the parity check is then not scored on the
    pictures the activation ranges were fitted to. The split is re-derived from the run's config.yaml."""
    from ..errors import DataError

    say(f"export: int8 calibration: up to {n} of the run's training images")
    try:
        train = run.task.load_data().splits.train
    except DataError as err:
        raise DataError(
            f"--quantize int8 calibrates on the run's training images, which cannot be read: {err}"
        ) from None
    rows = sorted(np.random.default_rng(run.config.seed).permutation(len(train))[:n].tolist())
    images = [load_rgb(train.sources[r], run.config.images.max_pixels) for r in rows]
    batches = [pixels(processor, images[i : i + 16]).numpy() for i in range(0, len(images), 16)]
    about = {
        "images": len(rows),
        "from": "the run's training split (re-derived from config.yaml), a seeded sample",
        "method": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, MinMax ranges",
    }
    return batches, about


def input_shape(processor) -> tuple[int, int, int]:
    """(3, H, W) the processor makes of any picture; ModelError when it depends on the picture (no fixed size):
    an ONNX graph here has one fixed image size (the batch axis is dynamic)."""
    rng = np.random.default_rng(0)
    square, wide = (rng.integers(0, 256, s, dtype=np.uint8) for s in ((240, 240, 3), (200, 300, 3)))
    shapes = {tuple(pixels(processor, [im]).shape[1:]) for im in (square, wide)}
    if len(shapes) != 1:
        raise ModelError(
            f"--format onnx: the run's image processor gives pixels of a size that depends on the picture "
            f"({' vs '.join('x'.join(map(str, s)) for s in sorted(shapes))}); the ONNX graph needs one fixed size: "
            "use --format hf"
        )
    return shapes.pop()


def example_pixels(shape: tuple[int, int, int]) -> torch.Tensor:
    """Two images (torch.export would specialise a batch of one) of the model's input size, seeded noise."""
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32))


def compare_images(
    reference: np.ndarray, exported: np.ndarray, inputs: ImageInputs, export_processor=None
) -> dict[str, object]:
    """The parity figures of an image-classifier export (tolerances are applied by the caller)."""
    out = compare_classifier(reference, exported, inputs)
    out["max_abs_prob_diff"] = max_abs_diff(softmax(reference), softmax(exported))
    if inputs.recorded is not None and len(inputs.recorded) == len(exported):
        out["recorded_max_abs_prob_diff"] = max_abs_diff(inputs.recorded, softmax(exported))
        out["recorded_is"] = (
            "the export's probabilities vs test_predictions.csv (the run's inference precision, 5 decimals): reported"
        )
    if export_processor is not None:
        diffs = [
            np.abs(pixels(export_processor, inputs.images[i : i + BATCH]).numpy() - b["pixel_values"].numpy())
            .reshape(len(b["pixel_values"]), -1)
            .max(axis=1)
            for i, b in zip(range(0, len(inputs.images), BATCH), inputs.batches)
        ]
        diffs = np.concatenate(diffs) if diffs else np.zeros(0)
        out["processor_agreement"] = float(np.mean(diffs <= PIXEL_TOLERANCE)) if diffs.size else 1.0
        out["max_abs_pixel_diff"] = float(diffs.max()) if diffs.size else 0.0
    return out


def latency(torch_model, export_logits, inputs: ImageInputs, repeats: int = 5) -> dict:
    """Median milliseconds per call at batch 1 and batch 32 (the first test images), PyTorch fp32 vs the export."""
    first = inputs.batches[0]["pixel_values"] if inputs.batches else None
    out: dict = {"pytorch": {}, "export": {}}
    if first is None:
        return out
    device = next(torch_model.parameters()).device
    torch_model.eval()
    for name, n in {"batch_1": 1, "batch_32": len(first)}.items():
        batch = {"pixel_values": first[:n]}
        on_device = {"pixel_values": first[:n].to(device)}
        out["pytorch"][name] = round(median_ms(functools.partial(_forward, torch_model, on_device), repeats), 3)
        out["export"][name] = round(median_ms(functools.partial(export_logits, batch), repeats), 3)
    return out


@torch.no_grad()
def _forward(model, batch: dict) -> None:
    model(**batch)


def measure(format: str, merged, folder: Path, inputs: ImageInputs, reference: np.ndarray) -> dict:
    """Run the written export (hf folder or model.onnx) on the parity pixels: the figures for export.json."""
    from transformers import AutoImageProcessor

    from . import hf as hf_format
    from . import onnx as onnx_format

    if format == "onnx":
        export_logits = onnx_format.OnnxImageClassifier(folder).logits
    else:
        loaded, _ = hf_format.load_hf(folder, tokenizer=False)

        def export_logits(batch):
            return torch_logits(loaded, [batch])

    export_processor = AutoImageProcessor.from_pretrained(str(folder))
    exported = np.concatenate([export_logits(b) for b in inputs.batches])
    measured = compare_images(reference, exported, inputs, export_processor)
    measured["latency_ms"] = latency(merged, export_logits, inputs)
    return measured


def describe(merged, processor) -> dict:
    """What export.json says about the input an image export takes, and the notes a user needs to load it."""
    shape = tuple(pixels(processor, [np.zeros((64, 64, 3), np.uint8)]).shape[1:])
    info = {"input": {"pixel_values": ["batch", *shape], "dtype": "float32", "from": "the image processor beside it"}}
    if getattr(merged.config, "model_type", "") == "tunesmith-mbconv":
        info["notes"] = [
            "model_type tunesmith-mbconv is tunesmith's own: `import tunesmith.models.vision` (it registers the "
            "class with the transformers Auto classes) before AutoModelForImageClassification / AutoConfig "
            ".from_pretrained(DIR); AutoImageProcessor and onnxruntime need nothing from tunesmith"
        ]
    return info
