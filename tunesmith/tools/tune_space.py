"""The search space of `tunesmith tune`: the default one, its checks before any trial, sampling, trial configs.

A trial's config is the starting config (as a plain dict) with the sampled values set at their dotted keys; when
a trial switches `strategy.name`, the starting strategy's own options are dropped (LoRA's `r` means nothing to
`full`). Every branch of the space is built as a config once before the study starts, so an unknown key, a value
the config refuses, or a key of the wrong strategy is one line before any trial runs.
"""

from __future__ import annotations

import math

import yaml

from ..config.dump import config_to_dict, flatten
from ..config.loader import load_config
from ..config.schema import Config
from ..config.tune import Param, parse_param, thaw
from ..errors import ConfigError, TunesmithError
from ..strategies import get_strategy_class

SPLIT_KEYS = {
    "seed",
    "name",
    "task",
    "output_dir",
    "tracking",
    "tune",
    "audit",
    "prepare",
    "train.metric",
}
"""Keys a search may not change: the splits (`seed` and most of `data:`) must be the same in every trial (scored on
one validation split, the test split held out), and the trials must stay comparable (`train.metric`)."""
DATA_KEYS_OK = {"data.max_length", "data.packing", "data.add_eos"}
"""The only `data:` keys a trial may change (they do not move rows between splits)."""


def search_space(cfg: Config) -> list[Param]:
    """The config's `tune.space`, or the default space of its strategy, ordered so that conditions come first."""
    params = cfg.tune.params() if cfg.tune.space else default_space(cfg)
    done: list[Param] = []
    keys = {p.key for p in params}
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(k not in keys or k in {d.key for d in done} for k, _ in p.when)]
        if not ready:
            raise ConfigError(f"tune.space: the `when` conditions of {', '.join(p.key for p in pending)} form a cycle")
        done += ready
        pending = [p for p in pending if p not in ready]
    return done


def default_space(cfg: Config) -> list[Param]:
    """Learning rate (the strategy's range), warmup, weight decay, epochs, and the strategy's own keys."""
    space = {
        "train.warmup_ratio": {"float": [0.0, 0.2]},
        "train.weight_decay": {"float": [0.0, 0.1]},
        **get_strategy_class(cfg.strategy.name).tune_space,
    }
    if cfg.train.max_steps is None:
        space["train.epochs"] = {"int": [1, max(2, math.ceil(2 * cfg.train.epochs))]}
    return [parse_param(k, v) for k, v in space.items()]


def check_space(cfg: Config, params: list[Param]) -> None:
    """Refuse keys that would move rows between splits, then build every branch of the space as a config."""
    base = flatten(config_to_dict(cfg))
    for p in params:
        section = p.key.split(".")[0]
        if p.key in SPLIT_KEYS or section in SPLIT_KEYS or (section == "data" and p.key not in DATA_KEYS_OK):
            raise ConfigError(
                f"tune.space.{p.key}: cannot be searched: every trial must see the same splits and be scored the same "
                f"way (data keys allowed: {', '.join(sorted(DATA_KEYS_OK))}); set it in the config instead"
            )
        for key, _ in p.when:
            if key not in base and key not in {q.key for q in params} and not key.startswith("strategy."):
                raise ConfigError(f"tune.space.{p.key}.when: unknown key {key}")
    for values in branches(params, base):
        try:
            load_config(trial_dict(cfg, values))
        except TunesmithError as err:
            shown = ", ".join(f"{k}={choice_label(v)}" for k, v in values.items())
            raise ConfigError(f"tune.space: the trial {{{shown}}} is not a valid config: {err}") from None


def branches(params: list[Param], base: dict) -> list[dict]:
    """Enough trial values to reach every key at both ends of its range and every choice (with its conditions)."""
    out = []
    for p in params:
        for value in [p.low, p.high] if p.kind != "categorical" else list(p.choices):
            values = {}
            for q in params:  # conditions satisfied with their first allowed value, the rest at their low end
                if q is p:
                    continue
                if q.key in dict(p.when):
                    values[q.key] = dict(p.when)[q.key][0]
            values[p.key] = value
            for q in params:
                if q.key not in values and q.active({**base, **values}):
                    values[q.key] = q.low if q.kind != "categorical" else q.choices[0]
            out.append({k: v for k, v in values.items() if _param(params, k).active({**base, **values})})
    return out


def _param(params: list[Param], key: str) -> Param:
    return next(p for p in params if p.key == key)


def sample(trial, params: list[Param], base: dict) -> dict:
    """The trial's values: each key whose `when` holds (given the values sampled so far and the base config)."""
    values: dict = {}
    for p in params:
        if not p.active({**base, **values}):
            continue
        if p.kind == "float":
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            labels = [choice_label(c) for c in p.choices]
            values[p.key] = p.choices[labels.index(trial.suggest_categorical(p.key, labels))]
    return values


def trial_dict(cfg: Config, values: dict) -> dict:
    """The starting config with the trial's values set (strategy options reset when the strategy changes)."""
    d = config_to_dict(cfg)
    d.pop("tune", None)
    name = values.get("strategy.name", cfg.strategy.name)
    if name != cfg.strategy.name:
        d["strategy"] = {"name": name}
    for key, value in values.items():
        node = d
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = thaw(value)
    return d


def best_config(cfg, params: dict) -> dict:
    """The trial's values (as Optuna stores them) back in the starting config: a runnable config."""
    space = {p.key: p for p in search_space(cfg)}
    values = {}
    for key, value in params.items():
        p = space[key]
        if p.kind == "categorical":
            labels = [choice_label(c) for c in p.choices]
            value = p.choices[labels.index(value)]
        values[key] = value
    d = trial_dict(cfg, values)
    return yaml.safe_load(yaml.safe_dump(d))


def choice_label(value) -> str | int | float | bool | None:
    """A choice as Optuna stores it: scalars as they are, lists as their YAML flow form."""
    if isinstance(value, tuple):
        return yaml.safe_dump(thaw(value), default_flow_style=True).strip()
    return value
