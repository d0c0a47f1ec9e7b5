"""End to end on the real packaged SmolLM2-135M-Instruct GGUF: conversion (cached), its ChatML template,
lint, a few LoRA steps, generation with the saved run. Slow-ish (~1 min): the real model, on CPU."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_yaml
from gen_fixtures import toy_pairs, write_jsonl

pytestmark = pytest.mark.slow


def test_smollm2_gguf_alias_converts_once_and_fine_tunes_with_lora(tmp_path):
    pytest.importorskip("gguf")
    from tunesmith.models.loading import ALIASES

    cache = tmp_path / "cache"
    env = {"TUNESMITH_CACHE": str(cache)}
    rows = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(40)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = write_yaml(
        tmp_path / "c.yaml",
        {
            "name": "smol",
            "task": "causal-lm",
            "output_dir": str(tmp_path / "runs"),
            "data": {"path": str(data), "max_length": 96, "validation_size": 0.1, "test_size": 0.1},
            "model": {"name": "smollm2-135m-instruct"},
            "strategy": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "patience": None},
            "generate": {"samples": 2, "max_new_tokens": 8},
            "tracking": {"backend": "none"},
        },
    )
    lint = run_cli("data", "lint", str(cfg), "--show", "1", env=env)
    assert lint.returncode == 0, lint.stderr[-1500:]
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in lint.stdout  # first use converts
    assert (
        "<|im_start|>assistant\n[[The" in lint.stdout and "<|im_end|>" in lint.stdout
    )  # ChatML; the answer and its end train
    res = run_cli("train", str(cfg), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "converting" not in res.stdout  # later uses load the cached plain folder
    converted = [p for p in (cache / "gguf").iterdir() if (p / "model.safetensors").is_file()]
    assert len(converted) == 1 and ALIASES["smollm2-135m-instruct"].gguf_file.endswith(".gguf")
    run_dir = next((tmp_path / "runs").iterdir())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["steps"] == 3 and m["test"]["loss"] < m["before"]["loss"]
    out = run_cli("generate", str(run_dir), "--prompt", "What colour is the cat?", "--max-new-tokens", "6", env=env)
    assert out.returncode == 0 and out.stdout.strip()
