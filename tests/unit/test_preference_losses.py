"""The preference losses: against hand computations in plain `math`, and against TRL's own loss code (when installed).

The TRL tests drive TRL's real functions on a tiny bigram "language model" (logits = a row of a random matrix per input
token), so they also check that `sequence_logps` sums the same tokens TRL does. TRL is not a dependency: CI skips them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunesmith.tasks.preference.losses import (
    IGNORE,
    NEEDS_REFERENCE,
    PAIR_LOSSES,
    PairLogps,
    kto_kl,
    kto_loss,
    pair_loss,
    sequence_logps,
)

# Three pairs of fixed summed log-probs (policy and reference) and response lengths.
CHOSEN, REJECTED = [-12.0, -8.5, -20.0], [-14.0, -8.0, -19.0]
REF_CHOSEN, REF_REJECTED = [-13.0, -9.0, -19.5], [-13.5, -8.2, -18.0]
N_CHOSEN, N_REJECTED = [4, 3, 5], [5, 3, 4]


def fixed_pairs(**overrides) -> PairLogps:
    t = lambda xs: torch.tensor(xs, dtype=torch.float32)
    fields = dict(
        chosen=t(CHOSEN),
        rejected=t(REJECTED),
        chosen_tokens=t(N_CHOSEN),
        rejected_tokens=t(N_REJECTED),
        ref_chosen=t(REF_CHOSEN),
        ref_rejected=t(REF_REJECTED),
    )
    return PairLogps(**{**fields, **overrides})


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def close(tensor, expected: list[float], tol: float = 1e-5) -> None:
    assert tensor.tolist() == pytest.approx(expected, abs=tol)


# --- 1. hand computations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_dpo_by_hand(ls):
    beta = 0.1
    loss, chosen, rejected = pair_loss("dpo", fixed_pairs(), beta, label_smoothing=ls)
    want, want_c, want_r = [], [], []
    for c, r, rc, rr in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, strict=True):
        z = beta * ((c - rc) - (r - rr))
        want.append(-(1 - ls) * logsigmoid(z) - ls * logsigmoid(-z))
        want_c.append(beta * (c - rc))
        want_r.append(beta * (r - rr))
    close(loss, want)
    close(chosen, want_c)
    close(rejected, want_r)


def test_ipo_by_hand_uses_length_averaged_log_ratios():
    beta = 0.5
    loss, chosen, rejected = pair_loss("ipo", fixed_pairs(), beta)
    want = []
    for c, r, rc, rr, nc, nr in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, N_CHOSEN, N_REJECTED, strict=True):
        h = (c - rc) / nc - (r - rr) / nr
        want.append((h - 1 / (2 * beta)) ** 2)
    close(loss, want)
    close(chosen, [beta * (c - rc) for c, rc in zip(CHOSEN, REF_CHOSEN, strict=True)])  # summed, as TRL logs them


def test_simpo_by_hand():
    beta, gamma = 2.0, 0.7
    loss, chosen, rejected = pair_loss(
        "simpo", fixed_pairs(ref_chosen=None, ref_rejected=None), beta, simpo_gamma=gamma
    )
    avg_c = [c / n for c, n in zip(CHOSEN, N_CHOSEN, strict=True)]
    avg_r = [r / n for r, n in zip(REJECTED, N_REJECTED, strict=True)]
    close(loss, [-logsigmoid(beta * (a - b) - gamma) for a, b in zip(avg_c, avg_r, strict=True)])
    close(chosen, [beta * a for a in avg_c])
    close(rejected, [beta * b for b in avg_r])


def test_orpo_by_hand():
    beta = 0.1
    loss, chosen, _ = pair_loss("orpo", fixed_pairs(ref_chosen=None, ref_rejected=None), beta)
    want = []
    for c, r, nc, nr in zip(CHOSEN, REJECTED, N_CHOSEN, N_REJECTED, strict=True):
        a, b = c / nc, r / nr
        odds_c, odds_r = math.exp(a) / (1 - math.exp(a)), math.exp(b) / (1 - math.exp(b))
        want.append(-a - beta * math.log(1 / (1 + odds_r / odds_c)))  # log sigmoid(log(odds_c / odds_r))
    close(loss, want)
    close(chosen, [beta * c / n for c, n in zip(CHOSEN, N_CHOSEN, strict=True)])


def test_orpo_is_finite_when_a_response_is_certain():
    lp = PairLogps(*(torch.tensor([x]) for x in (0.0, -3.0, 2.0, 2.0)))
    loss, _, _ = pair_loss("orpo", lp, 0.1)
    assert torch.isfinite(loss).all()


def test_kto_by_hand():
    beta, kl, wd, wu = 0.3, 0.4, 1.5, 0.8
    logps, ref = [-5.0, -7.0, -6.0, -9.0], [-6.0, -6.5, -6.0, -8.0]
    desirable = [True, False, True, False]
    loss, reward = kto_loss(
        torch.tensor(logps), torch.tensor(ref), torch.tensor(desirable), torch.tensor(kl), beta, wd, wu
    )
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    want = []
    for p, q, d in zip(logps, ref, desirable, strict=True):
        want.append(wd * (1 - sigmoid(beta * (p - q - kl))) if d else wu * (1 - sigmoid(beta * (kl - (p - q)))))
    close(loss, want)
    close(reward, [beta * (p - q) for p, q in zip(logps, ref, strict=True)])
    assert not reward.requires_grad


def test_unknown_kinds_and_missing_reference_are_refused():
    with pytest.raises(ValueError, match="dpo, ipo, orpo, simpo"):
        pair_loss("dop", fixed_pairs(), 0.1)
    with pytest.raises(ValueError, match="kto_loss"):
        pair_loss("kto", fixed_pairs(), 0.1)
    for kind in sorted(NEEDS_REFERENCE & set(PAIR_LOSSES)):
        with pytest.raises(ValueError, match="reference"):
            pair_loss(kind, fixed_pairs(ref_rejected=None), 0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        pair_loss("ipo", fixed_pairs(), 0.1, label_smoothing=0.1)


# --- 3. sequence_logps ----------------------------------------------------------------------------------------------


def loop_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """The definition, one token at a time: position t-1 predicts label t."""
    sums, counts = [], []
    for b in range(labels.shape[0]):
        total, n = 0.0, 0
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                total += torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]].item()
                n += 1
        sums.append(total)
        counts.append(float(n))
    return sums, counts


@pytest.mark.parametrize("virtual", [0, 3])
def test_sequence_logps_matches_a_token_loop(virtual):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[0, :2] = IGNORE
    labels[1, [0, 3, 5]] = IGNORE
    real = torch.randn(2, 6, 11, generator=g)
    logits = torch.cat([torch.randn(2, virtual, 11, generator=g), real], dim=1)  # soft-prompt positions first
    sums, counts = sequence_logps(logits.requires_grad_(), labels)
    want_sums, want_counts = loop_logps(real, labels)
    close(sums, want_sums)
    assert counts.tolist() == want_counts == [4.0, 3.0]
    assert sums.dtype == torch.float32 and sums.requires_grad


def test_sequence_logps_upcasts_bf16_logits():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    sums, _ = sequence_logps(logits.bfloat16(), labels)
    assert sums.dtype == torch.float32
    close(sums, loop_logps(logits.bfloat16().float(), labels)[0], tol=1e-4)


# --- 4. gradients ---------------------------------------------------------------------------------------------------


def test_dpo_loss_falls_as_the_chosen_log_prob_rises_and_smoothing_changes_it():
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    loss, _, _ = pair_loss("dpo", fixed_pairs(chosen=chosen, rejected=rejected), 0.1)
    loss.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    smoothed, _, _ = pair_loss("dpo", fixed_pairs(), 0.1, label_smoothing=0.3)
    assert torch.isfinite(smoothed).all() and not torch.allclose(smoothed, loss.detach())


def test_every_pair_loss_rewards_the_chosen_response():
    for kind in PAIR_LOSSES:
        chosen = torch.tensor(CHOSEN, requires_grad=True)
        lp = fixed_pairs(chosen=chosen)
        loss, chosen_reward, _ = pair_loss(kind, lp, 0.1, simpo_gamma=0.5)
        loss.sum().backward()
        assert (chosen.grad < 0).all(), kind
        assert not chosen_reward.requires_grad, kind


# --- 5. the KTO reference point -------------------------------------------------------------------------------------


def test_kto_kl_is_a_detached_mean_clamped_at_zero():
    policy = torch.tensor([-5.0, -6.0, -7.0], requires_grad=True)
    up = kto_kl(policy, torch.tensor([-6.0, -6.5, -7.0]))
    assert up.item() == pytest.approx(0.5) and not up.requires_grad
    assert kto_kl(policy, torch.tensor([-4.0, -5.0, -6.0])).item() == 0.0


# --- 2. against TRL -------------------------------------------------------------------------------------------------

VOCAB = 11


class BigramLM:
    """Stands in for a model with TRL's fused LM head: per-token log-probs of `labels`, 0 where they are ignored."""

    training = True

    def __init__(self, seed: int):
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed))

    def logits(self, input_ids):
        return self.table[input_ids]

    def __call__(self, input_ids, labels, **_):
        logits = self.logits(input_ids)[:, :-1]
        lp = torch.log_softmax(logits, -1)
        target = labels[:, 1:]
        per_token = lp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (target != IGNORE)
        return SimpleNamespace(
            log_probs=per_token,
            entropy=-(lp.exp() * lp).sum(-1),
            mean_logits=logits.mean(-1),
            is_top1=lp.argmax(-1) == target,
        )


def sequences(lengths: list[int], prompt: int = 3, width: int = 9, seed: int = 0) -> dict:
    """Rows of a prompt then a completion of the given length, right-padded: TRL's input_ids and masks."""
    ids = torch.randint(0, VOCAB, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(width)
    ends = torch.tensor(lengths).unsqueeze(1) + prompt
    completion = ((pos >= prompt) & (pos < ends)).long()
    return {"input_ids": ids, "attention_mask": (pos < ends).long(), "completion_mask": completion}


def our_logps(lm: BigramLM, batch: dict, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch[f"{prefix}input_ids"]
    return sequence_logps(lm.logits(ids), ids.masked_fill(batch[f"{prefix}completion_mask"] == 0, IGNORE))


def trainer_self(**attrs) -> SimpleNamespace:
    """The attributes TRL's loss code reads from the trainer, without building one."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    return SimpleNamespace(
        accelerator=accelerator,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **attrs,
    )


PAIRS_CHOSEN, PAIRS_REJECTED = [4, 2, 5], [3, 5, 1]


@pytest.fixture(scope="module")
def pair_batch():
    """TRL's DPO batch layout (chosen rows, then rejected rows), with our PairLogps of the same sequences."""
    batch = sequences(PAIRS_CHOSEN + PAIRS_REJECTED)
    policy, ref = BigramLM(1), BigramLM(2)
    logps, counts = our_logps(policy, batch)
    ref_logps, _ = our_logps(ref, batch)
    n = len(PAIRS_CHOSEN)
    batch = {**batch, "ref_chosen_logps": ref_logps[:n], "ref_rejected_logps": ref_logps[n:]}
    return policy, batch, PairLogps(logps[:n], logps[n:], counts[:n], counts[n:], ref_logps[:n], ref_logps[n:])


@pytest.mark.parametrize(("kind", "trl_kind", "beta"), [("dpo", "sigmoid", 0.1), ("ipo", "ipo", 0.5)])
def test_dpo_and_ipo_match_trl(pair_batch, kind, trl_kind, beta):
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    policy, batch, lp = pair_batch
    fake = trainer_self(
        model=policy,
        beta=beta,
        label_smoothing=0.0,
        loss_types=[trl_kind],
        loss_weights=[1.0],
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        use_weighting=False,
    )
    trl_loss = DPOTrainer._compute_loss(fake, policy, batch, return_outputs=False)
    loss, chosen, rejected = pair_loss(kind, lp, beta)
    assert loss.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    metrics = fake._metrics["train"]
    assert chosen.mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-6)
    assert rejected.mean().item() == pytest.approx(metrics["rewards/rejected"][0], abs=1e-6)
    assert (chosen > rejected).float().mean().item() == pytest.approx(metrics["rewards/accuracies"][0])


def test_conservative_dpo_matches_trls_smoothed_sigmoid(pair_batch):
    """TRL 1.16's DPO "sigmoid" ignores label_smoothing; its CPO "sigmoid" on the log-ratios is the cDPO formula."""
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    _, _, lp = pair_batch
    fake = trainer_self(alpha=0.0, loss_type="sigmoid", beta=0.1, label_smoothing=0.2)
    want, _, _ = CPOTrainer.cpo_loss(fake, lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected)
    loss, _, _ = pair_loss("dpo", lp, 0.1, label_smoothing=0.2)
    close(loss, want.tolist(), tol=1e-6)


def trl_average_logps(trainer, lm: BigramLM, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch["input_ids"]
    labels = ids.masked_fill(batch["completion_mask"] == 0, IGNORE)
    avg = trainer.get_batch_logps(lm.logits(ids), labels, average_log_prob=True)
    return avg.chunk(2)


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_simpo_matches_trl(pair_batch, ls):
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    policy, batch, lp = pair_batch
    fake = trainer_self(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=ls)
    want, want_c, want_r = CPOTrainer.cpo_loss(fake, *trl_average_logps(CPOTrainer, policy, batch))
    loss, chosen, rejected = pair_loss("simpo", lp, 2.0, label_smoothing=ls, simpo_gamma=0.7)
    close(loss, want.tolist(), tol=1e-6)
    close(chosen, want_c.tolist(), tol=1e-6)
    close(rejected, want_r.tolist(), tol=1e-6)


def test_orpo_odds_ratio_term_matches_trl(pair_batch):
    """TRL returns beta * log sigmoid(log odds) and adds its own batch NLL; ours adds each pair's mean chosen NLL."""
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    policy, batch, lp = pair_batch
    avg_c, avg_r = trl_average_logps(ORPOTrainer, policy, batch)
    ratio, want_c, want_r = ORPOTrainer.odds_ratio_loss(trainer_self(beta=0.1), avg_c, avg_r)[:3]
    loss, chosen, rejected = pair_loss("orpo", lp, 0.1)
    close(loss, (-avg_c - ratio).tolist(), tol=1e-6)
    close(chosen, want_c.tolist(), tol=1e-6)
    close(rejected, want_r.tolist(), tol=1e-6)


def test_kto_matches_trl():
    pytest.importorskip("trl")
    from trl.trainer.kto_trainer import KTOTrainer

    policy, ref = BigramLM(3), BigramLM(4)
    batch = sequences([4, 2, 5, 3], seed=5)
    mismatched = sequences([2, 5, 3, 4], seed=6)  # stands in for completions paired with other prompts
    batch.update({f"KL_{k}": v for k, v in mismatched.items()})
    desirable = torch.tensor([True, False, False, True])
    logps, _ = our_logps(policy, batch)
    ref_logps, _ = our_logps(ref, batch)
    kl_logps, _ = our_logps(policy, batch, "KL_")
    ref_kl_logps = kl_logps - torch.tensor([0.5, 1.0, 0.2, 0.9])  # so that z0 = 0.65, not clamped
    batch.update(label=desirable, ref_logps=ref_logps, ref_KL_logps=ref_kl_logps)
    fake = trainer_self(
        model=policy,
        beta=0.3,
        loss_type="kto",
        desirable_weight=1.3,
        undesirable_weight=0.7,
        calculate_KL=True,
        precompute_ref_logps=True,
    )
    fake._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(fake, model, batch)
    trl_loss = KTOTrainer._compute_loss(fake, policy, batch, return_outputs=False)
    kl = kto_kl(kl_logps, ref_kl_logps)
    loss, reward = kto_loss(logps, ref_logps, desirable, kl, 0.3, 1.3, 0.7)
    metrics = fake._metrics["train"]
    assert kl.item() == pytest.approx(0.65, abs=1e-6) and kl.item() == pytest.approx(metrics["kl"][0], abs=1e-6)
    assert loss.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert reward[desirable].mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-6)
    assert reward[~desirable].mean().item() == pytest.approx(metrics["rewards/rejected"][0], abs=1e-6)
