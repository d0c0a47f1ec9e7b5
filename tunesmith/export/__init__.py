"""Exports of a finished run, each checked against the run it came from.

    tunesmith export RUN --format hf|onnx|gguf [--quantize Q] --out DIR [--no-parity] [--parity-rows N]

hf    adapters merged into the weights: a plain transformers folder (tokenizer or image processor, model card) hf.py
onnx  classifiers: model.onnx for encoder text classifiers (dynamic batch/sequence axes; fp32 or int8 weights) and
      image classifiers (pixel_values, dynamic batch axis), the tokenizer or image processor, config.json and
      labels.json beside it                                                                              onnx.py
gguf  Llama-family causal LMs: one .gguf for llama.cpp (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0)    gguf.py

Which formats fit is decided by the model (its head class and `config.model_type`), never by the task's name.
Every export is then run on the run's own test inputs beside the trained model (parity.py, classifier.py,
image_classifier.py, language_model.py); `<out>/export.json` says what was compared, the tolerances and the
verdict. The folder is written under a temporary name and renamed into place. An export that misses a tolerance
is still renamed into place (to be inspected; export.json says "failed"), and `export_run` raises a ParityError
naming the miss.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..models.loading import auto_class_for
from ..runs.run import Run, load_run
from ..utils import atomic_dir, atomic_write_json
from ..version import __version__
from . import gguf as gguf_format
from . import hf as hf_format
from . import image_classifier as image_format
from . import onnx as onnx_format
from .classifier import classifier_inputs, compare_classifier, latency, torch_logits
from .language_model import compare_lm, lm_inputs, lm_outputs, stops_and_pad
from .parity import DEFAULT_ROWS, ParityError, parameter_bytes, summary_lines, tolerance, verdict

__all__ = ["FORMATS", "ExportResult", "ParityError", "export_run", "model_kind"]

FORMATS = {
    "hf": "merged adapters, a plain transformers folder (any run)",
    "onnx": "model.onnx for an encoder or image classifier (--quantize int8: int8 weights)",
    "gguf": "a .gguf for llama.cpp, Llama-family causal LMs (--quantize f16 | bf16 | f32 | q8_0 | q5_1 | q5_0 | q4_1 | q4_0)",
}
_CHECKS = {"hf": hf_format, "onnx": onnx_format, "gguf": gguf_format}


@dataclass
class ExportResult:
    path: Path
    format: str
    quantize: str
    status: str
    """passed | failed | skipped (no parity check)"""
    report: dict = field(default_factory=dict)
    """export.json's content."""

    def lines(self) -> list[str]:
        return summary_lines(self.report)

    def __fspath__(self) -> str:  # an ExportResult stands for its folder: open(), Path() and from_pretrained take it
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def model_kind(model) -> str | None:
    """What parity compares for a model: "classifier" (a sequence-classification head), "image-classifier" (an
    image-classification head: pixels in), "language-model" (a causal LM or an encoder-decoder), None (none)."""
    name = type(model).__name__
    if name.endswith("ForImageClassification"):
        return "image-classifier"
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) or getattr(
        model.config, "is_encoder_decoder", False
    ):
        return "language-model"
    return None


def export_run(
    run: Run | str | Path,
    out: str | Path,
    format: str = "hf",
    quantize: str | None = None,
    parity: bool = True,
    parity_rows: int | None = None,
    max_metric_drop: float | None = None,
    force: bool = False,
    say=print,
) -> ExportResult:
    """Export a complete run to `out` in `format` and check it against the run (see the module docstring)."""
    run = run if isinstance(run, Run) else load_run(run)
    if format not in FORMATS:
        raise ConfigError(f"--format {format}: unknown; one of {', '.join(FORMATS)}")
    q = _CHECKS[format].check_quantize(quantize)
    out = Path(out)
    _check_out(out, run, force)
    if parity_rows is not None and parity_rows < 1:
        raise ConfigError(f"--parity-rows {parity_rows}: give at least 1 row (or --no-parity)")
    say(f"export: loading {run.path}")
    loaded = run.load(for_inference=False)  # float32 weights as trained, no autocast: the parity reference
    model, tokenizer, strategy = loaded.model, loaded.tokenizer, loaded.strategy
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = model_kind(plain)
    _check_fit(format, plain, strategy)
    notes = []
    if kind is None and parity:  # e.g. a user task's own head: written as it is, nothing to compare it on
        parity = False
        notes.append(f"no parity check: a {type(plain).__name__} is neither a classifier nor a language model")
    t0 = time.time()
    inputs = reference = None
    if parity:
        rows = parity_rows or DEFAULT_ROWS[kind]
        say(f"export: parity reference: the trained model on up to {rows} test rows")
        if kind == "classifier":
            inputs = classifier_inputs(run, tokenizer, rows, say)
            reference = torch_logits(model, inputs.batches)
        elif kind == "image-classifier":
            inputs = image_format.image_inputs(run, tokenizer, rows, say)
            reference = torch_logits(model, inputs.batches)
        else:
            inputs = lm_inputs(run, tokenizer, plain, rows, say)
            reference = lm_outputs(model, run.task, inputs, *stops_and_pad(tokenizer, plain), desc="parity: run")
    say("export: merging the adapters into the weights" if model is not plain else "export: writing")
    merged = strategy.merged(model).eval()
    with atomic_dir(out) as tmp:
        report = {
            "status": "skipped",
            "format": format,
            "quantize": q,
            "run": _run_info(run),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tunesmith_version": __version__,
            "pytorch_mb": round(parameter_bytes(merged) / 2**20, 2),
        }
        report.update(_write(format, q, merged, tokenizer, run, tmp, kind, say))
        report["notes"] = notes + report.get("notes", [])
        if (run.path / "MODEL_CARD.md").is_file():
            shutil.copyfile(run.path / "MODEL_CARD.md", tmp / "README.md")
            report["model_card"] = "README.md (the run's MODEL_CARD.md)"
        if parity:
            say(f"export: parity check of the {format} export")
            report["parity"] = _check(
                format, q, kind, merged, tokenizer, run, tmp, report, inputs, reference, max_metric_drop
            )
            report["status"] = "failed" if report["parity"]["failures"] else "passed"
        report["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(tmp / "export.json", report)
        _readable(tmp)
    result = ExportResult(out, format, q, report["status"], report)
    if result.status == "failed":
        raise ParityError(
            f"{out}: the {format} export fails parity with {run.path.name}: {'; '.join(report['parity']['failures'])} "
            f"(details in {out / 'export.json'}; the export is kept for inspection)",
            result.lines(),
        )
    return result


def _check_out(out: Path, run: Run, force: bool) -> None:
    if out.resolve() == run.path.resolve() or out.resolve() in run.path.resolve().parents:
        raise ConfigError(f"--out {out}: would replace the run folder itself; choose a new folder")
    if out.exists():
        if not force:
            raise ConfigError(f"--out {out}: already exists; choose another folder, or pass --force to replace it")
        if out.is_file() or (any(out.iterdir()) and not (out / "export.json").is_file()):
            raise ConfigError(
                f"--out {out}: exists and is not an earlier export (no export.json); --force only replaces exports"
            )


def _check_fit(format: str, model, strategy) -> None:
    """The format must fit the model; a user's mistake is one line saying which format does."""
    if format != "hf":
        _CHECKS[format].check_model(model)
    if not getattr(strategy, "mergeable", True):  # soft prompts, a quantized base (QLoRA)
        strategy.merged(model)  # raises the strategy's own explanation, before any work


def _precision(format: str, q: str) -> str:
    if format == "gguf":
        return "fp32" if q == "f32" else q if q in ("f16", "bf16", "q8_0") else "low-bit"
    return "int8" if q == "int8" else "fp32"


def _write(format: str, q: str, merged, tokenizer, run: Run, tmp: Path, kind: str, say) -> dict:
    """Write the artifact into `tmp`; returns what export.json records about it (files, size, how to load)."""
    info: dict = {}
    if kind in ("classifier", "image-classifier"):
        atomic_write_json(tmp / "labels.json", run.label_names)
    if kind == "classifier":
        info["max_length"] = run.config.data.max_length  # truncate as the run did: tokenizer(..., max_length=...)
    elif kind == "image-classifier":
        info.update(image_format.describe(merged, tokenizer))
    if format == "hf":
        say(f"export: writing a transformers folder ({type(merged).__name__})")
        hf_format.write_hf(merged, tokenizer, tmp)
        files = [p.name for p in hf_format.model_files(tmp)]
        info["load"] = f"transformers.{auto_class_for(tmp).__name__}.from_pretrained(DIR)"
        if kind == "image-classifier":
            info["load"] += "; transformers.AutoImageProcessor.from_pretrained(DIR)"
    elif format == "onnx":
        pixels = calibration = None
        if kind == "image-classifier":
            pixels = image_format.example_pixels(image_format.input_shape(tokenizer))
            if q == "int8":
                calibration, info["calibration"] = image_format.calibration_batches(run, tokenizer, say)
        info.update(onnx_format.write_onnx(merged, tmp, q, say, pixels, calibration))
        tokenizer.save_pretrained(tmp)
        merged.config.save_pretrained(tmp)
        files = [onnx_format.MODEL_FILE]
        reader = "AutoImageProcessor" if kind == "image-classifier" else "AutoTokenizer"
        info["load"] = f"onnxruntime.InferenceSession('DIR/model.onnx'); transformers.{reader}.from_pretrained(DIR)"
    else:
        name = gguf_format.file_name(q)
        notes = gguf_format.write_gguf(merged, tokenizer, tmp / name, q, run.path.name, say)
        info["notes"] = notes
        info["gguf"] = gguf_format.describe(tmp / name)
        files = [name]
        info["load"] = (
            f"llama-cli -m DIR/{name}; transformers.AutoModelForCausalLM.from_pretrained(DIR, gguf_file='{name}')"
        )
    sizes = {f: (tmp / f).stat().st_size for f in files}
    info.update(files=sizes, artifact=files[0], size_mb=round(sum(sizes.values()) / 2**20, 2))
    return info


def _check(format, q, kind, merged, tokenizer, run, tmp, report, inputs, reference, max_metric_drop) -> dict:
    """Run the written artifact on the parity inputs; the figures, tolerances and misses for export.json."""
    tol = tolerance(kind, _precision(format, q), max_metric_drop)
    tokenizer_checked = True
    if kind == "classifier":
        if format == "onnx":
            from transformers import AutoTokenizer

            runner = onnx_format.OnnxClassifier(tmp)
            export_logits, export_tokenizer = runner.logits, AutoTokenizer.from_pretrained(str(tmp))
        else:
            loaded, export_tokenizer = hf_format.load_hf(tmp)

            def export_logits(batch):
                return torch_logits(loaded, [batch])

        exported = np.concatenate([export_logits(b) for b in inputs.batches])
        measured = compare_classifier(reference, exported, inputs, export_tokenizer)
        measured["latency_ms"] = latency(merged, export_logits, inputs, tokenizer)
    elif kind == "image-classifier":
        measured = image_format.measure(format, merged, tmp, inputs, reference)
    else:
        if format == "gguf":
            loaded, export_tokenizer = gguf_format.load_gguf(tmp, report["artifact"])
            tokenizer_checked = report["gguf"]["pre_tokenizer"] in gguf_format.READ_BACK_EXACTLY
        else:
            loaded, export_tokenizer = hf_format.load_hf(tmp)
        exported = lm_outputs(
            loaded, run.task, inputs, *stops_and_pad(tokenizer, merged), desc=f"parity: {format} export"
        )
        measured = compare_lm(reference, exported, inputs, tokenizer, export_tokenizer)
    measured["reference"] = "the run's model as trained (adapters, if any, not merged), float32, no autocast"
    measured["tokenizer_checked"] = tokenizer_checked
    measured["tolerances"] = {"precision": _precision(format, q), **tol.__dict__}
    measured["failures"] = verdict(measured, tol, tokenizer_checked)
    return json.loads(json.dumps(measured, default=float))  # numpy scalars -> plain numbers


def _readable(folder: Path) -> None:
    """Files as readable as any other the user writes (some writers create theirs 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~mask)


def _run_info(run: Run) -> dict:
    info = run.info
    return {
        "path": str(run.path),
        "name": run.path.name,
        "task": info.get("task"),
        "strategy": info.get("strategy"),
        "model": (info.get("model") or {}).get("name"),
        "precision": info.get("precision"),
        "test": run.task.headline(run.metrics) if run.metrics else {},
    }
