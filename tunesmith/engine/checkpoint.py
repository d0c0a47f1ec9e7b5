"""Atomic checkpoints of everything a resumed run needs to continue exactly where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..strategies.base import trainable_state
from ..utils import atomic_dir


def save_checkpoint(
    folder: Path, model: nn.Module, optimizer, scheduler, state: dict, rng_states: list, names: set[str] | None = None
) -> None:
    """Trainable weights (safetensors), optimizer + scheduler + RNG (tensors only), loop state (JSON).

    Written into a temporary folder and renamed: a crash mid-write leaves the previous checkpoint.
    """
    with atomic_dir(folder) as tmp:
        save_file(trainable_state(model, names), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states},
            tmp / "optim.pt",
        )
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_weights(folder: Path, model: nn.Module) -> None:
    """Put the checkpoint's trainable weights into the model (names must match)."""
    weights = load_file(str(folder / "trainable.safetensors"))
    missing = set(weights) - {n for n, _ in model.named_parameters()} - {n for n, _ in model.named_buffers()}
    if missing:
        raise RuntimeError(f"checkpoint {folder} has weights the model lacks: {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler) -> tuple[dict, list]:
    load_weights(folder, model)
    blob = torch.load(folder / "optim.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    return json.loads((folder / "state.json").read_text()), blob["rng"]
