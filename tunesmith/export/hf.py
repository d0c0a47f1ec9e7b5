"""A plain Hugging Face folder: adapters merged into the weights, the tokenizer with its chat template (or, for an
image classifier, its image processor), the generation settings; it loads with transformers alone (no PEFT; a
model of tunesmith's own MBConv family also wants `import tunesmith.models.vision`, export.json says so)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..models.loading import auto_class_for

QUANTIZE = {"none": "the weights as trained (merged), safetensors"}


def check_quantize(value: str | None) -> str:
    q = (value or "none").lower()
    if q not in QUANTIZE:
        raise ConfigError(
            f"--quantize {value}: hf exports keep the trained weights; quantized files come from --format onnx "
            f"(--quantize int8) or --format gguf (--quantize q8_0, ...)"
        )
    return q


def write_hf(model, tokenizer, folder: Path) -> None:
    """save_pretrained of the merged model and its tokenizer (which carries the chat template) or image processor."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_hf(folder: Path, tokenizer: bool = True):
    """The exported folder read back with transformers alone: (model in float32, eval mode, tokenizer); with
    `tokenizer=False` the second item is None (an image classifier's processor is read by the caller)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = auto_class_for(folder).from_pretrained(str(folder), dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder)) if tokenizer else None


def model_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))
