"""Prompt tuning (PEFT): N learned virtual tokens prepended to the input; the model stays frozen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .peft_base import PeftStrategy, peft_task


@dataclass
class PromptTuningOptions:
    virtual_tokens: int = 20
    """Number of learned soft-prompt tokens."""
    init_text: str | None = None
    """Initialise the soft prompt from the embeddings of this text (else random)."""


class PromptTuningStrategy(PeftStrategy):
    name = "prompt-tuning"
    tune_space = {"train.lr": {"float": [1e-3, 3e-2], "log": True}, "strategy.virtual_tokens": {"int": [8, 32]}}
    plan_family = "adapter"
    virtual_tokens = True
    summary = "Learned soft-prompt tokens + head; the model stays frozen. Tiny saves; shines on large models, weak on small ones."
    Options = PromptTuningOptions
    mergeable = False

    def peft_config(self, model: nn.Module):
        from peft import PromptTuningConfig, PromptTuningInit

        o = self.options
        kwargs = {}
        if o.init_text:
            kwargs = {
                "prompt_tuning_init": PromptTuningInit.TEXT,
                "prompt_tuning_init_text": o.init_text,
                "tokenizer_name_or_path": getattr(model.config, "_name_or_path", None),
            }
        return PromptTuningConfig(task_type=peft_task(model), num_virtual_tokens=o.virtual_tokens, **kwargs)
