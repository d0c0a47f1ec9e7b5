"""`tunesmith plan` (tunesmith/tools/plan.py) and the fast LoRA dropout: tiny models, no timing assertions."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, write_yaml
from torch import nn


def _tiny_classifier(folder, labels=3):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=labels)


def _shape(folder, labels=3):
    from transformers import AutoConfig

    from tunesmith.tools.plan import Shape

    return Shape.from_config(AutoConfig.from_pretrained(folder), labels)


def test_parameter_counts_match_the_model(tiny_model):
    model = _tiny_classifier(tiny_model)
    shape = _shape(tiny_model)
    assert shape.params() == sum(p.numel() for p in model.parameters())
    assert shape.linear() == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "full"},
        {"name": "freeze", "layers": 1},
        {"name": "linear-probe"},
        {"name": "lora", "r": 4, "target_modules": ["query", "key", "value", "dense"]},
    ],
)
def test_trainable_counts_match_the_strategies(tiny_model, strategy):
    from tunesmith.strategies import build_strategy, count_parameters
    from tunesmith.tools.plan import trainable

    cls = build_strategy(strategy["name"])
    options = cls.Options(**{k: v for k, v in strategy.items() if k != "name"})
    model = build_strategy(strategy["name"], options).prepare(_tiny_classifier(tiny_model))
    predicted, _, _ = trainable(_shape(tiny_model), strategy)
    assert predicted == count_parameters(model)[0]


def test_prediction_parts_and_monotonicity(tiny_model):
    from tunesmith.tools.plan import Workload, predict

    shape = _shape(tiny_model)
    peaks = {"fp32": 1e11, "bf16": 2e11}
    small = predict(Workload(shape, {"name": "full"}, 16, 24, "bf16"), peak_flops=peaks)
    big = predict(Workload(shape, {"name": "full"}, 64, 24, "bf16"), peak_flops=peaks)
    lora = predict(
        Workload(shape, {"name": "lora", "r": 4, "target_modules": ["query", "value"]}, 16, 24, "bf16"),
        peak_flops=peaks,
    )
    assert all(v >= 0 for v in small.memory.values()) and small.peak_mb == pytest.approx(sum(small.memory.values()))
    assert big.peak_mb > small.peak_mb and big.ms_per_step > small.ms_per_step
    assert lora.memory["adamw_states"] < small.memory["adamw_states"]
    assert lora.params["training_flops_per_step"] < small.params["training_flops_per_step"]
    assert any("peak" in s for s in small.sources)


def test_known_gpus_and_unknown_one():
    from tunesmith.errors import ConfigError
    from tunesmith.tools.plan import gpu_device

    assert gpu_device("H100").peak_flops["bf16"] == 989e12
    assert gpu_device("a100").memory_gb == 80 and "bf16" not in gpu_device("t4").peak_flops
    with pytest.raises(ConfigError, match="known"):
        gpu_device("tpu-v9")


def test_plan_command(tmp_path, tiny_model, toy_csv, capsys):
    from tunesmith.cli import main

    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(tmp_path, tiny_model, toy_csv, strategy={"name": "lora", "r": 4}))
    assert main(["plan", str(cfg), "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "peak memory" in out and "NVIDIA H100" in out and "data sheet" in out
    assert main(["plan", str(cfg), "train.batch_size=4", "--seq-len", "16"]) == 0
    assert "batch 4 x 16 tokens" in capsys.readouterr().out


# ---- the fast dropout of strategies/lora.py (it is what made LoRA cheap on CPU; see benchmarks/speed.py)


def test_fast_dropout_statistics_and_gradient():
    from tunesmith.strategies.lora import FastDropout

    torch.manual_seed(0)
    drop = FastDropout(0.25).train()
    x = torch.ones(200, 500, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.01
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)  # inverted dropout keeps the expectation
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # gradient flows exactly where the input was kept
    assert torch.equal(drop.eval()(x), x)


def test_fast_dropout_output_in_autocast_dtype_and_shared_between_readers():
    from tunesmith.strategies.lora import FastDropout, _LastDrop

    shared = _LastDrop()
    a, b = FastDropout(0.5, shared).train(), FastDropout(0.5, shared).train()
    x = torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = a(x), b(x)
    assert ya.dtype == torch.bfloat16 and ya is yb  # the second reader of the same tensor reuses the mask
    assert a(x.detach().clone()) is not ya  # another tensor draws a new one


def test_lora_strategy_swaps_dropouts(tmp_path):
    from conftest import build_tiny_bert

    from tunesmith.strategies import build_strategy
    from tunesmith.strategies.lora import FastDropout

    folder = build_tiny_bert(tmp_path / "bert-dropout", dropout=0.1)
    cls = build_strategy("lora")
    model = build_strategy("lora", cls.Options(r=4, dropout=0.1, target_modules=["query", "value"])).prepare(
        _tiny_classifier(folder)
    )
    kinds = {type(m) for m in model.modules()}
    assert FastDropout in kinds and nn.Dropout not in kinds
    model.train()
    out = model(input_ids=torch.randint(5, 20, (4, 7)), attention_mask=torch.ones(4, 7, dtype=torch.long)).logits
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n)
