"""Config -> plain dict / YAML (what run folders and MLflow record)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..utils import atomic_write_text
from .schema import Config, StrategyConfig


def config_to_dict(cfg: Config) -> dict:
    """Plain dict for YAML/MLflow, with the strategy options flattened next to `name`."""
    out = dataclasses.asdict(dataclasses.replace(cfg, strategy=StrategyConfig(cfg.strategy.name)))
    opts = cfg.strategy.options
    out["strategy"] = {"name": cfg.strategy.name, **(dataclasses.asdict(opts) if opts is not None else {})}
    return out


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
