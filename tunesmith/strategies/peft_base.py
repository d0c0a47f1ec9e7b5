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
    """PEFT's task type for the model: it decides which head modules train and how generation is wired.

    Vision models get none (PEFT's sequence-classification wrapper would pass them input_ids): their head is
    trained and saved through `head_modules` instead.
    """
    from peft import TaskType

    if getattr(model, "main_input_name", "") == "pixel_values":
        return None
    if getattr(model.config, "is_encoder_decoder", False):
        return TaskType.SEQ_2_SEQ_LM
    if type(model).__name__.endswith("ForCausalLM"):
        return TaskType.CAUSAL_LM
    return TaskType.SEQ_CLS


VISION_HEADS = ("classifier", "head", "fc", "score")


def head_modules(model: nn.Module) -> list[str] | None:
    """Modules that train in full and are saved beside the adapter when PEFT has no task type for the model (vision)."""
    if peft_task(model) is not None:
        return None
    return [n for n in VISION_HEADS if isinstance(getattr(model, n, None), nn.Module)][:1] or None


def pointwise_layers(model: nn.Module) -> list[str]:
    """Leaf names of a vision model's 1x1 convolutions (not depthwise) and Linear layers outside the head: where
    adapters go by default when PEFT knows no targets for the architecture (MobileNet/EfficientNet, ResNet, ConvNeXt)."""
    head = set(head_modules(model) or ())
    names = set()
    for name, m in model.named_modules():
        if name.split(".")[0] in head:
            continue
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 or isinstance(m, nn.Linear):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)
