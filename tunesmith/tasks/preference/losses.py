"""Preference-optimisation losses as pure torch functions of summed response log-probabilities.

- dpo: Rafailov et al. 2023, "Direct Preference Optimization"; `label_smoothing` > 0 is conservative DPO (cDPO,
  Mitchell 2023). TRL 1.16's DPOTrainer no longer smooths its "sigmoid" loss; the formula here is the one its CPOTrainer
  still applies (and DPO's "aot" loss with one pair).
- ipo: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", Eq. 17, on
  length-averaged log-ratios as TRL does (its authors confirmed that normalisation to TRL).
- simpo: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward" (TRL's CPOTrainer).
- orpo: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model" (TRL's ORPOTrainer).
- kto: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 7 (TRL's KTOTrainer).

Each follows TRL's code (the reference implementation); tests/unit/test_preference_losses.py checks them against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100
PAIR_LOSSES = ("dpo", "ipo", "orpo", "simpo")
NEEDS_REFERENCE = frozenset({"dpo", "ipo", "kto"})
_SMOOTHABLE = ("dpo", "simpo")


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(summed log-prob of the trained tokens per row [B] in fp32, number of trained tokens per row [B] float)."""
    per_token, mask = token_logps(logits, labels)
    return per_token.sum(-1), mask.sum(-1).float()


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(log-prob of each trained token [B, T-1] in fp32, 0 elsewhere; the mask of trained tokens [B, T-1] bool).

    Causal shift: logits[:, :-1] predict labels[:, 1:]; IGNORE labels don't count. Extra leading logit positions (the
    virtual tokens of soft prompts) are dropped. log_softmax runs in fp32 one row at a time, so a bf16 model never holds
    a [B, T, V] fp32 copy of its logits; gradients flow through.
    """
    logits = logits[:, -labels.shape[1] :][:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    safe = targets.masked_fill(~mask, 0).unsqueeze(-1)
    rows = []
    for row, idx in zip(logits, safe, strict=True):
        row = row.float()
        rows.append(row.gather(-1, idx).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(rows).masked_fill(~mask, 0.0), mask


@dataclass
class PairLogps:
    """Summed response log-probabilities of a batch of (chosen, rejected) pairs, under the policy and the reference."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None


def _check(kind: str, lp: PairLogps, label_smoothing: float) -> None:
    """Fail on a name, a missing reference or a smoothing the loss would silently ignore, before any arithmetic."""
    if kind not in PAIR_LOSSES:
        hint = " (kto is unpaired: use kto_loss)" if kind == "kto" else ""
        raise ValueError(f"unknown pair loss {kind!r}{hint}; valid: {', '.join(PAIR_LOSSES)}")
    if kind in NEEDS_REFERENCE and (lp.ref_chosen is None or lp.ref_rejected is None):
        raise ValueError(f"the {kind} loss needs the reference model's log-probs (ref_chosen, ref_rejected)")
    if label_smoothing and kind not in _SMOOTHABLE:
        raise ValueError(f"label_smoothing applies to {' and '.join(_SMOOTHABLE)} only, not {kind}")


def _smoothed_logistic(logits: Tensor, label_smoothing: float) -> Tensor:
    """-log sigmoid(logits), with the labels flipped with probability `label_smoothing` (cDPO)."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (as TRL); x is clamped just below 0 (probability 1)."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pair_loss(
    kind: str, lp: PairLogps, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss per pair [B], chosen reward [B], rejected reward [B]); rewards are detached, for the metrics.

    dpo and ipo rewards are beta * (summed) log-ratios, simpo and orpo rewards beta * length-averaged log-probs: TRL's
    choices, so the accuracy and margin metrics read like TRL's. `simpo_gamma` is the paper's margin gamma (TRL's
    `simpo_gamma`: its `logits - simpo_gamma / beta` times beta is `beta * delta - gamma`). The orpo loss per pair is the
    chosen response's mean token NLL plus beta * the odds-ratio term; TRL instead takes one token mean of the NLL over
    the whole batch of chosen sequences *including their prompt tokens*, so the two agree only on the odds-ratio term.
    """
    _check(kind, lp, label_smoothing)
    chosen, rejected = lp.chosen.float(), lp.rejected.float()
    avg_c = chosen / lp.chosen_tokens.clamp(min=1)
    avg_r = rejected / lp.rejected_tokens.clamp(min=1)
    if kind in ("dpo", "ipo"):
        ratio_c, ratio_r = chosen - lp.ref_chosen.float(), rejected - lp.ref_rejected.float()
        if kind == "dpo":
            loss = _smoothed_logistic(beta * (ratio_c - ratio_r), label_smoothing)
        else:
            h = ratio_c / lp.chosen_tokens.clamp(min=1) - ratio_r / lp.rejected_tokens.clamp(min=1)
            loss = (h - 1 / (2 * beta)) ** 2
        return loss, (beta * ratio_c).detach(), (beta * ratio_r).detach()
    if kind == "simpo":
        loss = _smoothed_logistic(beta * (avg_c - avg_r) - simpo_gamma, label_smoothing)
    else:
        log_odds = (avg_c - avg_r) - (_log1mexp(avg_c) - _log1mexp(avg_r))
        loss = -avg_c - beta * F.logsigmoid(log_odds)
    return loss, (beta * avg_c).detach(), (beta * avg_r).detach()


def kto_loss(
    logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(loss per example [B], reward [B] = beta * (logps - ref_logps), detached), in the batch's order.

    Desirable completions are pushed above the reference point `kl` (see kto_kl), undesirable ones below it. TRL
    concatenates the desirable losses before the undesirable ones and takes the mean, which is the mean of these.
    """
    ratio = logps.float() - ref_logps.float()
    desirable = desirable.bool()
    up = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    down = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, up, down), (beta * ratio).detach()


def kto_kl(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """The KTO reference point z0: mean(policy - reference) over mismatched (prompt, completion) pairs, clamped at 0.

    Detached: the paper and TRL treat z0 as a baseline, not something to optimise. TRL also averages it over
    processes before clamping; under data parallelism, gather both inputs from all ranks first to match it.
    """
    return (policy_kl_logps.float() - ref_kl_logps.float()).mean().clamp(min=0).detach()
