"""Strategies that wrap the model with a PEFT adapter: one `peft_config()` each, the rest shared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from .base import Strategy


class PeftStrategy(Strategy):
    saves_base = False  # the adapter (+ head) alone is saved; the base is loaded from its source
    mergeable = True
    """Whether the adapter can be folded into the base weights (LoRA, IA3: yes; soft prompts: no)."""

    def peft_config(self, model: nn.Module):
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        try:
            return get_peft_model(model, self.peft_config(model))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"strategy {self.name}: {str(err).splitlines()[0]}") from None

    def save(self, model: nn.Module, folder: Path) -> None:
        model.save_pretrained(folder)  # adapter weights + trained head, as safetensors

    def load(self, folder: Path, load_base: Callable[[], nn.Module]) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(), folder)

    def merged(self, model: nn.Module) -> nn.Module:
        if not self.mergeable:
            raise ConfigError(
                f"strategy {self.name}: its adapter cannot be merged into the base weights; load the run with tunesmith (or PEFT) instead"
            )
        return model.merge_and_unload()


def peft_task(model: nn.Module):
    """PEFT's task type for the model: it decides which head modules train and how generation is wired."""
    from peft import TaskType

    if getattr(model.config, "is_encoder_decoder", False):
        return TaskType.SEQ_2_SEQ_LM
    if type(model).__name__.endswith("ForCausalLM"):
        return TaskType.CAUSAL_LM
    return TaskType.SEQ_CLS
