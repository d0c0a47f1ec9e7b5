"""LoRA (PEFT): low-rank adapters on the attention/MLP projections; the head trains fully."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .base import Strategy


@dataclass
class LoraOptions:
    r: int = 8
    """Rank of the update matrices."""
    alpha: float = 16.0
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = 0.1
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; null: PEFT's default for the architecture (else all-linear); `all-linear`: every linear layer."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r) (better for large ranks)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): a learned magnitude per output; slower, sometimes better."""


def default_targets(model: nn.Module) -> list[str] | str:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    return DEFAULTS.get(getattr(model.config, "model_type", ""), "all-linear")


class LoraStrategy(Strategy):
    name = "lora"
    summary = "Low-rank adapters + head train (~1-3% of weights). Little memory, tiny saves, little forgetting."
    Options = LoraOptions

    def peft_config(self, model: nn.Module):
        from peft import LoraConfig, TaskType

        o = self.options
        targets = o.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            target_modules=targets or default_targets(model),
            use_rslora=o.use_rslora,
            use_dora=o.use_dora,
        )

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        from ..errors import ConfigError

        try:
            return get_peft_model(model, self.peft_config(model))
        except ValueError as err:
            raise ConfigError(f"strategy.target_modules: {str(err).splitlines()[0]}") from None

    def save(self, model: nn.Module, folder: Path) -> None:
        model.save_pretrained(folder)  # adapter weights + trained head, as safetensors

    def load(self, folder: Path, load_base: Callable[[], nn.Module]) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(), folder)
