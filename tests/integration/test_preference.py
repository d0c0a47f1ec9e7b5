"""Preference tuning on a tiny random Llama: each loss trains through the engine, the reference via disabled adapters
equals a frozen copy, the cached reference is reused, and the pair lint refuses what would silently mislead."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from conftest import run_cli, write_yaml
from gen_fixtures import ANSWER, build_tiny_lm, write_jsonl

from tunesmith import finetune, load_config
from tunesmith.errors import DataError


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.choice(list(ANSWER))
        wrong = rng.choice([c for c in ANSWER.values() if c != ANSWER[a]])
        prompt = [{"role": "user", "content": f"What colour is the {a}?"}]
        rows.append({"messages": prompt, "chosen": f"The {a} is {ANSWER[a]}.", "rejected": f"The {a} is {wrong}."})
    return rows


def pref_config(tmp_path, model, data, **sections) -> dict:
    cfg = {
        "name": "pref",
        "task": "preference",
        "output_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "max_length": 64, "validation_size": 0.15, "test_size": 0.15},
        "audit": {"block_on_leakage": False},
        "model": {"name": str(model), "chat_template": "default"},
        "strategy": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "preference": {"loss": "dpo", "beta": 0.5},
        "train": {"epochs": 8, "lr": 2e-2, "batch_size": 8, "precision": "fp32", "patience": None, "log_every": 5},
        "generate": {"samples": 4, "max_new_tokens": 8},
        "tracking": {"backend": "none"},
    }
    cfg["data"]["group_near_duplicates"] = False  # the toy prompts repeat by design
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def test_dpo_learns_the_preference_and_caches_the_reference(tmp_path, llama):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(160))
    res = run_cli("train", str(write_yaml(tmp_path / "c.yaml", pref_config(tmp_path, llama, data))))
    assert res.returncode == 0, res.stderr[-2000:]
    run = next((tmp_path / "runs").iterdir())
    m = json.loads((run / "metrics.json").read_text())
    test, before = m["test"], m["before"]
    # The starting model has no idea which colour is right; after DPO the chosen answers are the likelier ones.
    assert test["logp_accuracy"] > before["logp_accuracy"] + 0.15
    assert test["preference_accuracy"] >= 0.8 and test["reward_margin"] > 0
    assert (run / "reference_logps.safetensors").is_file()
    assert "preference accuracy" in (run / "report.md").read_text()
    assert {"step", "val_preference_accuracy", "val_reward_margin"} <= set().union(
        *(json.loads(line) for line in (run / "history.jsonl").read_text().splitlines())
    )


@pytest.mark.parametrize("loss", ["ipo", "orpo", "simpo", "kto"])
def test_every_loss_trains_through_the_engine(tmp_path, llama, loss):
    rows = pair_rows(80)
    if loss == "kto":  # unpaired: each response on its own row, labelled
        rows = [
            {"messages": r["messages"], "completion": r[side], "label": side == "chosen"}
            for r in rows
            for side in ("chosen", "rejected")
        ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    extra = {"beta": 2.0} if loss == "simpo" else {}
    cfg = pref_config(
        tmp_path, llama, data, preference={"loss": loss, **extra}, train={"max_steps": 12, "eval_every": 6}
    )
    run = finetune(load_config(write_yaml(tmp_path / "c.yaml", cfg)))
    test = run.metrics["test"]
    assert 0 <= test["preference_accuracy"] <= 1 and test["n"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for k, v in test.items() if isinstance(v, float))


def test_reference_with_adapters_off_equals_a_frozen_copy(tmp_path, llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.tasks.preference import PreferenceTask

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(40))
    cfg = load_config(write_yaml(tmp_path / "c.yaml", pref_config(tmp_path, llama, data)))
    base = AutoModelForCausalLM.from_pretrained(llama)
    frozen = copy.deepcopy(base).eval()
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # trained-looking adapters: the policy now differs from the base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    task = PreferenceTask(cfg)
    tok = task.load_tokenizer(type("S", (), {"location": str(llama)})())
    task_data = task.load_data()
    batch = task.encode(task_data, tok)["train"].batch(list(range(6)))
    inputs, labels = {k: batch[k] for k in ("input_ids", "attention_mask")}, batch["labels"]
    off = task._reference_logps(policy, inputs, labels)
    task._ref_model = frozen
    copy_logps = task._reference_logps(policy, inputs, labels)
    with torch.no_grad():
        on = task._terms(policy.eval(), dict(batch))
    assert torch.allclose(off, copy_logps, atol=1e-5)
    assert on["loss"].shape == (6,)
    with torch.no_grad():  # and the policy itself (adapters on) scores differently: the check can fail
        own = task._reference_logps(frozen, inputs, labels)
        task._ref_model = None
    assert torch.allclose(own, off, atol=1e-5)


def test_the_pair_lint_refuses_identical_pairs_and_one_sided_truncation(tmp_path, llama):
    rows = pair_rows(40)
    rows[3]["rejected"] = rows[3]["chosen"]
    data = write_jsonl(tmp_path / "same.jsonl", rows)
    cfg = pref_config(tmp_path, llama, data)
    res = run_cli("train", str(write_yaml(tmp_path / "c.yaml", cfg)))
    assert res.returncode == 2 and "chosen and rejected are the same text" in res.stderr
    rows = pair_rows(40)
    rows[5]["rejected"] = rows[5]["rejected"] + " It is a very long and rambling answer" * 12
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    res = run_cli("train", str(write_yaml(tmp_path / "c2.yaml", pref_config(tmp_path, llama, data))))
    assert res.returncode == 2 and "cuts the rejected response but not the chosen one" in res.stderr
    rows = pair_rows(10)
    rows[2]["chosen"] = [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "x"}]
    rows[2]["rejected"] = [{"role": "user", "content": "Else?"}, {"role": "assistant", "content": "y"}]
    del rows[2]["messages"]
    with pytest.raises(DataError, match="different prompts"):
        finetune(
            load_config(
                write_yaml(tmp_path / "c3.yaml", pref_config(tmp_path, llama, write_jsonl(tmp_path / "p.jsonl", rows)))
            )
        )


def test_adapters_off_reference_needs_an_adapter_strategy(tmp_path, llama):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(40))
    cfg = pref_config(tmp_path, llama, data)
    cfg["strategy"] = {"name": "full"}
    res = run_cli("train", str(write_yaml(tmp_path / "c.yaml", cfg)))
    assert res.returncode == 2 and "preference.reference: base" in res.stderr
    cfg["preference"]["reference"] = "base"  # a frozen copy as the reference: full fine-tuning works
    cfg["train"]["max_steps"] = 4
    res = run_cli("train", str(write_yaml(tmp_path / "c.yaml", cfg)))
    assert res.returncode == 0, res.stderr[-2000:]


def test_an_interrupted_dpo_run_resumes_exactly_with_its_cached_reference(tmp_path, llama):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(64))

    def config(name):
        cfg = pref_config(tmp_path / name, llama, data, train={"max_steps": 8, "eval_every": 4, "log_every": 2})
        cfg["generate"]["samples"] = 0
        return write_yaml(tmp_path / f"{name}.yaml", cfg)

    whole = run_cli("train", str(config("whole")))
    assert whole.returncode == 0, whole.stderr[-1500:]
    cut = run_cli("train", str(config("cut")), env={"TUNESMITH_FAULT_AT_STEP": "5:INT"})
    assert cut.returncode == 130, cut.stderr[-1500:]
    run_dir = next((tmp_path / "cut" / "runs").iterdir())
    resumed = run_cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert "computed once" in cut.stdout and "computed once" not in resumed.stdout  # the cached reference is reused
    a = json.loads(next((tmp_path / "whole" / "runs").iterdir()).joinpath("metrics.json").read_text())["test"]
    b = json.loads((run_dir / "metrics.json").read_text())["test"]
    for key in ("loss", "preference_accuracy", "reward_margin"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
