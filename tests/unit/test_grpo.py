"""GRPO's pieces on fixed numbers: the loss's value and gradient against a hand computation, the k3 KL, the completion
batches (only completion tokens are labelled), and the prompt rows the loop eats."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.tasks.preference.grpo import PromptRows, completion_batch, grpo_loss
from tunesmith.tasks.preference.losses import IGNORE, token_logps
from tunesmith.tasks.preference.rewards import group_advantages


def fixed(k: int = 2, n: int = 2, t: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(n * k, t, generator=g) * 3
    ref = -torch.rand(n * k, t, generator=g) * 3
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)[: n * k]
    return logps, ref, mask


def test_the_policy_gradient_is_the_advantage_per_completion_token():
    """With the ratio exp(logp - logp.detach()) = 1, d loss / d logp = -A / (tokens of the completion) / K."""
    logps, _, mask = fixed()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    x = logps.clone().requires_grad_(True)
    losses, _ = grpo_loss(x, mask, adv, k=2, beta=0.0)
    assert losses.shape == (2,)
    # value: -mean over the group of A (each completion's tokens averaged, the ratio is 1)
    assert losses.tolist() == pytest.approx([-(1.0 - 1.0) / 2, -(0.5 - 0.5) / 2], abs=1e-7)
    losses.sum().backward()
    tokens = mask.sum(-1, keepdim=True).float()
    want = torch.where(mask, -adv.unsqueeze(1) / tokens / 2, torch.zeros_like(x))
    assert torch.allclose(x.grad, want, atol=1e-7)


def test_the_kl_term_is_k3_per_token_averaged_like_the_loss():
    logps, ref, mask = fixed()
    zero = torch.zeros(4)
    beta = 0.1
    losses, kl = grpo_loss(logps, mask, zero, k=2, beta=beta, ref_logps=ref)
    by_hand = []
    for i in range(4):
        terms = [
            math.exp(float(ref[i, j] - logps[i, j])) - float(ref[i, j] - logps[i, j]) - 1
            for j in range(3)
            if mask[i, j]
        ]
        by_hand.append(sum(terms) / len(terms))
    assert kl.tolist() == pytest.approx(by_hand, rel=1e-5)
    assert losses.tolist() == pytest.approx(
        [beta * (by_hand[0] + by_hand[1]) / 2, beta * (by_hand[2] + by_hand[3]) / 2], rel=1e-5
    )
    assert all(v >= 0 for v in kl.tolist())  # k3 is never negative
    _, same = grpo_loss(logps, mask, zero, k=2, beta=beta, ref_logps=logps.clone())
    assert same.abs().max() < 1e-7  # no divergence from itself


def test_beta_needs_a_reference_and_zero_beta_ignores_it():
    logps, ref, mask = fixed()
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logps, mask, torch.zeros(4), k=2, beta=0.1)
    adv = group_advantages(torch.tensor([1.0, 0.0, 3.0, 1.0]), 2)
    a, _ = grpo_loss(logps, mask, adv, k=2, beta=0.0)
    b, _ = grpo_loss(logps, mask, adv, k=2, beta=0.0, ref_logps=ref)
    assert torch.equal(a, b)


def test_completion_batches_label_the_completion_only():
    b = completion_batch([[5, 6, 7], [5]], [[8, 2], [9, 9, 2]], pad_id=0)
    assert b["input_ids"].shape == (2, 8)  # padded to a multiple of 8
    assert b["input_ids"][0, :5].tolist() == [5, 6, 7, 8, 2] and b["input_ids"][1, :4].tolist() == [5, 9, 9, 2]
    assert b["attention_mask"].sum(-1).tolist() == [5, 4]
    assert b["labels"][0].tolist()[:5] == [IGNORE, IGNORE, IGNORE, 8, 2]
    assert b["labels"][1].tolist()[:4] == [IGNORE, 9, 9, 2] and (b["labels"][:, 5:] == IGNORE).all()
    # token_logps scores exactly the completion tokens (the causal shift: position t predicts t+1)
    logits = torch.randn(2, 8, 12)
    per_token, mask = token_logps(logits, b["labels"])
    assert mask.sum(-1).tolist() == [2, 3]
    want = torch.log_softmax(logits[0, 2], -1)[8] + torch.log_softmax(logits[0, 3], -1)[2]
    assert per_token[0].sum().item() == pytest.approx(want.item(), rel=1e-5)


def test_prompt_rows_are_the_loops_batches():
    rows = PromptRows([[1, 2, 3], [4], [5, 6]])
    assert len(rows) == 3 and rows.lengths == [3, 1, 2]
    assert rows.units([0, 2]) == 2 and rows.examples([0, 2]) == 2 and rows.tokens([0, 2]) == 5
    assert rows.batch([2, 0])["rows"].tolist() == [2, 0]
