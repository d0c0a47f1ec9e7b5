"""Forgetting, piece by piece on tiny models: each penalty's value and gradient, replay's share, drift measures,
and the config's one-line mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tunesmith import load_config
from tunesmith.errors import ConfigError
from tunesmith.forgetting import cosine_sum, kl_sum
from tunesmith.forgetting.anchors import anchors_of, canonical_name, estimate_fisher
from tunesmith.forgetting.drift import cosine_correlation, drift, linear_cka
from tunesmith.forgetting.regularize import Distill, Reference, Replay, Teacher
from tunesmith.models.loading import ModelSource, load_classifier


def _classifier(folder):
    return load_classifier(ModelSource("tiny", str(folder), "local"), ["a", "b", "c"], 0)


# ---- L2-SP


def test_l2sp_is_zero_at_the_start_and_grows_with_drift(tiny_model):
    model = _classifier(tiny_model)
    anchors = anchors_of(model)
    assert float(anchors.l2sp()) == 0.0
    # the new head has no pretrained value: plain weight decay is its regulariser, not L2-SP
    assert not any(canonical_name(n).startswith("classifier.") for n in anchors.params)
    assert "classifier.weight" in model.tunesmith_new_weights
    w = model.bert.encoder.layer[0].attention.self.query.weight
    step = torch.full_like(w, 0.01)
    with torch.no_grad():
        w += step
    assert float(anchors.l2sp()) == pytest.approx(float(step.pow(2).sum()), rel=1e-5)
    with torch.no_grad():
        w += step
    assert float(anchors.l2sp()) == pytest.approx(float((2 * step).pow(2).sum()), rel=1e-5)
    # gradient: d/dw ||w - w0||^2 = 2 (w - w0)
    anchors.l2sp().backward()
    assert torch.allclose(w.grad, 2 * 2 * step, atol=1e-6)


def test_l2sp_on_lora_is_the_merged_weight_change_from_the_adapter_alone(tiny_model):
    from peft import LoraConfig, get_peft_model

    base = _classifier(tiny_model)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    anchors = anchors_of(model)
    assert anchors.lora and all(
        not n.endswith(("lora_A.default.weight", "lora_B.default.weight")) for n in anchors.params
    )
    assert float(anchors.l2sp()) == 0.0  # B = 0: the adapter starts as the identity
    torch.manual_seed(1)
    for term in anchors.lora.values():
        with torch.no_grad():
            term.b.normal_(0, 0.1)
    value = float(anchors.l2sp())
    assert value > 0
    merged = model.merge_and_unload()
    moved = sum(
        float((p.detach() - original[n]).pow(2).sum())
        for n, p in merged.named_parameters()
        if n in original and not n.startswith("classifier")
    )
    assert value == pytest.approx(moved, rel=1e-4)


# ---- EWC


class Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))


def test_ewc_matches_a_hand_computed_fisher_weighted_sum():
    model = Line()
    anchors = anchors_of(model)
    xs = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, -1.0], [2.0, -1.0, 0.0]])
    ys = torch.tensor([1.0, 0.0, -2.0])

    def loss(i):
        return (model.w @ xs[i] - ys[i]) ** 2

    fisher = estimate_fisher(model, anchors, range(3), loss)["w"]
    w0 = model.w.detach().clone()
    grads = torch.stack([2 * (w0 @ xs[i] - ys[i]) * xs[i] for i in range(3)])  # d/dw (w.x - y)^2
    hand = grads.pow(2).mean(0)
    hand = hand / hand.mean()  # normalised to mean 1: weight is on l2sp's scale
    assert torch.allclose(fisher, hand, rtol=1e-5)
    assert float(fisher.mean()) == pytest.approx(1.0)
    with torch.no_grad():
        model.w += torch.tensor([0.1, -0.2, 0.3])
    expected = float((hand * torch.tensor([0.1, -0.2, 0.3]).pow(2)).sum())
    penalty = anchors.ewc({"w": fisher})
    assert float(penalty) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    assert torch.allclose(model.w.grad, 2 * hand * torch.tensor([0.1, -0.2, 0.3]), rtol=1e-5)


# ---- distillation


def test_distillation_is_zero_when_student_is_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(5, 11, requires_grad=True)
    same = kl_sum(logits, logits.detach(), 2.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    same.backward()
    assert float(logits.grad.abs().max()) < 1e-6  # at the teacher, no pull
    assert float(kl_sum(logits, torch.randn(5, 11), 2.0)) > 0
    emb = torch.randn(4, 8)
    assert float(cosine_sum(emb, emb)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_sum(emb, -emb)) == pytest.approx(8.0, rel=1e-5)


def test_distill_term_on_a_peft_model_is_zero_before_training_and_uses_no_second_copy(tiny_model):
    from peft import LoraConfig, get_peft_model

    from tunesmith.tasks.classification.batches import cross_entropy_sum

    model = get_peft_model(
        _classifier(tiny_model), LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    teacher = Teacher(model, None)
    assert teacher.copy is None  # adapters disabled = the original model

    class Hooks:
        distill_flags = {"output_hidden_states": True}

        def distill_forward(self, module, batch):
            return module(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
            )

        def distill_outputs(self, output, batch):
            return output.hidden_states[-1][:, 0], "embedding"

    term = Distill(1.0, 2.0, Hooks(), teacher, lambda m: m, None, 0, 4)
    batch = {
        "input_ids": torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    batch["labels"] = torch.tensor([0, 1])
    loss, extra = term.micro(model, batch, lambda b: cross_entropy_sum(model, dict(b)))
    assert float(extra) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    _, extra = term.micro(model, batch, lambda b: cross_entropy_sum(model, dict(b)))
    assert float(extra) > 1e-4


def test_a_full_model_teacher_is_a_frozen_copy():
    model = Line()
    teacher = Teacher(model, torch.bfloat16)
    assert teacher.copy is not model and not any(p.requires_grad for p in teacher.copy.parameters())
    assert teacher.copy.w.dtype == torch.bfloat16


# ---- replay


class Rows:
    def __init__(self, n, units=1):
        self.n, self.u = n, units
        self.lengths = [3] * n

    def __len__(self):
        return self.n

    def units(self, rows):
        return len(rows) * self.u

    def batch(self, rows, with_targets=True):
        return {"rows": torch.tensor(rows)}


def test_replay_steps_hold_the_configured_fraction_and_are_reproducible():
    seen = []

    def loss(module, inputs):
        seen.append(inputs["rows"].tolist())
        return torch.tensor(float(len(inputs["rows"])))

    ref = Reference("r", Rows(50), scorer=lambda m: m, loss=loss)
    replay = Replay(0.2, ref, lambda m: m, seed=3, global_rows=16)
    _, rows = replay.step_rows(0)
    assert len(rows) / (16 + len(rows)) == pytest.approx(0.2)  # 4 of every 20 rows
    assert replay.step_rows(0)[1] == rows  # a resumed run draws the same rows
    assert replay.step_rows(1)[1] != rows
    shares = [Replay(f, ref, lambda m: m, 0, 32).per_step for f in (0.1, 0.25, 0.5)]
    assert [s / (32 + s) for s in shares] == pytest.approx([0.1, 0.25, 0.5], abs=0.02)
    # two processes take disjoint halves of the step's replayed rows
    model = Line()
    replay.step(model, 0, 0, 2, 20.0)
    replay.step(model, 0, 1, 2, 20.0)
    assert sorted(seen[0] + seen[1]) == sorted(rows)


# ---- drift


def test_cka_is_one_under_rotation_and_scaling_and_falls_for_unrelated_representations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, rng.normal(size=(60, 8))) < 0.4
    assert cosine_correlation(x, x) == pytest.approx(1.0)
    noisy = x + rng.normal(scale=0.5, size=x.shape)
    d = drift(x, noisy)
    assert 0.5 < d["cka"] < 1 and 0.5 < d["cosine_correlation"] < 1


# ---- config mistakes: one line each


@pytest.mark.parametrize(
    "regularize, reference, message",
    [
        ([{"kind": "l2sp", "fraction": 0.3}], [], "fraction does not apply to kind l2sp"),
        ([{"kind": "replay", "fraction": 0.1}], [], "add one to eval.reference"),
        (
            [{"kind": "ewc", "reference": "chat"}],
            [{"name": "general", "path": "x.csv"}],
            "'chat' is not an eval.reference",
        ),
        ([{"kind": "replay", "fraction": 1.5}], [{"name": "g", "path": "x.csv"}], "fraction must be between 0 and 1"),
        ([{"kind": "l2sp"}, {"kind": "l2sp"}], [], "listed twice"),
        ([], [{"name": "g", "path": "x.csv"}, {"name": "g", "path": "y.csv"}], "used twice"),
        ([], [{"name": "g"}], "give `path`"),
        ([], [{"name": "g", "path": "x.csv", "run": "runs/a"}], "one of them"),
    ],
)
def test_forgetting_config_mistakes_are_one_line(tmp_path, regularize, reference, message):
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n")
    with pytest.raises(ConfigError, match=message):
        load_config({"data": {"path": str(data)}, "eval": {"reference": reference}, "regularize": regularize})


# ---- composable with every strategy that trains the model


@pytest.mark.parametrize(
    "name, options",
    [
        ("full", {}),
        ("freeze", {"layers": 1}),
        ("discriminative-lr", {}),
        ("gradual-unfreeze", {}),
        ("lora", {"r": 4}),
        ("ia3", {}),
        ("prompt-tuning", {"virtual_tokens": 4}),
        ("prefix-tuning", {"virtual_tokens": 4}),
    ],
)
def test_every_strategy_gets_a_penalty_that_starts_at_zero_and_a_teacher(tiny_model, name, options):
    from tunesmith.strategies import build_strategy
    from tunesmith.strategies.registry import get_strategy_class

    strategy = build_strategy(name, get_strategy_class(name).Options(**options))
    model = strategy.prepare(_classifier(tiny_model))
    anchors = anchors_of(model)
    assert len(anchors) > 0 and float(anchors.l2sp()) == 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    assert float(anchors.l2sp()) > 0
    teacher = Teacher(model, None)
    assert (teacher.copy is None) == hasattr(model, "disable_adapter")  # PEFT: adapters disabled, no copy
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad(), teacher.module(model) as original:
        out = original(**batch, output_hidden_states=True)
    assert torch.isfinite(out.hidden_states[-1]).all()
