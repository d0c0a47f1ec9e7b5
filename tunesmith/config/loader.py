"""YAML + dotted overrides -> a validated Config.

An unknown key names the file, the line and the closest valid key; a wrong type names the expected
one; a key that the chosen task does not use names the task. The strategy and the task are looked up
in their registries, so `module:Class` names work for both.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..strategies.registry import get_strategy_class, strategy_names
from ..tasks.registry import DEFAULT_TASK, get_task_class, task_names
from ..utils import resolve_path
from .multitask import check_tasks
from .preference import check_rewards
from .schema import TASK_KEYS, Config, StrategyConfig, suggest


def load_config(
    source: str | Path | dict | None = None, overrides: list[str] | None = None, *, strict: bool = True
) -> Config:
    """Build a validated Config from a YAML file (or a dict) plus `a.b=value` overrides.

    `strict=False` (a saved run's config.yaml) accepts task-specific keys the task does not use.
    """
    where = "config"
    lines: dict[tuple, int] = {}
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = _deep_copy(source)
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; check the path (relative paths start at {Path.cwd()})")
        text = path.read_text(encoding="utf-8")
        try:
            raw = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" line {mark.line + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}{at}: malformed YAML ({problem}); fix the indentation/quoting there") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    for item in overrides or []:
        _apply_override(raw, item)
    task = _task_class(raw, where, lines)
    _inherit_task_data(raw)
    cfg = _build(Config, raw, (), where, lines)
    cfg.task = cfg.task or DEFAULT_TASK
    cfg.check()
    check_tasks(cfg.tasks, task.composite, cfg.task)
    check_rewards(cfg.reward, task.uses, cfg.task)
    if task.composite and (cfg.data.path or cfg.data.train or cfg.data.mix):
        raise ConfigError(
            f"{_at(where, lines, ('data',))}task {cfg.task}: each task's file goes under tasks.<name>.data "
            "(the top-level data: holds only their defaults); move data.path / data.train there"
        )
    if strict:
        _check_task_keys(task, cfg, raw, where, lines)
    _resolve_metric(task, cfg, where, lines)
    _check_paths(cfg)
    return cfg


FILE_KEYS = ("path", "train", "validation", "test", "mix")


def _inherit_task_data(raw: dict) -> None:
    """A multi-task config's top-level `data:` (minus its files) holds every task's defaults: merged under each."""
    tasks, top = raw.get("tasks"), raw.get("data")
    if not isinstance(tasks, dict) or not isinstance(top, dict):
        return
    defaults = {k: v for k, v in top.items() if k not in FILE_KEYS}
    for spec in tasks.values():
        if isinstance(spec, dict) and isinstance(spec.get("data", {}), dict):
            spec["data"] = {**defaults, **(spec.get("data") or {})}


def _task_class(raw: dict, where: str, lines: dict):
    name = raw.get("task") or DEFAULT_TASK
    if not isinstance(name, str):
        raise ConfigError(f"{_at(where, lines, ('task',))}task must be a string (got {name!r})")
    try:
        return get_task_class(name)
    except KeyError:
        raise ConfigError(
            f"{_at(where, lines, ('task',))}unknown task '{name}'{suggest(name, task_names())}; `tunesmith tasks` lists them"
        ) from None


def _check_task_keys(task, cfg: Config, raw: dict, where: str, lines: dict) -> None:
    """A task-specific key set (to a non-default value) for a task that does not read it is a mistake, not a no-op."""
    for section, keys in TASK_KEYS.items():
        given = raw.get(section)
        if not isinstance(given, dict):
            continue
        default = type(getattr(cfg, section))()
        for key in sorted(set(given) & keys):
            dotted = f"{section}.{key}"
            if dotted in task.uses or f"{section}.*" in task.uses:
                continue
            if getattr(getattr(cfg, section), key) == getattr(default, key):
                continue  # a default spelled out (e.g. a saved run's config.yaml) changes nothing
            owners = [n for n in task_names() if _uses(n, dotted)]
            belongs = f" (it belongs to {', '.join(owners)})" if owners else ""
            raise ConfigError(
                f"{_at(where, lines, (section, key))}{dotted} is not used by task {cfg.task}{belongs}; remove it or change the task"
            )


def _uses(task_name: str, dotted: str) -> bool:
    uses = get_task_class(task_name).uses
    return dotted in uses or f"{dotted.split('.')[0]}.*" in uses


def _resolve_metric(task, cfg: Config, where: str, lines: dict) -> None:
    """train.metric: `auto` becomes the task's default; anything else must be one the task's validation reports."""
    if cfg.train.metric == "auto":
        cfg.train.metric = task.metrics[0]
    if cfg.train.metric not in task.metrics:
        raise ConfigError(
            f"{_at(where, lines, ('train', 'metric'))}train.metric: unknown metric '{cfg.train.metric}' for task "
            f"{cfg.task}{suggest(cfg.train.metric, task.metrics)}"
        )


def _check_paths(cfg: Config) -> None:
    """Files named in the config that are read only late in a run must exist now, before any heavy work."""
    for name, spec in (cfg.eval.sets or {}).items():
        if not resolve_path(spec).exists():
            raise ConfigError(
                f"eval.sets.{name}: file {spec} not found; fix the path (relative paths start at {Path.cwd()})"
            )


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=3e-4")
    key, _, value_text = item.partition("=")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, path: tuple, where: str, lines: dict) -> Any:
    name = ".".join(path) or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(where, lines, path)}'{name}' must be a mapping, got {type(raw).__name__}")
    if cls is StrategyConfig:
        return _build_strategy(raw, path, where, lines)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if isinstance(key, bool):
            raise ConfigError(
                f"{_at(where, lines, path)}a key in {name} reads as {key}: YAML 1.1 takes an unquoted on/off/yes/no "
                f"as a boolean; quote it or use the documented key name"
            )
        if key not in fields:
            raise ConfigError(
                f"{_at(where, lines, path + (key,))}unknown key '{key}' in {name}{suggest(str(key), fields)}"
            )
        values[key] = _coerce(value, hints[key], path + (key,), where, lines)
    for key in fields:  # nested sections that were not given still get built
        if key not in values and dataclasses.is_dataclass(hints[key]):
            values[key] = _build(hints[key], {}, path + (key,), where, lines)
    return cls(**values)


def _build_strategy(raw: dict, path: tuple, where: str, lines: dict) -> StrategyConfig:
    raw = dict(raw)
    name = raw.pop("name", "full")
    if not isinstance(name, str):
        raise ConfigError(f"{_at(where, lines, path + ('name',))}strategy.name must be a string")
    try:
        cls = get_strategy_class(name)
    except KeyError:
        raise ConfigError(
            f"{_at(where, lines, path + ('name',))}unknown strategy '{name}'{suggest(name, strategy_names())}; "
            f"`tunesmith strategies` lists them"
        ) from None
    options = _build(cls.Options, raw, path, where, lines)
    return StrategyConfig(name=name, options=options)


def _coerce(value: Any, tp: Any, path: tuple, where: str, lines: dict) -> Any:
    key = ".".join(path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # `int | Literal["auto"]`: the first type the value fits
            try:
                return _coerce(value, arg, path, where, lines)
            except ConfigError:
                pass
        return _coerce(value, args[-1], path, where, lines)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, where, lines)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{_at(where, lines, path)}{key}={value!r} is not one of {', '.join(map(str, choices))}"
                f"{suggest(str(value), [str(c) for c in choices])}"
            )
        return value
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(where, lines, path)}{key} must be a mapping, got {type(value).__name__}")
        return {str(k): _coerce(v, item_tp, path + (str(k),), where, lines) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{_at(where, lines, path)}{key} must be a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, path, where, lines) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{_at(where, lines, path)}{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def _at(where: str, lines: dict, path: tuple) -> str:
    line = lines.get(path)
    return f"{where} line {line}: " if line else f"{where}: "


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a composed YAML document to its 1-based line number."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, path))
    return out


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}
