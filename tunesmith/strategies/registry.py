"""The one table from strategy names to classes. Built-ins are imported lazily (PEFT is heavy).

A user-defined strategy is one file with a `Strategy` subclass and one call:

    from tunesmith.strategies import Strategy, register
    class MyStrategy(Strategy):
        name = "mine"; summary = "..."
        def prepare(self, model): ...
    register(MyStrategy)
"""

from __future__ import annotations

from ..utils import lookup_class
from .base import Strategy

_BUILTIN = {
    "full": "tunesmith.strategies.full:FullStrategy",
    "freeze": "tunesmith.strategies.freeze:FreezeStrategy",
    "lora": "tunesmith.strategies.lora:LoraStrategy",
    "linear-probe": "tunesmith.strategies.linear_probe:LinearProbeStrategy",
    "gradual-unfreeze": "tunesmith.strategies.gradual_unfreeze:GradualUnfreezeStrategy",
    "discriminative-lr": "tunesmith.strategies.full:DiscriminativeLrStrategy",
    "ia3": "tunesmith.strategies.ia3:Ia3Strategy",
    "prompt-tuning": "tunesmith.strategies.prompt_tuning:PromptTuningStrategy",
    "prefix-tuning": "tunesmith.strategies.prefix_tuning:PrefixTuningStrategy",
}
_REGISTERED: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy under `cls.name` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    _REGISTERED[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_strategy_class(name: str) -> type[Strategy]:
    """The class for `name`; `module:Class` also works (imports a user's file from the Python path)."""
    return lookup_class(name, _BUILTIN, _REGISTERED)


def build_strategy(name: str, options=None) -> Strategy:
    return get_strategy_class(name)(options)
