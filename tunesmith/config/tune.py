"""The `tune:` section: what `tunesmith tune` searches, how, and how the winner is checked (no I/O here).

A search space maps dotted config keys to a distribution:

    tune:
      space:
        train.lr: {float: [1.0e-5, 5.0e-4], log: true}
        train.epochs: {int: [1, 4]}
        strategy.name: {categorical: [full, lora]}
        strategy.r: {int: [4, 64], log: true, when: {strategy.name: lora}}

`when` makes a key conditional: it is sampled only in trials where each named key has the given value (or one of a
list of values). Whether the keys exist and the values are valid for the task is checked by the tool
(tools/tune_space.py), by building the config of each branch of the space before any trial runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError

KINDS = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One key of the space, parsed and checked."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()
    """((key, allowed values), ...): sampled only when every condition holds."""

    def active(self, params: dict) -> bool:
        return all(key in params and params[key] in allowed for key, allowed in self.when)


def parse_param(key: str, spec: Any) -> Param:
    """A space entry -> Param, or one ConfigError naming the key and the fix."""
    where = f"tune.space.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expected a mapping such as {{float: [1.0e-5, 5.0e-4], log: true}}, {{int: [1, 4]}} or "
            f"{{categorical: [a, b]}} (got {spec!r})"
        )
    kinds = [k for k in KINDS if k in spec]
    unknown = sorted(set(spec) - {*KINDS, "log", "step", "when"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(KINDS)}, log, step, when"
        )
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
    kind, value = kinds[0], spec[kinds[0]]
    if kind != "categorical" and isinstance(value, list):  # YAML reads 1e-5 (no dot) as a string
        value = [_number(v) for v in value]
    when = _parse_when(where, spec.get("when"))
    if kind == "categorical":
        if not isinstance(value, list) or len(value) < 2:
            raise ConfigError(
                f"{where}: a categorical needs at least two choices (got {value!r}); to fix a value, set it in the config"
            )
        if "log" in spec or "step" in spec:
            raise ConfigError(f"{where}: log and step are for float/int ranges, not a categorical")
        if len({repr(v) for v in value}) != len(value):
            raise ConfigError(f"{where}: the choices {value!r} repeat a value")
        return Param(key, kind, choices=tuple(freeze(v) for v in value), when=when)
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, e.g. {{{kind}: [1, 4]}} (got {value!r})")
    low, high = value
    log, step = bool(spec.get("log", False)), _number(spec.get("step"))
    if kind == "int" and not all(float(v).is_integer() for v in value):
        raise ConfigError(f"{where}: int bounds must be whole numbers (got {value!r}); use float for a real range")
    if not low < high:
        raise ConfigError(f"{where}: the range [{low}, {high}] is empty; low must be below high")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must be positive (got low {low}); use a linear range or low > 0")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: give log or step, not both (Optuna samples a log range without steps)")
        if not _is_number(step) or step <= 0 or step > high - low:
            raise ConfigError(f"{where}: step must be positive and at most high - low (got {step!r})")
    if kind == "int":
        low, high, step = int(low), int(high), (int(step) if step is not None else None)
    return Param(
        key,
        kind,
        float(low) if kind == "float" else low,
        float(high) if kind == "float" else high,
        log,
        step,
        when=when,
    )


def _parse_when(where: str, when: Any) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(
            f"{where}.when: expected a mapping of key: value, e.g. {{strategy.name: lora}} (got {when!r})"
        )
    return tuple((str(k), tuple(freeze(x) for x in (v if isinstance(v, list) else [v]))) for k, v in when.items())


def freeze(value: Any) -> Any:
    """Choices are kept hashable (lists become tuples); `thaw` gives the config value back."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        raise ConfigError(f"tune.space: a choice cannot be a mapping ({value!r}); set each key of it separately")
    return value


def thaw(value: Any) -> Any:
    return [thaw(v) for v in value] if isinstance(value, tuple) else value


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TuneConfig:
    space: dict[str, Any] = field(default_factory=dict)
    """The search space: dotted config keys -> `{float: [lo, hi], log: true}` | `{int: [lo, hi], step: 2}` |
    `{categorical: [a, b]}`, each with an optional `when: {key: value}` (sampled only in trials where it holds).
    Empty: the default space of the config's strategy (learning rate, warmup, weight decay, epochs, plus the
    strategy's own keys, e.g. LoRA r/alpha/dropout). Keys that change the data splits (`seed`, `data.path`, ...)
    are refused: trials must be scored on one validation split."""
    trials: int = 20
    """Trials in the study (completed + pruned + failed; an interrupted trial is retried and counts once)."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """Optuna's sampler: TPE (multivariate, grouped for conditional keys), random, or a grid over the choices
    (floats need a `step`)."""
    pruner: Literal["auto", "median", "hyperband", "none"] = "auto"
    """Stops a trial whose validation scores are clearly worse than earlier trials' at the same validation (median:
    below the median; hyperband: successive halving). `auto`: median, or none for a multi-objective study."""
    startup_trials: int = 4
    """Trials before the sampler models the space (TPE) and before the pruner prunes anything."""
    second_objective: Literal["none", "train_seconds", "peak_memory"] = "none"
    """Make it multi-objective: the metric and training time (or peak RSS memory), both traded off on a Pareto
    front (study.md shows it); the final config is the front's best-metric trial. No pruning then (Optuna's)."""
    final: Literal["retrain", "none"] = "retrain"
    """After the search: `retrain` trains the starting config and the best config once more, each tested ONCE on
    the test split, and compares them (paired test where the task supports it); `none` stops at the search (the
    test split is never evaluated)."""
    keep_models: Literal["best", "all"] = "best"
    """Saved models of trials: only the best trial's (others' model/ folders are removed when beaten), or all."""

    def check(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"tune.trials must be at least 1 (got {self.trials})")
        if self.startup_trials < 0:
            raise ConfigError(f"tune.startup_trials must be at least 0 (got {self.startup_trials})")
        if self.second_objective != "none" and self.pruner not in ("auto", "none"):
            raise ConfigError(
                f"tune.pruner: {self.pruner} cannot prune a multi-objective study (tune.second_objective: "
                f"{self.second_objective}); set tune.pruner: none"
            )
        params = self.params()
        keys = {p.key for p in params}
        for p in params:
            for key, allowed in p.when:
                if key == p.key:
                    raise ConfigError(f"tune.space.{p.key}.when: a key cannot depend on itself")
                if key in keys:
                    cond = next(q for q in params if q.key == key)
                    values = set(cond.choices) if cond.kind == "categorical" else None
                    if values is not None and not set(allowed) & values:
                        raise ConfigError(
                            f"tune.space.{p.key}.when: {key} is never {list(allowed)} (its choices: "
                            f"{list(cond.choices)}); the key would never be sampled"
                        )

    def params(self) -> list[Param]:
        return [parse_param(str(k), v) for k, v in (self.space or {}).items()]
