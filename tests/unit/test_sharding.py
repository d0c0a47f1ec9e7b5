"""`train.distributed: fsdp`: the config keys and what FSDP refuses, in one line each, before anything is sharded
(the two-process runs: tests/integration/test_fsdp.py)."""

from __future__ import annotations

import pytest
from conftest import tiny_config, write_yaml

from tunesmith.errors import ConfigError


def test_config_keys(tmp_path, tiny_model, toy_csv):
    from tunesmith.config.loader import load_config

    path = write_yaml(tmp_path / "c.yaml", tiny_config(tmp_path, tiny_model, toy_csv, train={"distributed": "fsdp"}))
    cfg = load_config(path, ["train.fsdp.sharding=hybrid", "train.fsdp.cpu_offload=true"])
    assert cfg.train.distributed == "fsdp" and cfg.train.fsdp.sharding == "hybrid" and cfg.train.fsdp.cpu_offload
    assert load_config(path).train.fsdp.sharding == "full"
    with pytest.raises(ConfigError, match="distributed"):
        load_config(path, ["train.distributed=zero9"])


@pytest.mark.parametrize(
    "strategy, options, precision, regularizing, message",
    [
        ("linear-probe", {}, "fp32", False, "cannot shard strategy linear-probe"),
        ("gradual-unfreeze", {}, "fp32", False, "cannot shard strategy gradual-unfreeze"),
        ("lora", {"quantize": "nf4"}, "bf16", False, "quantize: nf4 is not supported"),
        ("full", {}, "fp16", False, "needs bf16 or fp32"),
        ("full", {}, "fp32", True, "regularize"),
    ],
)
def test_refusals(strategy, options, precision, regularizing, message):
    from tunesmith.engine.sharding import check_shardable
    from tunesmith.strategies.registry import build_strategy, get_strategy_class

    opts = get_strategy_class(strategy).Options(**options)
    with pytest.raises(ConfigError, match=message):
        check_shardable(build_strategy(strategy, opts), precision, regularizing)


def test_what_shards():
    from types import SimpleNamespace

    from tunesmith.engine.sharding import check_shardable, wants_sharding
    from tunesmith.strategies.registry import build_strategy

    for name in ("full", "freeze", "lora"):
        check_shardable(build_strategy(name), "bf16", False)  # no error
    assert wants_sharding(SimpleNamespace(distributed="fsdp"), 2)
    assert not wants_sharding(SimpleNamespace(distributed="fsdp"), 1) and not wants_sharding(
        SimpleNamespace(distributed="ddp"), 8
    )


def test_cpu_offload_without_a_gpu_is_refused():
    from types import SimpleNamespace

    from tunesmith.engine.sharding import check_shardable
    from tunesmith.strategies.registry import build_strategy

    offload = SimpleNamespace(sharding="full", cpu_offload=True)
    with pytest.raises(ConfigError, match="nothing to offload"):
        check_shardable(build_strategy("full"), "fp32", False, offload, "cpu")
    check_shardable(build_strategy("full"), "bf16", False, offload, "cuda")  # a GPU: allowed
