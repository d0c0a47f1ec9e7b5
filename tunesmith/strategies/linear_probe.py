"""Linear probe (feature extraction): the backbone is frozen, only the head trains.

Because the backbone never changes, its features are computed once, cached on disk (keyed by the
model and the data fingerprint), and the head trains on the cache: the backbone runs once per
example instead of once per example per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine.batches import Features, map_batches
from ..errors import ConfigError
from ..models.features import cache_key, cached_features
from .base import Strategy, set_trainable

HEAD_NAMES = ("classifier", "score")


@dataclass
class LinearProbeOptions:
    cache: bool = True
    """Keep the computed features in `<output_dir>/.cache/features` for later runs on the same model and data."""


def head_name(model: nn.Module) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ConfigError(
        f"linear-probe: {type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}; use strategy freeze with layers: 0"
    )


class HeadOnly(nn.Module):
    """The model's own head applied to cached features (shares its parameters with the full model)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, **_) -> SimpleNamespace:
        out = self.head(features)
        return SimpleNamespace(logits=out[:, 0] if out.ndim == 3 else out)


class LinearProbeStrategy(Strategy):
    name = "linear-probe"
    tune_space = {"train.lr": {"float": [1e-3, 1e-1], "log": True}}
    summary = "Backbone frozen, head trains on cached features. Fastest by far; a strong baseline; weakest when the domain shifts."
    Options = LinearProbeOptions
    features_only = True
    saves_base = False
    plan_family = "head-only"

    def prepare(self, model: nn.Module) -> nn.Module:
        name = head_name(model)
        set_trainable(model, {n for n, _ in model.named_parameters() if n.startswith(name + ".")})
        return model

    @torch.no_grad()
    def features(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """What the head sees for this batch: its input, captured by a forward hook (first token of a sequence)."""
        name = head_name(model)
        seen = {}
        hook = getattr(model, name).register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
        try:
            model(**batch)
        finally:
            hook.remove()
        x = seen["x"]
        if x.ndim == 4:  # a vision head that flattens pooled maps itself (ResNet: Flatten -> Linear)
            x = x.flatten(1)
        if x.ndim == 3:  # e.g. RoBERTa's head takes the sequence and reads its first token
            if name == "score":
                raise ConfigError(
                    "linear-probe: decoder-style heads (score) pool the last token; use strategy freeze with layers: 0"
                )
            x = x[:, :1]
        return x.float()

    def head_model(self, model: nn.Module) -> HeadOnly:
        return HeadOnly(getattr(model, head_name(model)))

    def training_view(self, model: nn.Module, batches: dict, ctx) -> tuple[nn.Module, dict]:
        """Run the frozen backbone once per split (or read the cache), then train the head on the features."""
        model.to(ctx.device).eval()
        out = {}
        for split, tok in batches.items():
            key = cache_key(ctx.model_key, tok.fingerprint)

            def compute(tok=tok):
                def fn(inputs):
                    with ctx.autocast():
                        return self.features(model, {k: v.to(ctx.device) for k, v in inputs.items()})

                return torch.from_numpy(map_batches(tok, ctx.cfg.eval.batch_size, fn, ctx.rank, ctx.world))

            t0 = time.perf_counter()
            use = self.options.cache
            x, hit = cached_features(ctx.cache_dir / "features", key, compute, read=use, write=use and ctx.is_main)
            ctx.say(
                f"linear-probe: {split} features {tuple(x.shape)} {'from cache' if hit else f'computed in {time.perf_counter() - t0:.1f}s'}"
            )
            out[split] = Features(x, tok.targets)
        return self.head_model(model), out

    def save(self, model: nn.Module, folder: Path) -> None:
        """Only the head is new: save it (a few KB), not the unchanged backbone."""
        name = head_name(model)
        save_file(
            {n: p.detach().contiguous() for n, p in model.named_parameters() if n.startswith(name + ".")},
            str(folder / "head.safetensors"),
        )

    def load(self, folder: Path, load_base: Callable[[], nn.Module]) -> nn.Module:
        model = load_base()
        model.load_state_dict(load_file(str(folder / "head.safetensors")), strict=False)
        return model
