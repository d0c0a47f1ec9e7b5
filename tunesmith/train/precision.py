"""Pick the numeric precision for the hardware (and say why)."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def fast_cpu_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def choose_precision(requested: str, device_type: str) -> tuple[str, str]:
    """(precision, reason). `auto`: bf16 where fast, fp16 + loss scaling on older GPUs, else fp32."""
    cuda = device_type == "cuda"
    if requested == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; on CPU use bf16 or auto")
    if requested != "auto":
        return requested, "set in config"
    if cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16", "GPU supports bf16 (Ampere or newer)"
        return "fp16", "GPU without bf16: fp16 with loss scaling"
    if fast_cpu_bf16():
        return "bf16", "CPU has native bf16 instructions (AMX/AVX512-BF16): bf16 autocast"
    return "fp32", "CPU without fast bf16"
