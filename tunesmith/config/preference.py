"""Preference tuning (`task: preference`, `preference:`) and reward-driven tuning (`task: reward-tuning`, `reward:`,
`grpo:`); no I/O here.

task: preference                 # rows: prompt (or messages), chosen, rejected   (loss kto: completion + label)
preference: {loss: dpo, beta: 0.1, reference: adapters-off}

task: reward-tuning              # GRPO: K completions per prompt, scored, group-relative advantages
reward: [{kind: json_schema, keys: [name, summary]}, {kind: python, fn: "my_rewards:faithful", weight: 0.5}]
grpo: {samples: 4, beta: 0.04}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError


@dataclass
class PreferenceConfig:
    loss: Literal["dpo", "ipo", "orpo", "kto", "simpo"] = "dpo"
    """`dpo` (Rafailov et al. 2023), `ipo` (Azar et al. 2023, length-averaged log-probabilities), `kto` (Ethayarajh et
    al. 2024: unpaired completions labelled desirable or not), and the reference-free `orpo` (Hong et al. 2024: SFT loss
    plus an odds-ratio term) and `simpo` (Meng et al. 2024: length-averaged margin with a target gap)."""
    beta: float = 0.1
    """How far the policy may move from the reference (dpo, ipo, kto); the odds-ratio weight lambda for orpo; the reward
    scale for simpo (the paper uses 2.0-2.5 there)."""
    reference: str = "adapters-off"
    """The reference model of dpo/ipo/kto: `adapters-off` (the policy with its LoRA adapters disabled: no second copy;
    needs an adapter strategy), `base` (a frozen copy of the starting model), or `run:<path>` (a saved run's model)."""
    precompute_reference: bool = True
    """Compute the reference log-probabilities of every pair once before training (cached in the run folder, so a
    resumed run reuses them) instead of a reference forward pass per step. Exact: the reference never changes."""
    label_smoothing: float = 0.0
    """dpo: the assumed share of flipped preference labels (conservative DPO, cDPO); 0 = plain DPO."""
    simpo_gamma: float = 0.5
    """simpo: the target reward margin gamma (TRL's `simpo_gamma`)."""
    desirable_weight: float = 1.0
    """kto: weight of the desirable examples (raise it when they are rarer than the undesirable ones)."""
    undesirable_weight: float = 1.0
    """kto: weight of the undesirable examples."""

    def check(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"preference.beta must be positive (got {self.beta}); e.g. 0.1 for dpo")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"preference.label_smoothing must be in [0, 0.5) (got {self.label_smoothing})")
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise ConfigError(f"preference.label_smoothing applies to dpo and simpo, not {self.loss}; remove it")
        if self.reference not in ("adapters-off", "base") and not self.reference.startswith("run:"):
            raise ConfigError(
                f"preference.reference={self.reference!r}: use adapters-off, base or run:<path to a saved run>"
            )
        if min(self.desirable_weight, self.undesirable_weight) <= 0:
            raise ConfigError("preference.desirable_weight and undesirable_weight must be positive")


@dataclass
class RewardSpec:
    kind: Literal["json_schema", "exact", "rouge", "length", "faithfulness", "python"] = "json_schema"
    """`json_schema` (a JSON object with `keys`), `exact` (the reference; per field for JSON references), `rouge`
    (ROUGE-L against the reference), `length` (penalises more than `max_words` words), `faithfulness` (the share of
    extracted values that literally occur in the prompt), `python` (`fn`, your own function)."""
    weight: float = 1.0
    """Its weight in the total reward (a weighted sum)."""
    keys: list[str] | None = None
    """json_schema: the keys the object must have; faithfulness: the fields that must be copied from the input."""
    fn: str | None = None
    """python: `module:function`, called as fn(completions, prompts, references) -> one float per completion."""
    max_words: int | None = None
    """length: answers up to this many words score 1, falling to 0 at twice as many."""
    name: str | None = None
    """How logs and reports call this component (default: its kind, or the function's name)."""


@dataclass
class GRPOConfig:
    samples: int = 4
    """K: completions sampled per prompt with the current policy; advantages are relative within these K."""
    beta: float = 0.04
    """Weight of the KL penalty to the reference (the policy with adapters off, or the starting weights)."""
    temperature: float = 1.0
    """Sampling temperature of the K completions (they must differ for the group to carry a signal)."""
    top_p: float = 1.0
    """Nucleus sampling of the K completions."""
    scale_rewards: bool = True
    """Divide advantages by the group's standard deviation (GRPO); false centres them only (Dr. GRPO)."""
    eval_prompts: int = 32
    """Validation prompts answered (as `generate:` says, greedy by default) and scored by `reward:` at every
    validation; their mean weighted reward is the validation metric `reward`."""

    def check(self) -> None:
        if self.samples < 2:
            raise ConfigError(f"grpo.samples must be at least 2 (got {self.samples}): advantages compare completions")
        if self.eval_prompts < 1:
            raise ConfigError(f"grpo.eval_prompts must be at least 1 (got {self.eval_prompts})")
        if self.beta < 0 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("grpo: beta must be >= 0, temperature > 0 and top_p in (0, 1]")


def check_rewards(rewards: list[RewardSpec], uses: frozenset[str], task: str | None) -> None:
    """`reward:` belongs to reward-tuning, which needs at least one component."""
    if "reward" not in uses:
        if rewards:
            raise ConfigError(f"reward: is read by task reward-tuning (this config's task is {task}); remove it")
        return
    if not rewards:
        raise ConfigError(
            "task reward-tuning needs `reward:`, e.g. [{kind: json_schema, keys: [name]}, {kind: faithfulness}]"
        )
    for i, r in enumerate(rewards, 1):
        if r.kind == "python" and not r.fn:
            raise ConfigError(f"reward[{i}]: kind python needs fn: 'module:function'")
        if r.kind == "json_schema" and not r.keys:
            raise ConfigError(f"reward[{i}]: kind json_schema needs keys: [the keys the object must have]")
        if r.kind == "length" and not (r.max_words and r.max_words > 0):
            raise ConfigError(f"reward[{i}]: kind length needs max_words (a positive number)")
