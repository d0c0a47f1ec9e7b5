"""The planner's measured constants and devices: matmul peaks, bandwidths, overheads, fitted efficiencies.

Every constant says where it comes from; `benchmarks/speed.py --plan-grid` and `benchmarks/plan_check.py` check them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import ConfigError

MB = 2**20

# ---- devices: dense (no sparsity) matmul peaks from the vendors' data sheets, memory in GB.
# GPU efficiency: share of the peak a small encoder's training step reaches; 0.35 for bf16 on Ampere/Hopper is
# the usual figure for BERT-base-sized models in PyTorch eager mode (MLPerf BERT reaches ~0.5 with fused kernels).


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cpu" | "cuda"
    peak_flops: dict  # precision -> dense matmul FLOP/s
    memory_gb: float | None
    bandwidth: float  # bytes/s of memory traffic the optimizer step sees
    source: str


GPUS: dict[str, Device] = {
    "h100": Device(
        "NVIDIA H100 SXM",
        "cuda",
        {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
        80,
        3.35e12,
        "NVIDIA H100 data sheet (SXM5, dense)",
    ),
    "h100-pcie": Device(
        "NVIDIA H100 PCIe",
        "cuda",
        {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
        80,
        2.0e12,
        "NVIDIA H100 data sheet (PCIe, dense)",
    ),
    "h200": Device(
        "NVIDIA H200",
        "cuda",
        {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
        141,
        4.8e12,
        "NVIDIA H200 data sheet (dense)",
    ),
    "a100": Device(
        "NVIDIA A100 80GB",
        "cuda",
        {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
        80,
        2.0e12,
        "NVIDIA A100 data sheet (dense)",
    ),
    "a100-40gb": Device(
        "NVIDIA A100 40GB",
        "cuda",
        {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
        40,
        1.56e12,
        "NVIDIA A100 data sheet (dense)",
    ),
    "l40s": Device(
        "NVIDIA L40S",
        "cuda",
        {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
        48,
        0.864e12,
        "NVIDIA L40S data sheet (dense)",
    ),
    "l4": Device(
        "NVIDIA L4",
        "cuda",
        {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
        24,
        0.3e12,
        "NVIDIA L4 data sheet (dense)",
    ),
    "a10": Device(
        "NVIDIA A10",
        "cuda",
        {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
        24,
        0.6e12,
        "NVIDIA A10 data sheet (dense)",
    ),
    "rtx4090": Device(
        "NVIDIA RTX 4090",
        "cuda",
        {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
        24,
        1.0e12,
        "Ada whitepaper (fp32 accumulate, dense)",
    ),
    "t4": Device("NVIDIA T4", "cuda", {"fp16": 65e12, "fp32": 8.1e12}, 16, 0.32e12, "NVIDIA T4 data sheet (no bf16)"),
    "v100": Device(
        "NVIDIA V100 SXM2", "cuda", {"fp16": 125e12, "fp32": 15.7e12}, 32, 0.9e12, "NVIDIA V100 data sheet (no bf16)"
    ),
}

# ---- CPU constants, fitted on the 2-core AVX512-BF16 machine of benchmarks/speed.py from `--plan-grid` at batch 16
# and 64 (MiniLM, quickstart tweets, bf16); the benchmark's batch-32 rows and the GPU are predictions, not fits.
CPU_BANDWIDTH = 17e9
"""Bytes/s the per-step work on every trainable parameter sees (AdamW, clipping, fresh gradients): the fixed part of
a full fine-tuning step (83 ms for 22.7M parameters at 40 bytes each; the 29 ms fused AdamW alone in the profile)."""
STEP_OVERHEAD_MS = {"cpu": 30.0, "cuda": 5.0}
"""Per optimizer step whatever the batch: Python, the schedule, launching operators. CPU: the fixed part of freeze
and LoRA steps (36 ms). CUDA: + GPU_MS_PER_MODULE per linear layer and per adapter (below)."""
GPU_MS_PER_MODULE = 0.68
"""CUDA, eager PyTorch: a small model's step is bound by launching kernels, not by FLOPs. Fitted to one H100 run
(benchmarks/results/speed-gpu.json: MiniLM full 31 ms/step with 38 linear layers, LoRA 56 ms with 37 adapters more);
not validated on another GPU or model."""
CPU_BASE_MB = 690.0
"""Resident memory that is not the model: python + torch + transformers + accelerate + tunesmith imports (530 MB
measured), tokenizer, the quickstart corpus and its pandas copies (~115 MB), the allocator's arenas."""
PEFT_IMPORT_MB = 130.0
"""PEFT (and bitsandbytes, which it imports) when the strategy wraps the model with an adapter."""
GPU_BASE_MB = 0.0
"""GPU memory is reported as torch.cuda.max_memory_allocated: the CUDA context is not in it."""
EFFICIENCY = {
    ("cpu", "dense"): 0.66,
    ("cpu", "top-layers"): 0.56,
    ("cpu", "low-rank"): 0.36,
    ("cpu", "head-only"): 0.55,
    ("cuda", "dense"): 0.30,
    ("cuda", "top-layers"): 0.30,
    ("cuda", "low-rank"): 0.20,
    ("cuda", "head-only"): 0.30,
}
"""Share of the matmul peak (of the precision used) reached by the batch-proportional part of a step. CPU: fitted
(see above); dropout, layer norms, GELU and autocast casts run beside the products, and LoRA's many small adapter
operators cost it most. fp32 uses the same shares (not fitted). CUDA: typical eager PyTorch for a small encoder."""
OPTIMIZER_BYTES = 40
"""Memory traffic per trainable parameter and step: AdamW reads param, grad, 2 moments and writes 3 (28 bytes),
gradient clipping reads the grads (4), the new grads are zero-filled and written (8)."""

# ---- activations kept for backward, bytes per token per layer = a*hidden + b*ffn, + c per attention score
# (heads x length per token). Measured on MiniLM by summing the storages autograd saves (saved_tensors_hooks)
# at batch 16 and 32, lengths 40 and 80 (differences isolate the per-token and the per-score terms); b is
# counted from the tensors (GELU input and output; LoRA adds the adapter's copy of the FFN output), a is the rest.
# CPU attention (SDPA's math path, used with dropout) keeps fp32 scores, probabilities and the dropout mask: 12 bytes
# per score in both precisions. On CUDA, SDPA's fused kernels keep no score matrix: c = 0 (not measured here).
ACTIVATIONS = {
    ("dense", "fp32"): (42.1, 8, 12),
    ("dense", "bf16"): (35.4, 4, 12),
    ("low-rank", "fp32"): (39.3, 9, 12),
    ("low-rank", "bf16"): (33.1, 5, 12),
}
TRANSIENT = {"dense": 2.1, "low-rank": 2.8}
"""Peak memory grows beyond the saved tensors: forward temporaries (fp32 scores before softmax, casts, PEFT's
adapter sums), gradients of activations in backward, and on CPU oneDNN scratch and glibc keeping freed blocks.
Multiplies the activation term; fitted on CPU (see the CPU constants above) and used unchanged on GPUs."""


_MEASURED: dict = {}


def measure_cpu_peak(seconds: float = 0.3) -> dict:
    """Dense matmul FLOP/s of this machine in fp32 and bf16 (1024^3 products for `seconds` each; cached)."""
    if _MEASURED:
        return _MEASURED
    import torch

    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = 1024
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        _MEASURED[prec] = 2 * n**3 * k / (time.perf_counter() - t0)
    return _MEASURED


def cpu_device(peak_flops: dict | None = None) -> Device:
    """This CPU: matmul peak measured now (or given, e.g. by the benchmark), bandwidth from CPU_BANDWIDTH."""
    import os

    if peak_flops:
        peaks = {
            "fp32": peak_flops.get("fp32", peak_flops.get("float32")),
            "bf16": peak_flops.get("bf16", peak_flops.get("bfloat16")),
        }
        source = "measured by the caller"
    else:
        peaks, source = dict(measure_cpu_peak()), "measured now (1024^3 matrix products)"
    return Device(f"this CPU ({os.cpu_count()} cores)", "cpu", peaks, None, CPU_BANDWIDTH, source)


def measured_gpu(name: str, peak_flops: dict) -> Device:
    """A known GPU (memory, bandwidth) with matmul peaks measured on it (e.g. by benchmarks/speed.py)."""
    base = next((d for key, d in GPUS.items() if key.split("-")[0] in name.lower().replace(" ", "")), GPUS["h100"])
    peaks = {
        "fp32": peak_flops.get("fp32", peak_flops.get("float32")),
        "bf16": peak_flops.get("bf16", peak_flops.get("bfloat16")),
    }
    return Device(name, "cuda", peaks, base.memory_gb, base.bandwidth, f"measured on the {name}")


def gpu_device(name: str) -> Device:
    key = name.lower().replace("nvidia", "").replace(" ", "").replace("_", "-")
    if key not in GPUS:
        raise ConfigError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}")
    return GPUS[key]
