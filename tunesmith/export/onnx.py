"""ONNX for classifiers: encoder text classifiers (BERT, MiniLM, RoBERTa, ...): model.onnx with dynamic batch and
sequence axes, inputs input_ids / attention_mask (/ token_type_ids when the model takes them), output logits;
image classifiers: input pixel_values [batch, 3, H, W] (the batch axis dynamic, H x W fixed by the run's image
processor), output logits. Next to it the tokenizer or image processor, config.json (id2label) and labels.json,
so the folder is all a runtime needs.

The exporter is torch.onnx's dynamo exporter (torch.export, the default and maintained path on torch >= 2.9); if
it cannot capture a model, the TorchScript exporter (`dynamo=False`) is tried; export.json records which one
wrote the file, and the parity check runs what was written either way. `int8`: for text classifiers
onnxruntime's dynamic quantization, int8 weights (QInt8) with activations quantized on the fly; for image
classifiers static quantization (QDQ), activation ranges calibrated on the run's training images (see
`quantize_int8_static` for why); the file replaces the fp32 one.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ModelError

QUANTIZE = {
    "none": "fp32 weights",
    "int8": "int8 weights (text: onnxruntime dynamic quantization, QInt8; images: static QDQ, calibrated)",
}
MODEL_FILE = "model.onnx"
OPSET = 18


def check_quantize(value: str | None) -> str:
    q = (value or "none").lower()
    if q not in QUANTIZE:
        raise ConfigError(f"--quantize {value}: onnx exports are {' or '.join(QUANTIZE)} (int8: QInt8 weights)")
    return q


def check_model(model) -> None:
    """Encoder classifiers only: a sequence-classification head on an encoder (a model family with a masked-LM head)."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING

    if type(model).__name__.endswith("ForImageClassification"):
        return  # pixels in, logits out: any image classifier torch.export can capture (the export says if not)
    if getattr(model.config, "is_encoder_decoder", False) or not type(model).__name__.endswith(
        "ForSequenceClassification"
    ):
        raise ConfigError(
            f"--format onnx exports classifiers; this run's model is a {type(model).__name__} "
            f"(--format hf writes any run; --format gguf is for Llama-family causal LMs)"
        )
    if type(model.config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise ConfigError(
            f"--format onnx exports encoder classifiers (BERT, MiniLM, RoBERTa, ...); {type(model).__name__} is a "
            f"decoder with a classification head: use --format hf"
        )


def input_names(model) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


def write_onnx(
    model, folder: Path, quantize: str, say=print, pixels: torch.Tensor | None = None, calibration: list | None = None
) -> dict:
    """model.onnx in `folder` (fp32, or int8); returns {"exporter", "inputs", "opset"}. `pixels`: an image
    classifier's example input [2, 3, H, W] (its H x W become the graph's fixed size; the batch axis is dynamic);
    `calibration`: its pixel batches for static int8 (see `quantize_int8_static`)."""
    if pixels is not None:
        names, args, wrapped = ["pixel_values"], (pixels,), _PixelLogits(model).eval()
        dims, what = {"pixel_values": {0: "batch"}}, f"dynamic batch axis, {'x'.join(map(str, pixels.shape[1:]))}"
    else:
        names = input_names(model)
        wrapped = _LogitsOnly(model).eval()
        # Two rows of different lengths: torch.export specialises a dimension of size 1, and padding shows in the mask.
        ids = torch.tensor([[101, 2000, 2001, 2002, 102, 0], [101, 2003, 102, 0, 0, 0]]) % model.config.vocab_size
        example = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
        args = tuple(example[n] for n in names)
        dims, what = {n: {0: "batch", 1: "sequence"} for n in names}, "dynamic batch and sequence axes"
    path = folder / MODEL_FILE
    say(f"export: onnx (opset {OPSET}, {what})")
    try:
        _export_dynamo(wrapped, args, names, dims, path)
        exporter = "dynamo"
    except Exception as err:  # the exporter's own failures are many kinds; the fallback is the answer to all
        say(f"export: the dynamo exporter failed ({_first_line(err)}); trying the TorchScript exporter")
        try:
            _export_torchscript(wrapped, args, names, dims, path)
        except Exception as err2:
            raise ModelError(
                f"--format onnx: torch.onnx cannot export {type(model).__name__} ({_first_line(err2)})"
            ) from None
        exporter = "torchscript"
    if quantize == "int8" and pixels is not None:
        say(f"export: int8 (onnxruntime quantize_static, QDQ, calibrated on {sum(len(b) for b in calibration)} images)")
        quantize_int8_static(path, calibration)
    elif quantize == "int8":
        say("export: int8 weights (onnxruntime quantize_dynamic, QInt8)")
        quantize_int8(path)
    return {"exporter": exporter, "inputs": names, "opset": OPSET}


class _LogitsOnly(torch.nn.Module):
    """The classifier as a function of its token tensors, returning logits (what the ONNX graph outputs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


class _PixelLogits(torch.nn.Module):
    """An image classifier as a function of its pixels, returning logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def _export_dynamo(wrapped, args, names, dims: dict, path: Path) -> None:
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            args,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={n: dims[n] for n in names},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def _export_torchscript(wrapped, args, names, dims: dict, path: Path) -> None:
    axes = {n: dims[n] for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def saturates() -> bool:
    """x86 CPUs without VNNI compute uint8 x int8 products in int16 pairs that can saturate (onnxruntime's
    quantization docs); 7-bit weights (reduce_range) avoid it there. Measured: without it, int8 label agreement fell
    to 91.7% on an AVX2-only AMD EPYC where AVX512-VNNI machines kept >= 95%."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "vnni" not in flags


def quantize_int8(path: Path) -> None:
    """Replace the fp32 file by one with int8 weights (dynamic quantization: activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(f".{path.stem}.int8.onnx")
    with _quiet():
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=saturates())
    tmp.replace(path)


def quantize_int8_static(path: Path, calibration: list) -> None:
    """Replace an image classifier's fp32 file by a static int8 one: QDQ, per-channel int8 weights, activation
    ranges (MinMax) measured on `calibration` ([n, 3, H, W] float32 batches of the run's training images).

    Not dynamic quantization, which serves text classifiers: it turns every Conv into ConvInteger, and on
    EfficientNet-Lite0 linear-probed on Fashion-MNIST (10 classes, 128 px, 500 test pictures) that kept 78% of the
    fp32 labels and ran 19x slower than fp32 ONNX. Static QDQ calibrated on 128 training pictures kept 95.9% of
    1,000 test labels (macro-F1 0.8538 -> 0.8504), made the file 3.5x smaller and ran 1.7-2.5x faster
    (docs/export.md)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": np.asarray(batch, dtype=np.float32)}

    prepared = path.with_name(f".{path.stem}.prepared.onnx")
    tmp = path.with_name(f".{path.stem}.int8.onnx")
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            # shapes inferred and BatchNorms folded into the convolutions first, as onnxruntime recommends
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(tmp),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                reduce_range=saturates(),
            )
        tmp.replace(path)
    finally:
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


class OnnxClassifier:
    """An onnxruntime session over model.onnx: logits for a padded batch of token ids."""

    def __init__(self, folder: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, batch: dict) -> np.ndarray:
        """`batch`: input_ids and attention_mask (torch or numpy); token_type_ids are zeros when not given."""
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.asarray(batch["attention_mask"], dtype=np.int64),
            "token_type_ids": np.asarray(batch["token_type_ids"], dtype=np.int64)
            if "token_type_ids" in batch
            else np.zeros_like(ids),
        }
        return self.session.run(["logits"], {n: feed[n] for n in self.inputs})[0]


class OnnxImageClassifier(OnnxClassifier):
    """An onnxruntime session over an image classifier's model.onnx: logits for a batch of pixel_values."""

    def logits(self, batch: dict) -> np.ndarray:
        return self.session.run(["logits"], {"pixel_values": np.asarray(batch["pixel_values"], dtype=np.float32)})[0]


class _quiet:
    """Silence the exporters' and the quantizer's chatter on the root logger (progress goes through `say`)."""

    names = ("", "torch.onnx", "torch.export", "onnxscript")

    def __enter__(self):
        self.levels = [logging.getLogger(n).level for n in self.names]
        for n in self.names:
            logging.getLogger(n).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for n, level in zip(self.names, self.levels):
            logging.getLogger(n).setLevel(level)
        return False


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
