"""Multi-task pieces without training: the weighted loss against a hand computation, the task sampler's shares
(proportional, temperature, round-robin), single-task batches, and a plan that depends only on (seed, epoch)."""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tunesmith.config import load_config
from tunesmith.engine.batches import plan_steps, shard
from tunesmith.engine.mixing import Mixture, mixing_probs, stratified_draws
from tunesmith.errors import ConfigError
from tunesmith.tasks.classification.batches import Tokenized
from tunesmith.tasks.multitask.heads import Head, block_probs, multitask_loss

HEADS = [Head("a", 0, 3, ("x", "y", "z"), weight=1.0), Head("b", 3, 5, ("p", "q"), weight=0.25, auxiliary=True)]


def test_weighted_loss_is_the_hand_computed_sum():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    task = torch.tensor([0, 0, 1, 0, 1, 1])
    labels = torch.tensor([2, 0, 4, 1, 3, 3])  # label slots: task a's 0..2, task b's 3..4
    got = multitask_loss(logits, labels, task, HEADS, [None, None])
    by_hand = 0.0
    for i in range(6):
        h = HEADS[int(task[i])]
        block = logits[i, h.start : h.end]
        by_hand += h.weight * -torch.log_softmax(block, -1)[labels[i] - h.start]
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # a single-task batch: weight x the sum of the plain cross-entropy on the task's block (what a single-task run sums)
    only_b = multitask_loss(logits[task == 1], labels[task == 1], task[task == 1], HEADS, [None, None])
    plain = F.cross_entropy(logits[task == 1, 3:5], labels[task == 1] - 3, reduction="sum")
    assert only_b.item() == pytest.approx(0.25 * plain.item(), rel=1e-6)


def test_uncertainty_weighting_and_class_weights_by_hand():
    torch.manual_seed(1)
    logits, task, labels = torch.randn(4, 5), torch.tensor([0, 1, 0, 1]), torch.tensor([1, 3, 2, 4])
    s = torch.tensor([0.5, -0.3], requires_grad=True)
    cw = [torch.tensor([1.0, 2.0, 0.5]), None]
    got = multitask_loss(logits, labels, task, HEADS, cw, s)
    want = 0.0
    for i in range(4):
        g, h = int(task[i]), HEADS[int(task[i])]
        ce = -torch.log_softmax(logits[i, h.start : h.end], -1)[labels[i] - h.start]
        if cw[g] is not None:
            ce = cw[g][labels[i] - h.start] * ce
        want += h.weight * (math.exp(-s[g].item()) * ce + 0.5 * s[g].item())
    assert got.item() == pytest.approx(float(want), rel=1e-5)
    got.backward()
    assert s.grad is not None and torch.all(s.grad != 0)  # the log-variances learn


def test_block_probs_are_a_softmax_per_task():
    logits = np.array([[1.0, 2.0, 3.0, 10.0, -10.0]])
    p = block_probs(logits, HEADS[1])
    assert p.shape == (1, 2) and p.sum() == pytest.approx(1.0) and p[0, 0] > 0.999


def test_mixing_probabilities():
    sizes = [900, 100]
    assert mixing_probs(sizes, "proportional") == pytest.approx([0.9, 0.1])
    t2 = mixing_probs(sizes, "temperature", 2.0)
    assert t2 == pytest.approx([30 / 40, 10 / 40])  # sqrt(900) : sqrt(100)
    assert mixing_probs(sizes, "temperature", 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)
    assert mixing_probs(sizes, "round-robin") == [0.5, 0.5]
    assert mixing_probs(sizes, "weights", weights=[7, 3]) == pytest.approx([0.7, 0.3])
    draws = stratified_draws([0.7, 0.2, 0.1], 50, random.Random(0))
    assert [draws.count(g) for g in range(3)] == [35, 10, 5]


def _mixture(sizes, sampling, per="step", temperature=2.0):
    ids = [[1] * (1 + i % 5) for i in range(sum(sizes))]
    base = Tokenized(ids, [0] * len(ids))
    rows, start = [], 0
    for n in sizes:
        rows.append(list(range(start, start + n)))
        start += n
    return Mixture(
        base,
        rows,
        mixing_probs(sizes, sampling, temperature),
        sampling,
        per,
        "task_index",
        ["a", "b", "c"][: len(sizes)],
    )


@pytest.mark.parametrize("sampling", ["proportional", "temperature", "round-robin"])
def test_sampled_shares_match_the_configured_ones(sampling):
    mix = _mixture([600, 150, 50], sampling)
    counts, steps = np.zeros(3), 0
    for epoch in range(4):
        plan = plan_steps(mix, 8, 2, seed=3, epoch=epoch, group=True, world=2)
        assert len(plan) == len(mix) // 16
        for micro in plan:
            groups = {int(mix.group_of[r]) for m in micro for r in m}
            assert len(groups) == 1  # every micro-batch of a step from one task
            assert all(len(m) == 8 for m in micro)
            counts[groups.pop()] += 1
            steps += 1
    share = counts / steps
    assert share == pytest.approx(mix.probs, abs=1.0 / (len(mix) // 16))  # within one draw per epoch
    real = mix.realised(steps, 8, 2, 3, 2)
    assert [real[n]["share"] for n in "abc"] == pytest.approx(list(share))
    if sampling == "round-robin":
        order = [int(mix.group_of[m[0][0]]) for m in plan_steps(mix, 8, 2, 3, 0, True, 2)[:6]]
        assert order == [0, 1, 2, 0, 1, 2]


def test_micro_batch_mixing_and_a_plan_fixed_by_seed_and_epoch():
    mix = _mixture([300, 300], "proportional", per="micro-batch")
    plan = plan_steps(mix, 4, 4, seed=1, epoch=2, group=False, world=1)
    assert any(len({int(mix.group_of[m[0]]) for m in step}) > 1 for step in plan)  # steps mix tasks
    for step in plan:
        for m in step:
            assert len({int(mix.group_of[r]) for r in m}) == 1  # each micro-batch stays single-task
    assert plan == plan_steps(mix, 4, 4, seed=1, epoch=2, group=False, world=1)  # a resumed run replans the same
    assert plan != plan_steps(mix, 4, 4, seed=1, epoch=3, group=False, world=1)
    # two processes take strided shares of the same global micro-batches: together they cover each one exactly
    for step in plan[:3]:
        for m in step:
            assert sorted(shard(m, 0, 2) + shard(m, 1, 2)) == sorted(m)
    batch = mix.batch(plan[0][0])
    assert batch["task_index"].tolist() == [int(mix.group_of[plan[0][0][0]])] * 4


def test_small_task_is_upsampled_with_fresh_orders():
    mix = _mixture([400, 10], "round-robin")
    plan = plan_steps(mix, 10, 1, seed=0, epoch=0, group=False, world=1)
    small = [sorted(s[0]) for s in plan if mix.group_of[s[0][0]] == 1]
    assert all(rows == list(range(400, 410)) for rows in small)  # each draw of the small task is all of its rows


def test_config_mistakes(tmp_path):
    base = {"task": "multi-task", "tracking": {"backend": "none"}}
    with pytest.raises(ConfigError, match="two or more tasks"):
        load_config({**base, "tasks": {"a": {"data": {"path": "a.csv"}}}})
    with pytest.raises(ConfigError, match="every task is auxiliary"):
        load_config({**base, "tasks": {n: {"data": {"path": "a.csv"}, "auxiliary": True} for n in "ab"}})
    with pytest.raises(ConfigError, match="tasks.b: no data"):
        load_config({**base, "tasks": {"a": {"data": {"path": "a.csv"}}, "b": {"weight": 2}}})
    with pytest.raises(ConfigError, match="unknown key 'wieght'"):
        load_config({**base, "tasks": {"a": {"data": {"path": "a.csv"}}, "b": {"data": {"path": "b"}, "wieght": 2}}})
    with pytest.raises(ConfigError, match="each task's file goes under tasks"):
        load_config({**base, "data": {"path": "a.csv"}, "tasks": {n: {"data": {"path": "a.csv"}} for n in "ab"}})
    with pytest.raises(ConfigError, match="set task: multi-task"):
        load_config({"data": {"path": "a.csv"}, "tasks": {"a": {"data": {"path": "a.csv"}}}})
    cfg = load_config(
        {
            **base,
            "data": {"max_length": 48, "text_column": "t"},
            "tasks": {"a": {"data": {"path": "a.csv"}}, "b": {"data": {"path": "b.csv", "max_length": 16}}},
        }
    )
    assert cfg.tasks["a"].data.max_length == 48 and cfg.tasks["a"].data.text_column == "t"  # top-level data: defaults
    assert cfg.tasks["b"].data.max_length == 16 and cfg.tasks["b"].data.path == "b.csv"
