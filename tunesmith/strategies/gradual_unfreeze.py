"""Gradual unfreezing (ULMFiT): the head trains first, then one layer group from the top every K steps."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import LayerDecayOptions, Strategy, parameter_depths, set_trainable


@dataclass
class GradualUnfreezeOptions(LayerDecayOptions):
    every: int | None = None
    """Unfreeze the next layer group every N optimizer steps; null: at every epoch boundary."""
    start_layers: int = 0
    """Layers (from the top) already trainable at step 0, besides the head."""
    layer_lr_decay: float = 1.0
    """Layer i from the top trains at lr x decay^i once it is unfrozen (1.0 = same lr everywhere)."""


class GradualUnfreezeStrategy(Strategy):
    name = "gradual-unfreeze"
    tune_space = {"train.lr": {"float": [1e-5, 1e-4], "log": True}}
    plan_family = "growing"
    summary = "Head first, then one layer from the top at a time (ULMFiT). Small data, guards against forgetting."
    Options = GradualUnfreezeOptions
    supports_distributed = False  # DDP fixes the set of synchronised parameters when it wraps the model

    def prepare(self, model: nn.Module) -> nn.Module:
        self._depths = parameter_depths(model)
        self._top = max(self._depths.values())
        self._open = -1
        self.on_step(model, 0, 1)
        return model

    def trainable_names(self, model: nn.Module) -> set[str]:
        return set(self._depths)

    def open_layers(self, step: int, steps_per_epoch: int) -> int:
        """Transformer layers (from the top) trainable at `step`; above the stack means embeddings too."""
        every = self.options.every or steps_per_epoch
        return self.options.start_layers + step // max(1, every)

    def on_step(self, model: nn.Module, step: int, steps_per_epoch: int) -> str | None:
        n = min(self.open_layers(step, steps_per_epoch), self._top)  # top = L + 1: embeddings last
        if n == self._open:
            return None
        self._open = n
        lowest = self._top - n  # depths >= lowest train (the head has depth top)
        set_trainable(model, {name for name, d in self._depths.items() if d >= lowest})
        what = "embeddings and all layers" if lowest == 0 else (f"top {n} layer(s)" if n else "head only")
        return f"gradual-unfreeze: {what} + head trainable from step {step}"
