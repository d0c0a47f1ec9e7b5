"""Multi-task runs (`task: multi-task`, `tasks:`, `multitask:`) and weighted data mixes (`data.mix`); no I/O here.

task: multi-task
data: {max_length: 64}                 # defaults for every task's data
tasks:
  sentiment: {data: {path: a.csv}, weight: 1.0}
  topic:     {data: {path: b.csv, label_column: topic}, weight: 0.5, auxiliary: true}
multitask: {sampling: temperature, temperature: 2.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError


@dataclass
class MixSource:
    path: str
    """A data file (CSV, JSONL, Parquet, `pkg://`): split into train/validation/test with `data`'s shares."""
    weight: float = 1.0
    """Its share of the training draws (weights are normalised: 0.7 and 0.3 mean 70% and 30% of the examples)."""
    name: str | None = None
    """How reports call it; default: the file's stem."""


@dataclass
class MultiTaskConfig:
    sampling: Literal["proportional", "temperature", "round-robin"] = "proportional"
    """Which task each batch comes from: `proportional` to the tasks' training rows, `temperature` (rows^(1/T),
    T > 1 up-samples the small tasks), `round-robin` (tasks in turn). An epoch is as many examples as all tasks hold."""
    temperature: float = 2.0
    """T of `sampling: temperature`."""
    batches: Literal["step", "micro-batch"] = "step"
    """`step`: all micro-batches of an optimizer step come from one task; `micro-batch`: each micro-batch is drawn
    on its own (with train.grad_accum > 1, one step mixes tasks)."""
    loss_weights: Literal["fixed", "uncertainty"] = "fixed"
    """`fixed`: the tasks' `weight`s; `uncertainty`: learned per-task log-variances s (loss exp(-s) x L + s/2,
    Kendall et al. 2018) on top of the weights, reported at the end."""

    def check(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"multitask.temperature must be positive (got {self.temperature}); e.g. 2.0")


def check_tasks(tasks: dict, composite: bool, task: str | None) -> None:
    """`tasks:` belongs to a task made of tasks (multi-task), which needs two or more, one of them primary."""
    if not composite:
        if tasks:
            raise ConfigError(f"tasks: is read by task multi-task (this config's task is {task}); set task: multi-task")
        return
    if len(tasks or {}) < 2:
        raise ConfigError("task multi-task needs two or more tasks under `tasks:` (name: {data: {...}, weight: ...})")
    for name, spec in tasks.items():
        if ":" in name or not name:
            raise ConfigError(f"tasks.{name}: a task name cannot be empty or contain ':'")
        d = spec.data
        if not d.path and not d.train:
            raise ConfigError(f"tasks.{name}: no data given; set tasks.{name}.data.path (or data.train)")
        if d.path and (d.train or d.validation or d.test):
            raise ConfigError(f"tasks.{name}.data: set either `path` or `train`/`validation`/`test`, not both")
        if spec.weight <= 0 or spec.metric_weight <= 0:
            raise ConfigError(f"tasks.{name}: weight and metric_weight must be positive (got {spec.weight})")
    if all(s.auxiliary for s in tasks.values()):
        raise ConfigError(
            "tasks: every task is auxiliary; mark the task(s) you select on as primary (auxiliary: false)"
        )


def check_mix(mix: list[MixSource] | None, given_files: bool) -> None:
    if mix is None:
        return
    if given_files:
        raise ConfigError("data: set either `mix` (several weighted files) or `path`/`train`, not both")
    if len(mix) < 2:
        raise ConfigError(
            "data.mix needs two or more sources: [{path: a.jsonl, weight: 0.7}, {path: b.jsonl, weight: 0.3}]"
        )
    names = [s.name or s.path for s in mix]
    if len(set(names)) < len(names):
        raise ConfigError(f"data.mix: two sources share a name ({names}); give each a distinct `name`")
    for s in mix:
        if s.weight <= 0:
            raise ConfigError(f"data.mix: {s.path}: weight must be positive (got {s.weight})")


__all__ = ["MixSource", "MultiTaskConfig", "check_mix", "check_tasks"]
