"""Strategies decide what trains. `registry.py` is the only name -> class table."""

from .base import Strategy, count_parameters
from .registry import build_strategy, get_strategy_class, register, strategy_names

__all__ = ["Strategy", "build_strategy", "count_parameters", "get_strategy_class", "register", "strategy_names"]
