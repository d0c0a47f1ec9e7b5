"""LoRA (PEFT): low-rank adapters on the attention/MLP projections; the head trains fully."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from .peft_base import PeftStrategy, peft_task


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
    quantize: Literal["none", "nf4", "int8"] = "none"
    """QLoRA: quantize the frozen base to 4-bit NF4 (double quantization) or 8-bit with bitsandbytes."""


def default_targets(model: nn.Module) -> list[str] | str:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    return DEFAULTS.get(getattr(model.config, "model_type", ""), "all-linear")


class LoraStrategy(PeftStrategy):
    name = "lora"
    summary = "Low-rank adapters + head train (~1-3% of weights). Little memory, tiny saves, little forgetting; quantize: nf4 = QLoRA."
    Options = LoraOptions

    @property
    def mergeable(self) -> bool:  # folding an adapter into a 4/8-bit base would re-quantize (lossy)
        return self.options.quantize == "none"

    def peft_config(self, model: nn.Module):
        from peft import LoraConfig

        o = self.options
        targets = "all-linear" if o.target_modules == ["all-linear"] else o.target_modules
        return LoraConfig(
            task_type=peft_task(model), r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
            target_modules=targets or default_targets(model), use_rslora=o.use_rslora, use_dora=o.use_dora,
        )
