"""IA3 (PEFT): learned per-channel rescaling of keys, values and feed-forward activations."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .peft_base import PeftStrategy, head_modules, peft_task, pointwise_layers


@dataclass
class Ia3Options:
    target_modules: list[str] | None = None
    """Modules to rescale; null: PEFT's default for the architecture."""
    feedforward_modules: list[str] | None = None
    """Which of the targets are feed-forward layers (scaled on the input); null: PEFT's default."""


class Ia3Strategy(PeftStrategy):
    name = "ia3"
    tune_space = {"train.lr": {"float": [1e-3, 3e-2], "log": True}}
    plan_family = "adapter"
    summary = "IA3 rescaling vectors + head (~0.1% of weights). Fewest parameters of the adapters; few-shot data."
    Options = Ia3Options

    def peft_config(self, model: nn.Module):
        from peft import IA3Config

        o = self.options
        targets, feedforward = o.target_modules, o.feedforward_modules
        if targets is None and peft_task(model) is None:  # vision: rescale the inputs of the pointwise layers
            targets = pointwise_layers(model)
            feedforward = feedforward if feedforward is not None else targets
        return IA3Config(
            task_type=peft_task(model),
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=head_modules(model),
        )
