"""What every strategy is: it changes exactly three things and shares everything else.

1. how the model is prepared (`prepare`: freeze, wrap with adapters, ...);
2. which parameters train and with which learning rate (`trainable_names`, `param_groups`, `on_step`);
3. what is saved and how it is loaded back (`save` / `load`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..models.loading import auto_class_for


@dataclass
class NoOptions:
    """This strategy has no options."""


@dataclass
class LayerDecayOptions:
    layer_lr_decay: float = 1.0
    """Discriminative learning rates: layer i from the top trains at lr x decay^i (1.0 = same lr everywhere)."""


class Strategy:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    """One line: when to use it (shown by `tunesmith strategies`)."""
    Options: ClassVar[type] = NoOptions
    # ---- capabilities: what the engine, the tasks and the planner ask instead of testing the name
    features_only: ClassVar[bool] = False
    """True when only the head trains on cached backbone features (the backbone runs once): `training_view`."""
    supports_distributed: ClassVar[bool] = True
    shards: ClassVar[bool] = False
    """True when `train.distributed: fsdp` can shard it (a fixed set of trained weights, no cached features)."""
    virtual_tokens: ClassVar[bool] = False
    """True when the strategy prepends trained virtual tokens to every row (prompt/prefix tuning): packing is off."""
    saves_base: ClassVar[bool] = True
    """True when `save` writes the frozen weights too (they must then stay exactly as pretrained: no dtype casts)."""
    tune_space: ClassVar[dict] = {"train.lr": {"float": [1e-5, 1e-4], "log": True}}
    """`tunesmith tune`'s default space for this strategy (its learning-rate range and its own keys), in the
    `tune.space` syntax; the tool adds warmup, weight decay and epochs."""
    plan_family: ClassVar[str | None] = None
    """How `tunesmith plan` models it: dense | top-layers | growing | head-only | low-rank | adapter (None: as dense, with a note)."""

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    @property
    def quantize(self) -> str:
        """none | nf4 | int8: the precision the frozen base is loaded in (QLoRA)."""
        return getattr(self.options, "quantize", "none")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return the model to train (possibly wrapped); set requires_grad on what trains."""
        return model

    def training_view(self, model: nn.Module, batches: dict, ctx) -> tuple[nn.Module, dict]:
        """What the loop trains and on which batches; default: the prepared model on the task's batches."""
        return model, batches

    def trainable_names(self, model: nn.Module) -> set[str]:
        """Every parameter that trains at some point of the run (what the optimizer and checkpoints hold)."""
        return {n for n, p in model.named_parameters() if p.requires_grad}

    def on_step(self, model: nn.Module, step: int, steps_per_epoch: int) -> str | None:
        """Called before each optimizer step; may change what trains. Returns a message when it did."""
        return None

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: no weight decay on biases and norm weights; per-layer lr with `layer_lr_decay`."""
        names = self.trainable_names(model)
        decay_rate = getattr(self.options, "layer_lr_decay", 1.0)
        depths = parameter_depths(model) if decay_rate != 1.0 else {}
        top = max(depths.values(), default=0)
        groups: dict[tuple, dict] = {}
        for name, p in model.named_parameters():
            if name not in names:
                continue
            scale = decay_rate ** (top - depths[name]) if depths else 1.0
            key = (p.ndim < 2, scale)
            group = groups.setdefault(
                key, {"params": [], "weight_decay": 0.0 if p.ndim < 2 else weight_decay, "lr": lr * scale}
            )
            group["params"].append(p)
        return list(groups.values())

    def save(self, model: nn.Module, folder: Path) -> None:
        """Save what this strategy trained so that `load` can rebuild the model (safetensors)."""
        model.save_pretrained(folder, safe_serialization=True)

    def load(self, folder: Path, load_base: Callable[[], nn.Module]) -> nn.Module:
        """Rebuild the trained model from `folder`; `load_base` gives the pretrained model + fresh head."""

        return auto_class_for(folder).from_pretrained(folder)

    def merged(self, model: nn.Module) -> nn.Module:
        """The trained model as a plain transformers model (adapters merged into the weights)."""
        return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: the ModuleList holding the most parameters."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"{type(model).__name__}: no stack of layers found")
    return best


def parameter_depths(model: nn.Module) -> dict[str, int]:
    """Depth of each parameter: 0 = embeddings (below the stack), 1..L = layer i, L+1 = above (head, final norm)."""
    prefix, stack = layer_stack(model)
    depths: dict[str, int] = {}
    seen_stack = False
    for name, _ in model.named_parameters():
        if name.startswith(prefix + "."):
            seen_stack = True
            depths[name] = int(name[len(prefix) + 1 :].split(".")[0]) + 1
        else:
            depths[name] = len(stack) + 1 if seen_stack else 0
    return depths


def set_trainable(model: nn.Module, names: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


def trainable_state(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The parameters that train (or `names`), by name, and every batch norm's running statistics (buffers that
    change in training): what a checkpoint has to keep for a resumed run, or the best step, to be exact."""
    out = {
        n: p.detach().clone().contiguous()
        for n, p in model.named_parameters()
        if (p.requires_grad if names is None else n in names)
    }
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for b, t in module.named_buffers(recurse=False):
                if t is not None:
                    out[f"{name}.{b}" if name else b] = t.detach().clone().contiguous()
    return out
