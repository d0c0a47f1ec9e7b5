"""End to end on the real packaged SmolLM2-135M-Instruct GGUF: conversion (cached), its ChatML template,
lint, a few LoRA steps, generation with the saved run. Slow-ish (~1 min): the real model, on CPU."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def test_smollm2_gguf_alias_converts_once_and_fine_tunes_with_lora(smollm2_run):
    from tunesmith.models.loading import ALIASES

    lint, res, env = smollm2_run["lint"], smollm2_run["train"], smollm2_run["env"]
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in lint.stdout  # first use converts
    assert (
        "<|im_start|>assistant\n[[The" in lint.stdout and "<|im_end|>" in lint.stdout
    )  # ChatML; the answer and its end train
    assert "converting" not in res.stdout  # later uses load the cached plain folder
    converted = [p for p in (smollm2_run["cache"] / "gguf").iterdir() if (p / "model.safetensors").is_file()]
    assert len(converted) == 1 and ALIASES["smollm2-135m-instruct"].gguf_file.endswith(".gguf")
    run_dir = smollm2_run["run"]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["steps"] == 3 and m["test"]["loss"] < m["before"]["loss"]
    out = run_cli("generate", str(run_dir), "--prompt", "What colour is the cat?", "--max-new-tokens", "6", env=env)
    assert out.returncode == 0 and out.stdout.strip()
