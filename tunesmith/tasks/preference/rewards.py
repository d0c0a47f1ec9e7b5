"""Rewards for reward-driven tuning (GRPO): components built from `reward:` specs, and group-relative advantages.

Every built-in component scores one completion in [0, 1]; graded where it can be, because GRPO learns only from
differences within a group, and an all-or-nothing reward that every sample of a prompt misses teaches nothing:
- json_schema: 0 unless the completion parses as a JSON object (parse_json_object: a ```json fence is fine);
  an object with a share s of `keys` present scores 0.25 + 0.5 * s (so < 0.75 while any key is missing);
  an object with every key scores 1. Extra keys cost nothing.
- exact: against the reference, after whitespace/case normalisation: 1 if equal, else 0. When the reference is a
  JSON object, the share of its fields the completion's object has with an equal value (0 if it is no object).
- rouge: ROUGE-L F1 against the reference (rouge-score, as in generation_scores).
- length: 1 up to `max_words` words, then falling linearly to 0 at twice as many.
- faithfulness: generation.faithfulness(completion, prompt, keys): the share of extracted values that occur in
  the prompt; 0 when there is nothing to judge (not a JSON object, or no values).
- python: `fn(completions, prompts, references)` -> one finite number per completion, used as given.
exact and rouge need a reference for every prompt (a DataError names the component otherwise).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch

from ...errors import ConfigError, DataError
from ..generative.generation import faithfulness, parse_json_object

KINDS = ("json_schema", "exact", "rouge", "length", "faithfulness", "python")
Scorer = Callable[[list[str], list[str], list], list[float]]


@dataclass
class Rewards:
    """The components of the reward, in `reward:` order; `total` is their weighted sum."""

    names: list[str]
    weights: list[float]
    scorers: list[Scorer]

    def score(self, completions: list[str], prompts: list[str], references: list[str | None]) -> dict[str, list[float]]:
        """Each component's reward per completion (unweighted, each in [0, 1] for built-ins, or the user's values)."""
        return {name: fn(completions, prompts, references) for name, fn in zip(self.names, self.scorers)}

    def total(self, parts: dict[str, list[float]]) -> list[float]:
        """The weighted sum per completion."""
        columns = [parts[name] for name in self.names]
        return [sum(w * r for w, r in zip(self.weights, row)) for row in zip(*columns)]


def build_rewards(specs: list) -> Rewards:
    """Rewards from `reward:` specs (duck-typed RewardSpec), checked here so a mistake shows before any training."""
    if not specs:
        raise ConfigError("reward: is empty; give at least one component, e.g. [{kind: json_schema, keys: [name]}]")
    scorers, names = [], []
    for i, spec in enumerate(specs, 1):
        fn, default = _scorer(spec, f"reward[{i}]")
        scorers.append(fn)
        names.append(getattr(spec, "name", None) or default)
    weights = [float(getattr(s, "weight", 1.0)) for s in specs]
    return Rewards(_unique(names, specs), weights, scorers)


def _unique(names: list[str], specs: list) -> list[str]:
    """Names as given; a default name shared with another component gets its position (`exact_1`, `exact_3`).
    Two components the user named alike are a mistake, not something to rename."""
    counts = Counter(names)
    given: dict[str, int] = {}
    for i, (name, spec) in enumerate(zip(names, specs), 1):
        if getattr(spec, "name", None):
            if name in given:
                raise ConfigError(f"reward[{i}].name: '{name}' is also reward[{given[name]}]'s name; names must differ")
            given[name] = i
    out = [n if i in given.values() or counts[n] == 1 else f"{n}_{i}" for i, n in enumerate(names, 1)]
    if len(set(out)) < len(out):
        raise ConfigError(f"reward: component names {out} repeat; give each component its own `name`")
    return out


def _scorer(spec, where: str) -> tuple[Scorer, str]:
    """(the component's scoring function, its default name)."""
    kind = getattr(spec, "kind", None)
    keys = getattr(spec, "keys", None)
    if kind == "json_schema":
        if not keys:
            raise ConfigError(f"{where}: kind json_schema needs keys: [the keys the object must have]")
        return _each(lambda c, p, r: json_schema_reward(c, keys)), kind
    if kind == "exact":
        return _with_references(kind, where, exact_reward), kind
    if kind == "rouge":
        return _with_references(kind, where, _rouge()), kind
    if kind == "length":
        m = getattr(spec, "max_words", None)
        if not (m and m > 0):
            raise ConfigError(f"{where}: kind length needs max_words (a positive number)")
        return _each(lambda c, p, r: length_reward(c, m)), kind
    if kind == "faithfulness":
        return _each(lambda c, p, r: faithfulness(c, p, keys) or 0.0), kind
    if kind == "python":
        fn = _import(getattr(spec, "fn", None), where)
        name = getattr(fn, "__name__", "python")
        return _checked(fn, name, getattr(spec, "fn", None)), name
    raise ConfigError(f"{where}.kind: unknown reward kind {kind!r}; use one of {', '.join(KINDS)}")


def json_schema_reward(completion: str, keys: list[str]) -> float:
    obj = parse_json_object(completion)
    if obj is None:
        return 0.0
    share = sum(k in obj for k in keys) / len(keys)
    return 1.0 if share == 1 else 0.25 + 0.5 * share


def exact_reward(completion: str, reference: str) -> float:
    want = parse_json_object(reference)
    if not want:
        return float(_norm(completion) == _norm(reference))
    got = parse_json_object(completion) or {}
    return sum(k in got and _norm(str(got[k])) == _norm(str(v)) for k, v in want.items()) / len(want)


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def length_reward(completion: str, max_words: int) -> float:
    over = len(completion.split()) - max_words
    return 1.0 if over <= 0 else max(0.0, 1.0 - over / max_words)


def _rouge() -> Callable[[str, str], float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return lambda completion, reference: scorer.score(reference, completion)["rougeL"].fmeasure


def _each(one: Callable[[str, str, str | None], float]) -> Scorer:
    return lambda cs, ps, rs: [float(one(c, p, r)) for c, p, r in zip(cs, ps, rs)]


def _with_references(kind: str, where: str, one: Callable[[str, str], float]) -> Scorer:
    def score(cs: list[str], ps: list[str], rs: list) -> list[float]:
        missing = sum(r is None for r in rs)
        if missing:
            raise DataError(
                f"{where} ({kind}) compares completions with the reference, but {missing} of {len(rs)} prompts have "
                "none; give every training row a reference answer, or use a reward that needs none (json_schema, "
                "length, faithfulness, python)"
            )
        return [float(one(c, r)) for c, r in zip(cs, rs)]

    return score


def _import(target: str | None, where: str) -> Callable:
    """`module:function` (from the Python path or the working directory) or `path/to/file.py:function`."""
    module, _, attr = (target or "").rpartition(":")
    if not module or not attr:
        raise ConfigError(f"{where}.fn: expected 'module:function' (or 'file.py:function'), got {target!r}")
    try:
        fn = getattr(_load_module(module), attr)
    except (ImportError, AttributeError, SyntaxError, OSError) as err:
        file = module if module.endswith(".py") else module.replace(".", "/") + ".py"
        raise ConfigError(
            f"{where}.fn: cannot import {target!r} ({err}); put {file} in the working directory "
            "(or on PYTHONPATH) and check it defines that function"
        ) from None
    if not callable(fn):
        raise ConfigError(f"{where}.fn: {target!r} is a {type(fn).__name__}, not a function")
    return fn


def _load_module(module: str):
    if module.endswith(".py"):
        if not Path(module).is_file():
            raise ImportError(f"no file {module}")
        spec = importlib.util.spec_from_file_location(f"tunesmith_reward_{Path(module).stem}", module)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # the `tunesmith` command's path starts at its script, not where the user runs it
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    finally:
        if added:
            sys.path.remove(cwd)


def _checked(fn: Callable, name: str, target: str) -> Scorer:
    """The user's function, with its answer checked: one finite number per completion (a tensor or array is fine)."""

    def score(cs: list[str], ps: list[str], rs: list) -> list[float]:
        out = fn(cs, ps, rs)
        values = out.tolist() if hasattr(out, "tolist") else out
        if not isinstance(values, (list, tuple)) or len(values) != len(cs):
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"a {type(out).__name__}"
            raise DataError(f"reward function {name} ({target}) returned {got} for {len(cs)} completions; {_ASK}")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v)]
        if bad:
            raise DataError(f"reward function {name} ({target}) returned {bad[0]!r}; {_ASK}")
        return [float(v) for v in values]

    return score


_ASK = "return a list with one finite number (int or float) per completion"


def group_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): rewards of N prompts x k completions, laid out prompt-major [N*k];
    advantage = (r - mean of its group) / (std of its group + eps). A completion is judged only against the others
    for its prompt, so no value model is needed.

    The std is the unbiased one (Bessel's correction, torch.std's default), as TRL's GRPOTrainer computes it
    (`nanstd` in trl/trainer/utils.py, with eps 1e-4 added to it); a group of one has std 0, as in TRL. A group
    whose rewards are all equal gets zeros (no signal), not NaN. scale=False only centres (Dr. GRPO, Liu et al.
    2025: dividing by the std over-weights prompts that are nearly always solved or nearly always failed)."""
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards are not groups of k={k}")
    groups = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, k)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        std = groups.std(dim=1, keepdim=True) if k > 1 else torch.zeros_like(centred)
        centred = centred / (std + eps)
    return centred.view(-1)
