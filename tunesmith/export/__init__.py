"""Exports of a finished run. `hf`: adapters merged into the weights, a plain transformers folder."""

from __future__ import annotations

from pathlib import Path

from ..runs.run import Run
from ..utils import atomic_dir


def export_run(run: Run, out: str | Path) -> Path:
    """A plain Hugging Face folder (adapters merged into the weights) that loads without tunesmith or PEFT."""
    loaded = run.load(for_inference=False)  # the weights as trained, not cast for inference
    merged = loaded.strategy.merged(loaded.model)
    with atomic_dir(Path(out)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
    return Path(out)
