"""`tunesmith plan --gpus N` (tunesmith/tools/plan_scale.py): the shape against real models, the ZeRO memory and
communication relations, the cost, and the command on the shipped Llama-2 shapes. No GPU, no timing."""

from __future__ import annotations

import pytest
from conftest import run_cli


def _llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=8)
    cfg.update(num_key_value_heads=2, vocab_size=301, hidden_act="silu", **kw)
    config = LlamaConfig(**cfg)
    return config, LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [False, True])
def test_shape_counts_a_real_llama(tied):
    from torch import nn

    from tunesmith.tools.plan_scale import LMShape

    config, model = _llama(tie_word_embeddings=tied)
    shape = LMShape.from_config(config)
    assert shape.gated and shape.kv_heads == 2 and shape.tied == tied
    assert shape.params() == sum(p.numel() for p in model.parameters())
    assert shape.linear() == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("targets", [None, "all-linear", ["q_proj", "k_proj", "down_proj"]])
def test_lora_count_matches_peft(targets):
    from peft import LoraConfig, get_peft_model

    from tunesmith.tools.plan_scale import LMShape, lora_params

    config, model = _llama()
    peft_targets = targets if targets is not None else ["q_proj", "v_proj"]  # PEFT's Llama default
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=peft_targets))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert lora_params(LMShape.from_config(config), 4, targets) == trainable


def _run(strategy="full", gpus=8, **kw):
    family, quantized = ("dense", False) if strategy == "full" else ("low-rank", strategy == "qlora")
    from transformers import AutoConfig

    from tunesmith.tools.plan_scale import LMShape, ScaleRun

    shape = LMShape.from_config(AutoConfig.from_pretrained("configs/plan/llama-2-7b"))
    return ScaleRun(shape, family, gpus, micro_batch=2, seq_len=512, quantized=quantized, **kw)


def _state(row):
    m = row["memory_gb"]
    return m["weights"] + m["gradients"] + m["optimizer_states"]


def test_sharding_divides_model_states_by_the_gpus():
    from tunesmith.tools.plan_devices import GPUS
    from tunesmith.tools.plan_scale import plan_mode

    h100, run = GPUS["h100"], _run()
    P = run.shape.params()
    ddp, fsdp = plan_mode(run, "ddp", h100), plan_mode(run, "fsdp", h100)
    assert _state(ddp) == pytest.approx(16 * P / 1e9, rel=1e-3)  # fp32 weights + gradients + AdamW's two moments
    assert _state(fsdp) == pytest.approx(_state(ddp) / 8, rel=1e-2)
    zero2, zero3 = plan_mode(run, "zero2", h100), plan_mode(run, "zero3", h100)
    assert zero2["memory_gb"]["weights"] == pytest.approx(2 * P / 1e9, rel=1e-3)  # 16-bit weights, replicated
    assert _state(zero3) == pytest.approx(16 * P / 8 / 1e9, rel=1e-2)  # ZeRO's (2 + 2 + 12) / N
    off = plan_mode(run, "zero3", h100, offload=True)
    assert off["memory_gb"]["optimizer_states"] == 0 and off["host_gb"] == pytest.approx(12 * P / 8 / 1e9, rel=1e-2)
    assert off["step_s"] > zero3["step_s"] and off["per_gpu_gb"] < zero3["per_gpu_gb"]
    assert not ddp["fits"] and fsdp["fits"] and ddp["params"]["total"] == P


def test_communication_follows_the_zero_paper():
    from tunesmith.tools.plan_devices import GPUS
    from tunesmith.tools.plan_scale import plan_mode

    h100, run = GPUS["h100"], _run()
    comm = {m: plan_mode(run, m, h100)["time_s"]["communication"] for m in ("ddp", "zero2", "zero3")}
    assert comm["zero3"] == pytest.approx(1.5 * comm["zero2"], rel=1e-2)  # ZeRO-3: 1.5x data parallelism's volume
    assert plan_mode(_run(gpus=1), "ddp", h100)["time_s"]["communication"] == 0
    accum = plan_mode(_run(grad_accum=4), "zero3", h100)["time_s"]["communication"]
    assert accum == pytest.approx(4 * comm["zero3"], rel=1e-2)  # ZeRO-3 gathers the weights every micro-batch
    ddp4 = plan_mode(_run(grad_accum=4), "ddp", h100)["time_s"]["communication"]
    assert ddp4 == pytest.approx(comm["ddp"], rel=1e-6)  # DDP syncs once per optimizer step
    between_nodes = plan_mode(_run(gpus=16), "ddp", h100)
    assert between_nodes["interconnect"].startswith("ib") and between_nodes["time_s"]["communication"] > comm["ddp"]


def test_cost_is_hours_times_gpus_times_price_and_lora_is_cheaper():
    from tunesmith.tools.plan_devices import GPUS
    from tunesmith.tools.plan_scale import plan_mode, plan_modes, steps_for

    h100 = GPUS["h100"]
    steps = steps_for(10_000, 2, 2, 8, 1)
    assert steps == 1250 and steps_for(10_000, 2, 2, 8, 1, max_steps=7) == 7
    row = plan_mode(_run(steps=steps), "fsdp", h100, price=2.5)
    assert row["hours"] == pytest.approx(row["step_s"] * steps / 3600, abs=0.01)
    assert row["cost_usd"] == pytest.approx(row["step_s"] * steps / 3600 * 8 * 2.5, abs=0.05)
    lora = plan_mode(_run("lora", steps=steps, lora_targets="all-linear"), "fsdp", h100, price=2.5)
    qlora = plan_mode(_run("qlora", steps=steps, lora_targets="all-linear"), "fsdp", h100, price=2.5)
    assert qlora["per_gpu_gb"] < lora["per_gpu_gb"] < row["per_gpu_gb"]
    assert lora["cost_usd"] < row["cost_usd"] and qlora["time_s"]["compute"] > lora["time_s"]["compute"]  # dequantising
    assert qlora["time_s"]["communication"] < lora["time_s"]["communication"]  # FSDP gathers 4-bit weights
    assert [r["mode"] for r in plan_modes(_run(gpus=1), h100)] == ["single", "zero2+offload"]
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="names none of them"):
        plan_mode(_run("lora", lora_targets=["query", "value"]), "ddp", h100)  # BERT names: not a decoder


def test_plan_command_over_gpus():
    ok = run_cli(
        "plan", "configs/plan/llama-2-70b-full.yaml", "--gpu", "h100", "--gpus", "8", "--price", "2.5",
        "--seq-len", "1024", "--examples", "50000",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "68,976,648,192" in ok.stdout and "fastest that fits: zero3+offload" in ok.stdout and "$" in ok.stdout
    assert "> your config (train.distributed: fsdp+offload): 12.2 GB per GPU, fits" in ok.stdout
    assert "> fsdp+offload" in ok.stdout
    overrides = ["train.batch_size=16", "train.gradient_checkpointing=false"]
    big = ["--gpu", "h100", "--gpus", "8", "--seq-len", "4096", "--examples", "900"]
    lora = run_cli("plan", "configs/plan/llama-2-70b-lora.yaml", *overrides, *big)
    assert lora.returncode == 0 and "> your config (train.distributed: fsdp):" in lora.stdout
    assert "does NOT fit in 80 GB" in lora.stdout
    one = run_cli(
        "plan",
        "configs/plan/llama-2-70b-full.yaml",
        "--gpu",
        "h100",
        "--gpus",
        "1",
        "--seq-len",
        "512",
        "--examples",
        "900",
    )
    assert one.returncode == 0 and "nothing fits" in one.stdout
    for args, message in [
        (["--gpus", "8"], "needs the GPU"),
        (["--gpu", "h100", "--gpus", "8"], "pass --seq-len and --examples"),
        (["--gpu", "h100", "--gpus", "0", "--seq-len", "512"], "--gpus must be at least 1"),
    ]:
        bad = run_cli("plan", "configs/plan/llama-2-7b-lora.yaml", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
