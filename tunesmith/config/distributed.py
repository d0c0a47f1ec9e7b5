"""`train.distributed` and `train.fsdp`: how several processes share the model (docs/scale.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class FsdpConfig:
    sharding: Literal["full", "hybrid"] = "full"
    """`full`: each of N processes keeps 1/N of every weight, gradient and AdamW state (FSDP2 `fully_shard`);
    `hybrid`: shard within a node (its LOCAL_WORLD_SIZE processes) and replicate across nodes (HSDP: less traffic
    between nodes, more memory per GPU)."""
    cpu_offload: bool = False
    """Keep the sharded weights, gradients and AdamW states in CPU memory (FSDP2's CPUOffloadPolicy): GPU memory
    for the gathered layers and activations only; the optimizer step runs on the host. GPU only (refused on CPU)."""
