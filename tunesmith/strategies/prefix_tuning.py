"""Prefix tuning (PEFT): learned key/value prefixes in every attention layer; the model stays frozen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .peft_base import PeftStrategy, peft_task


@dataclass
class PrefixTuningOptions:
    virtual_tokens: int = 20
    """Length of the learned prefix in every layer."""


class PrefixTuningStrategy(PeftStrategy):
    name = "prefix-tuning"
    tune_space = {"train.lr": {"float": [1e-3, 3e-2], "log": True}}
    plan_family = "adapter"
    virtual_tokens = True
    summary = (
        "Learned key/value prefixes in every layer + head; the model stays frozen. Between prompt tuning and LoRA."
    )
    Options = PrefixTuningOptions
    mergeable = False

    def peft_config(self, model: nn.Module):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=peft_task(model), num_virtual_tokens=self.options.virtual_tokens)
