"""LoRA (PEFT): low-rank adapters on the attention/MLP projections; the head trains fully."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .peft_base import PeftStrategy, head_modules, peft_task, pointwise_layers


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

    found = DEFAULTS.get(getattr(model.config, "model_type", ""))
    if found is None and peft_task(model) is None:  # a vision model PEFT has no table for: its pointwise layers
        return pointwise_layers(model)
    return found or "all-linear"


class LoraStrategy(PeftStrategy):
    name = "lora"
    tune_space = {
        "train.lr": {"float": [1e-4, 3e-3], "log": True},
        "strategy.r": {"int": [4, 64], "log": True},
        "strategy.alpha": {"float": [8.0, 64.0], "log": True},
        "strategy.dropout": {"float": [0.0, 0.3]},
        "strategy.target_modules": {"categorical": [None, ["all-linear"]]},
    }
    plan_family = "low-rank"
    shards = True  # not with a quantized base (refused by the loop)
    summary = "Low-rank adapters + head train (~1-3% of weights). Little memory, tiny saves, little forgetting; quantize: nf4 = QLoRA."
    Options = LoraOptions

    @property
    def mergeable(self) -> bool:  # folding an adapter into a 4/8-bit base would re-quantize (lossy)
        return self.options.quantize == "none"

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        use_fast_dropout(model)  # PyTorch's CPU dropout made LoRA slower than full fine-tuning (see below)
        return model

    def peft_config(self, model: nn.Module):
        from peft import LoraConfig

        o = self.options
        targets = "all-linear" if o.target_modules == ["all-linear"] else o.target_modules
        return LoraConfig(
            task_type=peft_task(model),
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            target_modules=targets or default_targets(model),
            use_rslora=o.use_rslora,
            use_dora=o.use_dora,
            modules_to_save=head_modules(model),
        )


# --------------------------------------------------------------------------------------------
# Dropout that costs little on CPU.
#
# Measured on MiniLM (batch 32, bf16 autocast, 2 CPU cores): LoRA with dropout 0.1 on query/key/value/dense ran at
# 488 ms/step against 313 ms/step with dropout 0, and used ~180 MB more memory. PyTorch's CPU dropout draws a float
# Bernoulli mask (slow per-element RNG), keeps that float mask for backward, and PEFT gives every adapter its own
# dropout, so the one input of query, key and value is dropped three times. Below: one 16-bit random draw per
# element, a bool mask kept for backward, the output already in the autocast dtype (the adapter would cast it
# anyway), and adapters that read the same tensor share one mask (what a fused-QKV model, e.g. GPT-2, does anyway).


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, drop: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(drop)
        ctx.scale, ctx.in_dtype = scale, x.dtype
        return x.to(dtype, copy=True).masked_fill_(drop, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0).mul_(ctx.scale).to(ctx.in_dtype), None, None, None


def drop_mask(shape: torch.Size, p: float, device) -> torch.Tensor:
    """True where an element is dropped: uniform 15-bit integers below p x 2^15 (p exact to 3e-5)."""
    bits = torch.empty(shape, dtype=torch.int16, device=device).random_()  # uniform in [0, 32767]
    return bits < round(p * 32768)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout whose output is in the autocast dtype when autocast is on."""
    dtype = x.dtype
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    return _Dropout.apply(x, drop_mask(x.shape, p, x.device), 1.0 / (1.0 - p), dtype)


class _LastDrop:
    """The most recent (input, output) pair, held weakly: a second adapter reading the same input reuses the output."""

    def __init__(self):
        self.x = self.out = None
        self.version = -1

    def get(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.x is not None and self.x() is x and x._version == self.version:
            out = self.out()
            if out is not None and torch.is_grad_enabled() == out.requires_grad:
                return out
        return None

    def put(self, x: torch.Tensor, out: torch.Tensor) -> None:
        self.x, self.out, self.version = weakref.ref(x), weakref.ref(out), x._version


class FastDropout(nn.Module):
    """Drop-in for nn.Dropout (same p, same expectation); `shared` lets modules reading one tensor share the mask."""

    def __init__(self, p: float, shared: _LastDrop | None = None):
        super().__init__()
        self.p = p
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.shared is not None and (out := self.shared.get(x)) is not None:
            return out
        out = dropout(x, self.p)
        if self.shared is not None:
            self.shared.put(x, out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared={self.shared is not None}"


def use_fast_dropout(model: nn.Module) -> int:
    """Swap PEFT's per-adapter LoRA dropouts (sharing masks between consecutive readers of one tensor) and the
    model's own nn.Dropout layers for FastDropout. Returns how many were swapped."""
    shared = _LastDrop()  # one for the whole model: only the last input is remembered
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for key, child in list(drops.items()):
                if type(child) is nn.Dropout and child.p > 0:
                    drops[key] = FastDropout(child.p, shared)
                    swapped += 1
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(module, name, FastDropout(child.p))
                swapped += 1
    return swapped
