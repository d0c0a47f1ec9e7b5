"""The engine's pieces called directly: fit() on a toy model, the Batches contract, task.encode / task.loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesmith import load_config
from tunesmith.engine.batches import Features, mean_loss, plan_steps
from tunesmith.engine.context import Context
from tunesmith.engine.loop import fit
from tunesmith.strategies import build_strategy
from tunesmith.tasks import build_task


class Linear(nn.Module):
    """y = w.x + b on 4 features; `labels` are the targets (a regression: lower loss is better)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)

    def forward(self, features, **_):
        return self.lin(features).squeeze(-1)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.25
    data = Features(x, [0] * n)
    data.batch = lambda rows, with_targets=True: {"features": x[rows], **({"labels": y[rows]} if with_targets else {})}
    return data


def _loss(model, inputs):
    target = inputs.pop("labels")
    return ((model(**inputs) - target) ** 2).sum()


def _fit(tmp_path, **train):
    from accelerate import Accelerator

    cfg = load_config(
        {
            "data": {"path": "x.csv"},
            "train": {
                "epochs": 10,
                "batch_size": 8,
                "lr": 0.1,
                "warmup_ratio": 0.0,
                "patience": None,
                "log_every": 4,
                **train,
            },
        }
    )
    cfg.train.metric = "loss"
    model, train_data, val = Linear(), _data(), _data(32, seed=1)
    ctx = Context(Accelerator(cpu=True), cfg, run_dir=tmp_path)
    result = fit(
        model,
        build_strategy("full"),
        train_data,
        _loss,
        lambda m: {"loss": mean_loss(m, val, _loss, 16, ctx.autocast)},
        cfg.train,
        ctx,
    )
    return model, result


def test_fit_learns_and_returns_the_best_weights(tmp_path):
    model, result = _fit(tmp_path)
    history = [h["train_loss"] for h in result.history if "train_loss" in h]
    assert history[-1] < 0.1 * history[0]
    assert result.best_metrics["loss"] == min(h["val_loss"] for h in result.history if "val_loss" in h)
    assert result.steps == 10 * 8 and result.samples_per_second > 0


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    a, _ = _fit(tmp_path / "a", batch_size=16, grad_accum=1)
    b, _ = _fit(tmp_path / "b", batch_size=8, grad_accum=2)
    assert torch.allclose(a.lin.weight, b.lin.weight, atol=1e-5)


def test_early_stopping_stops_after_patience(tmp_path):
    _, result = _fit(tmp_path, lr=1e-12, patience=2, eval_every=2)
    assert result.stopped_early and result.steps == 2 * 3


def test_steps_are_planned_globally_and_every_process_gets_a_share():
    data = _data(20)
    steps = plan_steps(data, global_micro=4, accum=2, seed=0, epoch=0, group=False, world=2)
    assert sum(len(m) for s in steps for m in s) == 20 and all(len(m) >= 2 for s in steps for m in s)


@pytest.fixture
def classification(tiny_model, toy_csv):
    return build_task(
        load_config({"data": {"path": str(toy_csv), "max_length": 32}, "model": {"name": str(tiny_model)}})
    )


def test_classification_encode_and_summed_loss(classification, tiny_model):
    from tunesmith.models.loading import resolve_model

    source = resolve_model(str(tiny_model))
    data = classification.load_data()
    tok = classification.load_tokenizer(source)
    batches = classification.encode(data, tok)
    assert {k: len(v) for k, v in batches.items()} == {k: v["rows"] for k, v in data.summary.items()}
    train = batches["train"]
    rows = list(range(6))
    assert train.units(rows) == train.examples(rows) == 6 and train.tokens(rows) == sum(train.lengths[:6])
    model = classification.load_model(source, tok, build_strategy("full"), data.labels).eval()
    with torch.no_grad():
        summed = classification.loss(model, train.batch(rows))
        one = sum(classification.loss(model, train.batch([r])) for r in rows)
    assert summed.item() == pytest.approx(one.item(), rel=1e-5)  # summed over examples, not averaged
