"""Full fine-tuning: every weight trains (optionally with layer-wise learning-rate decay)."""

from dataclasses import dataclass

from .base import LayerDecayOptions, Strategy


@dataclass
class FullOptions(LayerDecayOptions):
    """Options of full fine-tuning."""


class FullStrategy(Strategy):
    name = "full"
    tune_space = {"train.lr": {"float": [1e-5, 1e-4], "log": True}}
    plan_family = "dense"
    shards = True
    summary = "All weights train. Best accuracy with enough data; most memory; saves the whole model."
    Options = FullOptions


@dataclass
class DiscriminativeOptions(LayerDecayOptions):
    layer_lr_decay: float = 0.8
    """Layer i from the top trains at lr x decay^i (ULMFiT / layer-wise lr decay)."""


class DiscriminativeLrStrategy(Strategy):
    name = "discriminative-lr"
    tune_space = {
        "train.lr": {"float": [1e-5, 2e-4], "log": True},
        "strategy.layer_lr_decay": {"float": [0.6, 1.0]},
    }
    plan_family = "dense"
    shards = True
    summary = "All weights train, lower layers at lower lr (lr x decay^depth). Guards pretrained features; also an option of full/freeze/gradual-unfreeze."
    Options = DiscriminativeOptions
