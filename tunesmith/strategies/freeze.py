"""Partial fine-tuning: the top N layers and the head train; the rest stays as pretrained."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .base import LayerDecayOptions, Strategy, parameter_depths, set_trainable


@dataclass
class FreezeOptions(LayerDecayOptions):
    layers: int | None = 2
    """Train the top N transformer layers plus everything above them (pooler, head)."""
    pattern: str | None = None
    """Instead of `layers`: a regular expression; parameters whose name matches it train (plus the head)."""
    train_embeddings: bool = False
    """Also train the embedding layer (useful for new vocabulary)."""


class FreezeStrategy(Strategy):
    name = "freeze"
    tune_space = {"train.lr": {"float": [1e-5, 3e-4], "log": True}}
    plan_family = "top-layers"
    shards = True
    summary = "Top N layers + head train, the rest frozen. Small data or close domain; fast, less forgetting."
    Options = FreezeOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        o = self.options
        depths = parameter_depths(model)
        top = max(depths.values())
        head = {n for n, d in depths.items() if d == top}
        if o.pattern:
            try:
                rx = re.compile(o.pattern)
            except re.error as err:
                raise ConfigError(f"strategy.pattern: invalid regular expression ({err})") from None
            keep = {n for n in depths if rx.search(n)} | head
        else:
            n_layers = top - 1
            if o.layers is None or not 0 <= o.layers <= n_layers:
                raise ConfigError(f"strategy.layers must be between 0 and {n_layers} for this model (got {o.layers})")
            keep = {n for n, d in depths.items() if d > n_layers - o.layers}
        if o.train_embeddings:
            keep |= {n for n, d in depths.items() if d == 0}
        set_trainable(model, keep)
        return model
