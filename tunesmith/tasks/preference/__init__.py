"""Preference tuning (DPO, IPO, KTO, ORPO, SimPO) and reward-driven tuning (GRPO) of causal LMs."""

from .reward_task import RewardTuningTask
from .task import PreferenceTask

__all__ = ["PreferenceTask", "RewardTuningTask"]
