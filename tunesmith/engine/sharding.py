"""FSDP2 for the loop (`train.distributed: fsdp`): PyTorch's `fully_shard` per transformer block, its distributed
checkpoint (DCP), and a gathered model for evaluation.

Accelerate's FSDP plugin is not used: with `cpu=True` (gloo) it silently wraps DDP instead, and its FSDP2 path
wants to own accumulation and saving that the loop already does. `fully_shard` is the FSDP2 API itself:
    shard      every block of `_no_split_modules` (Hugging Face's own list of layers that must stay whole), then the
               root; weights, gradients and AdamW states are then 1/N per process (DTensors)
    accumulate `set_requires_gradient_sync(False)` on all but the last micro-batch (gradients reduce-scattered once)
    evaluate   `gathered()`: every block unsharded and kept so, so a forward pass makes no collective call and one
               process may evaluate alone (generation, forgetting scores); resharded afterwards
    checkpoint the trained weights and AdamW states as DCP shards (one file per process, resharded on load), the
               schedule, the RNGs and the loop state beside them; the best weights as one consolidated safetensors
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .precision import compute_dtype


def wants_sharding(cfg, world: int) -> bool:
    return cfg.distributed == "fsdp" and world > 1


def check_shardable(strategy, precision: str, regularizing: bool, fsdp=None, device_type: str = "cuda") -> None:
    """One line for what FSDP cannot do here; the pipeline asks before the run folder exists."""
    if not strategy.shards:
        raise ConfigError(
            f"train.distributed: fsdp cannot shard strategy {strategy.name} (it changes what trains, or trains on cached"
            " features); use full, freeze or lora, or train.distributed: ddp"
        )
    if strategy.quantize != "none":
        raise ConfigError(
            f"train.distributed: fsdp with strategy.quantize: {strategy.quantize} is not supported (bitsandbytes' 4/8-bit"
            " weights are not DTensors); QLoRA runs under ddp: set train.distributed: ddp"
        )
    if precision == "fp16":
        raise ConfigError("train.distributed: fsdp needs bf16 or fp32 (fp16's loss scaling is not wired for shards)")
    if regularizing:
        raise ConfigError(
            "regularize: the remedies keep copies of the weights that FSDP shards; use train.distributed: ddp"
        )
    if fsdp is not None and fsdp.cpu_offload and device_type == "cpu":
        raise ConfigError(
            "train.fsdp.cpu_offload moves shards from a GPU to the host; on CPU there is nothing to offload: remove it"
        )


def shard_model(model: nn.Module, fsdp, precision: str, device: torch.device) -> nn.Module:
    """`fully_shard` each transformer block, then the whole model (in place; returns it)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if fsdp.sharding == "hybrid":
        from torch.distributed.device_mesh import init_device_mesh

        world, local = dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        if world % local:
            raise ConfigError(f"train.fsdp.sharding: hybrid needs the same processes per node ({world} / {local})")
        kwargs["mesh"] = init_device_mesh(device.type, (world // local, local), mesh_dim_names=("replicate", "shard"))
    if compute_dtype(precision) is not None:  # gather and compute in 16-bit, keep fp32 shards, reduce in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype(precision), reduce_dtype=torch.float32)
    if fsdp.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _fsdp_modules(model: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model: nn.Module):
    """The whole model unsharded on every process for the block; forward passes then need no other process."""
    modules = _fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def full_trainable_state(model: nn.Module, names: set[str]) -> dict:
    """The trained weights as whole tensors on CPU (collective; rank 0 gets them, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=opts)
    return {k: v.contiguous() for k, v in state.items() if k in names}


def _dcp_state(model: nn.Module, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": weights, "optim": optim}


def save_sharded(folder: Path, model: nn.Module, optimizer, scheduler, state: dict, rng: list, main: bool) -> None:
    """Every process writes its shards into a temporary sibling; rank 0 adds the rest and renames it into place."""
    import torch.distributed.checkpoint as dcp

    tmp = folder.with_name(f".{folder.name}.sharded.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=str(tmp / "shards"))
    if main:
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_sharded(folder: Path, model: nn.Module, optimizer, scheduler) -> tuple[dict, list]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if not (folder / "shards").is_dir():
        raise ConfigError(
            f"{folder} was written by one process (or DDP): resume it in one process, or with train.distributed: ddp"
        )
    state = _dcp_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder / "shards"))
    opts = StateDictOptions(ignore_frozen_params=True, strict=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=opts)
    blob = torch.load(folder / "optim.pt", weights_only=True)
    scheduler.load_state_dict(blob["scheduler"])
    return json.loads((folder / "state.json").read_text()), blob["rng"]
