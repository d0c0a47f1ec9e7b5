"""GRPO (Shao et al. 2024, "DeepSeekMath"), one policy update per sampled group, as TRL's GRPOTrainer computes it with
`num_iterations=1` and `loss_type="grpo"`:

    loss per prompt = mean over its K completions of the mean over the completion's tokens of
        -exp(logp - logp.detach()) * A  +  beta * (exp(ref - logp) - (ref - logp) - 1)

The ratio is 1 in value (the samples come from this very policy) and carries the policy gradient A * grad logp; with
one update per group PPO's clipping never acts, so it is left out. The KL term is the k3 estimator (Schulman 2020) of
KL(policy || reference), per token. A are the group-relative advantages (rewards.group_advantages).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...engine.batches import pad_to
from .losses import IGNORE


def grpo_loss(
    logps: Tensor, mask: Tensor, advantages: Tensor, k: int, beta: float, ref_logps: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(loss per prompt [N], mean k3 KL per completion [N*K], detached).

    logps, ref_logps, mask: [N*K, T] per-token log-probabilities of the completions (prompt-major: a prompt's K
    completions together) and the mask of completion tokens; advantages: [N*K]."""
    if beta and ref_logps is None:
        raise ValueError("grpo_loss: beta > 0 needs the reference's log-probabilities")
    m = mask.float()
    per_token = -torch.exp(logps - logps.detach()) * advantages.to(logps.dtype).unsqueeze(1)
    if ref_logps is not None:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
    else:
        kl = torch.zeros_like(logps)
    if beta:
        per_token = per_token + beta * kl
    tokens = m.sum(-1).clamp(min=1)
    per_completion = (per_token * m).sum(-1) / tokens
    kl_mean = ((kl * m).sum(-1) / tokens).detach()
    return per_completion.view(-1, k).mean(dim=1), kl_mean


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    """input_ids / attention_mask / labels of prompt + completion sequences, right-padded; only the completion's tokens
    are labelled (the loss and the log-probabilities see nothing else)."""
    width = pad_to(max(len(p) + len(c) for p, c in zip(prompts, completions)))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        ids[i, :n], mask[i, :n] = torch.tensor(p + c), 1
        labels[i, len(p) : n] = torch.tensor(c, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PromptRows:
    """What the loop eats for reward tuning: the training prompts (token ids). A batch is the rows' indices; the task
    samples completions for them inside the loss. The unit is the prompt."""

    packed = False

    def __init__(self, prompts: list[list[int]]):
        self.prompts = prompts
        self.lengths = [len(p) for p in prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    def units(self, rows: list[int]) -> int:
        return len(rows)

    def examples(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows: list[int], with_targets: bool = True) -> dict[str, Tensor]:
        return {"rows": torch.tensor(rows, dtype=torch.long)}
