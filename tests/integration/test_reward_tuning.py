"""Reward tuning (GRPO) on a tiny random Llama: a reward it can earn rises through the engine, the sampled rewards are
logged per component, an interrupted run resumes exactly (the sampling's random state is checkpointed), and the run
serves `tunesmith eval` like a causal-lm one."""

from __future__ import annotations

import json

import pytest
from gen_fixtures import build_tiny_lm, toy_pairs, write_jsonl

import tunesmith
from tunesmith.errors import ConfigError, Interrupted

REWARDS = '''
def short(completions, prompts, references):
    """Fewer characters score higher: earnable by a random model (its answers differ in length)."""
    return [max(0.0, 1.0 - len(c) / 30) for c in completions]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    (root / "rewards_toy.py").write_text(REWARDS)
    return build_tiny_lm(root / "llama", "llama"), write_jsonl(root / "toy.jsonl", toy_pairs(120)), root


def grpo_config(out, setup, **sections) -> dict:
    model, data, root = setup
    cfg = {
        "name": "grpo",
        "task": "reward-tuning",
        "output_dir": str(out / "runs"),
        "data": {
            "path": str(data),
            "max_length": 64,
            "validation_size": 0.15,
            "test_size": 0.15,
            "group_near_duplicates": False,  # the toy prompts repeat by design
        },
        "audit": {"block_on_leakage": False},
        "model": {"name": str(model)},
        "strategy": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "reward": [
            {"kind": "python", "fn": f"{root / 'rewards_toy.py'}:short"},
            {"kind": "length", "max_words": 1, "weight": 0.5},
        ],
        "grpo": {"samples": 4, "beta": 0.04, "eval_prompts": 4},
        "train": {"max_steps": 16, "lr": 2e-2, "batch_size": 4, "precision": "fp32", "patience": None},
        "generate": {"samples": 6, "max_new_tokens": 10},
        "tracking": {"backend": "none"},
    }
    cfg["train"].update(log_every=4, eval_every=8)
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    return tunesmith.finetune(grpo_config(tmp_path_factory.mktemp("trained"), setup))


def test_grpo_raises_a_reward_the_model_can_earn(trained):
    m = trained.metrics
    before, after = m["before"]["rewards"], m["test"]["rewards"]
    assert set(after) == {"reward", "short", "length"}
    assert after["short"] > before["short"] + 0.2 and after["reward"] > before["reward"]
    history = [json.loads(line) for line in (trained.path / "history.jsonl").read_text().splitlines()]
    logged = [h for h in history if "train_loss" in h]
    # the sampled completions' rewards per component, the KL to the reference and the share of groups without signal
    for key in ("train_reward", "train_reward_short", "train_reward_length", "train_kl", "train_flat_groups"):
        assert all(key in h for h in logged), key
    assert logged[-1]["train_reward_short"] > logged[0]["train_reward_short"]
    assert logged[-1]["train_kl"] > 0  # the policy moved away from the adapters-off reference
    vals = [h for h in history if "val_reward" in h]
    assert len(vals) == 2 and all("val_reward_short" in h and "val_loss" in h for h in vals)
    report = (trained.path / "report.md").read_text()
    assert "reward: short" in report and "loss on the reference answers" in report
    rows = [json.loads(line) for line in (trained.path / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all({"before", "after", "reference"} <= set(r) for r in rows)


def test_a_reward_tuning_run_evaluates_and_generates_like_causal_lm(trained, setup):
    _, data, _ = setup
    out = trained.evaluate(str(data), save=False)  # what `tunesmith eval` runs: the loss on the reference answers
    assert out["loss"] > 0 and out["generation"]["n"] == 6
    assert len(trained.generate(["What colour is the cat?"], max_new_tokens=4)) == 1


def test_an_interrupted_grpo_run_resumes_exactly(tmp_path, setup, monkeypatch):
    def config(name):
        return grpo_config(tmp_path / name, setup, train={"max_steps": 4, "eval_every": 2, "log_every": 1})

    straight = tunesmith.finetune(config("whole"))
    monkeypatch.setenv("TUNESMITH_FAULT_AT_STEP", "3:INT")
    with pytest.raises(Interrupted):
        tunesmith.finetune(config("cut"))
    monkeypatch.delenv("TUNESMITH_FAULT_AT_STEP")
    resumed = tunesmith.finetune(resume=tunesmith.list_runs(tmp_path / "cut" / "runs")[0].path)

    def train_log(run):
        lines = (run.path / "history.jsonl").read_text().splitlines()
        return {h["step"]: h for h in map(json.loads, lines) if "train_loss" in h}

    a, b = train_log(straight), train_log(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in (1, 2, 3, 4):  # the same completions were sampled (steps 3-4 after the resume), so the same rewards
        assert b[s]["train_reward"] == pytest.approx(a[s]["train_reward"], abs=1e-6), s
        assert b[s]["train_loss"] == pytest.approx(a[s]["train_loss"], rel=1e-4, abs=1e-7), s
    assert resumed.metrics["test"]["rewards"] == pytest.approx(straight.metrics["test"]["rewards"], abs=1e-6)


def test_full_fine_tuning_keeps_a_frozen_reference_and_mistakes_are_one_line(tmp_path, setup, capsys):
    cfg = grpo_config(tmp_path, setup, train={"max_steps": 2, "eval_every": 2})
    cfg["strategy"] = {"name": "full"}
    cfg["generate"]["samples"] = 0
    run = tunesmith.finetune(cfg)
    assert "reference: a frozen copy" in capsys.readouterr().out
    assert run.metrics["validation_best"]["reward"] >= 0

    no_reward = grpo_config(tmp_path, setup)
    del no_reward["reward"]
    with pytest.raises(ConfigError, match="needs `reward:`"):
        tunesmith.finetune(no_reward)
    plain = write_jsonl(tmp_path / "text.jsonl", [{"text": f"{r['prompt']} {r['completion']}"} for r in toy_pairs(40)])
    text = grpo_config(tmp_path, setup, data={"path": str(plain), "sample_format": "text"})
    with pytest.raises(ConfigError, match="no prompts"):
        tunesmith.finetune(text)
    soft = grpo_config(tmp_path, setup)
    soft["strategy"] = {"name": "prompt-tuning", "virtual_tokens": 4}
    with pytest.raises(ConfigError, match="soft prompts"):
        tunesmith.finetune(soft)
