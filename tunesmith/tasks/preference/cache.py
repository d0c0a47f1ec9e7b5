"""The reference model's log-probabilities of every row, saved once in the run folder (a resumed run reuses them:
the reference never changes, so precomputing is exact)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def load_reference_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """{split: [rows, groups]} when `path` holds log-probabilities computed for `key` (reference, data), else None."""
    if not path.is_file():
        return None

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
    return load_file(str(path))


def save_reference_cache(path: Path, key: str, values: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in values.items()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)
