"""L2-SP and EWC: penalties on how far the trained weights moved from where training started.

    l2sp = sum_i (w_i - w0_i)^2          ewc = sum_i F_i (w_i - w0_i)^2     (F: diagonal Fisher, mean 1)

Only what trains is anchored, and no second copy of the model is kept for adapters:
- a trained weight of the pretrained model (full / freeze / gradual-unfreeze): its starting value is kept;
- a LoRA layer: the weight change it adds, scale x B A, is what moved (w - w0 = s B A), so the penalty is read
  off the adapter alone (for l2sp ||s B A||^2 = s^2 sum((B^T B) * (A A^T)), r x r matrices: nothing of the
  layer's size is built); EWC weighs that change by the base weight's Fisher;
- other adapter parameters (IA3 vectors, soft prompts): their starting value is kept (they are small);
- a newly initialised head has no pretrained value: plain weight decay is its regulariser, as in the L2-SP paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

PEFT_WRAPPING = (".modules_to_save.default", ".original_module", ".base_layer")


def canonical_name(name: str) -> str:
    """A parameter's name in the plain transformers model (PEFT's wrapping taken off)."""
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    for part in PEFT_WRAPPING:
        name = name.replace(part, "")
    return name


def new_weights(model: nn.Module) -> set[str]:
    """Names (canonical) of the weights that loading initialised afresh (a task head), as recorded at load."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "tunesmith_new_weights", ()))


@dataclass
class LoraTerm:
    """One LoRA layer's adapter: its weight change is scale x B @ A (transposed for Conv1D-style layers)."""

    a: nn.Parameter
    b: nn.Parameter
    scale: float
    transpose: bool
    base: nn.Parameter

    def delta(self) -> torch.Tensor:
        d = (self.b @ self.a) * self.scale
        return d.T if self.transpose else d

    def squared_norm(self) -> torch.Tensor:
        a, b = self.a.float(), self.b.float()
        return (self.scale**2) * ((b.T @ b) * (a @ a.T)).sum()


@dataclass
class Anchors:
    """What the parameter penalties read: anchored parameters with their start, and LoRA layers."""

    params: dict[str, tuple[nn.Parameter, torch.Tensor]] = field(default_factory=dict)
    lora: dict[str, LoraTerm] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.params) + len(self.lora)

    def l2sp(self) -> torch.Tensor:
        total = _zero(self)
        for p, start in self.params.values():
            total = total + (p.float() - start).pow(2).sum()
        for term in self.lora.values():
            total = total + term.squared_norm()
        return total

    def ewc(self, fisher: dict[str, torch.Tensor]) -> torch.Tensor:
        total = _zero(self)
        for name, (p, start) in self.params.items():
            total = total + (fisher[name] * (p.float() - start).pow(2)).sum()
        for name, term in self.lora.items():
            total = total + (fisher[name] * term.delta().float().pow(2)).sum()
        return total


def anchors_of(model: nn.Module) -> Anchors:
    """The anchored parameters of a prepared model (after strategy.prepare; before any training step)."""
    out = Anchors()
    lora_params: set[int] = set()
    for module_name, module in model.named_modules():
        terms = _lora_terms(module)
        for adapter, term in terms.items():
            out.lora[f"{module_name}.{adapter}"] = term
            lora_params |= {id(term.a), id(term.b)}
    fresh = new_weights(model)
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in lora_params or canonical_name(name) in fresh:
            continue
        out.params[name] = (p, p.detach().float().clone())
    return out


def _lora_terms(module: nn.Module) -> dict[str, LoraTerm]:
    """The active LoRA adapters of a PEFT LoRA layer wrapping a Linear/Conv1D (embedding LoRA is anchored as params)."""
    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    base = getattr(module, "base_layer", None)
    if not isinstance(lora_a, nn.ModuleDict) or base is None or getattr(base, "weight", None) is None:
        return {}
    out = {}
    for adapter in getattr(module, "active_adapters", list(lora_a)):
        if adapter not in lora_a or not hasattr(lora_a[adapter], "weight"):
            continue
        a, b = lora_a[adapter].weight, lora_b[adapter].weight
        if a.ndim != 2 or not a.requires_grad:
            continue
        out[adapter] = LoraTerm(
            a, b, float(module.scaling[adapter]), bool(getattr(module, "fan_in_fan_out", False)), base.weight
        )
    return out


def estimate_fisher(
    model: nn.Module,
    anchors: Anchors,
    examples: Iterable[dict],
    loss: Callable[[dict], torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the anchored parameters, normalised to mean 1 over all of them.

    `examples` yields one example's inputs at a time and `loss(inputs)` is its loss per unit (token or example):
    F = mean over examples of the squared gradient. A LoRA layer's entry is its base weight's Fisher (the base is
    made to require gradients for the estimate only). Dropout is off (model.eval()).
    """
    was_training = model.training
    model.eval()
    # A quantized base (QLoRA) has no gradient: its layers keep L2-SP's uniform weighting (Fisher 1).
    uniform = {n: t for n, t in anchors.lora.items() if not t.base.is_floating_point()}
    bases = [t.base for n, t in anchors.lora.items() if n not in uniform]
    flags = [b.requires_grad for b in bases]
    for b in bases:
        b.requires_grad_(True)
    targets = {n: p for n, (p, _) in anchors.params.items()}
    targets.update({n: t.base for n, t in anchors.lora.items() if n not in uniform})
    sums = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in targets.items()}
    count = 0
    try:
        for inputs in examples:
            for p in targets.values():
                p.grad = None
            loss(inputs).backward()
            for n, p in targets.items():
                if p.grad is not None:
                    sums[n] += p.grad.detach().float().pow(2)
            count += 1
            if progress:
                progress(count)
    finally:
        for p in targets.values():
            p.grad = None
        for b, flag in zip(bases, flags):
            b.requires_grad_(flag)
        model.train(was_training)
    if count == 0:
        raise ValueError("estimate_fisher: no examples")
    total = sum(float(s.sum()) for s in sums.values())
    numel = sum(s.numel() for s in sums.values())
    mean = total / (count * max(1, numel))
    ones = {n: torch.ones(t.delta().shape, device=t.a.device) for n, t in uniform.items()}
    if mean <= 0:  # no gradient reached the anchored weights: EWC falls back to L2-SP's uniform weighting
        return {**{n: torch.ones_like(s) for n, s in sums.items()}, **ones}
    return {**{n: s / (count * mean) for n, s in sums.items()}, **ones}


def _zero(anchors: Anchors) -> torch.Tensor:
    """A float32 zero on the anchored weights' device."""
    first = next(iter(anchors.params.values()), None)
    tensor = first[0] if first else next((t.a for t in anchors.lora.values()), torch.zeros(()))
    return tensor.new_zeros((), dtype=torch.float32)
