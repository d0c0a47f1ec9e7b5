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


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision: bf16, fp16, or None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def cast_frozen_weights(model, precision: str) -> int:
    """Store frozen float weights in the autocast dtype: autocast would cast them at every forward anyway.

    Saves memory and the per-step casts (generation, with one forward per token, gains most). Trained
    weights stay fp32 (the optimizer's master copy). Only for strategies that do not save the frozen
    weights (adapters): those must stay exactly as pretrained. Returns the bytes saved.
    """
    dtype = compute_dtype(precision)
    if dtype is None:
        return 0
    saved = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(dtype)
            saved += p.numel() * 2
    return saved
