"""Inference efficiency: latency at batch 1 (p50/p95), throughput at batch 32, size on disk, peak memory.

Cheap by default (`eval.efficiency_batches` timed batches after two warm-up calls); the times include
tokenization, as a caller of `Run.predict` would see them.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from ..utils import folder_size

THROUGHPUT_BATCH = 32


def measure_efficiency(predict, texts: list[str], batches: int = 32, model_dir=None) -> dict:
    """predict(list[str]) -> probs; timed on test texts (cycled when there are too few)."""

    pool = (texts * (1 + THROUGHPUT_BATCH * batches // max(1, len(texts))))[: max(batches, THROUGHPUT_BATCH * batches)]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    predict(pool[:1]), predict(pool[:THROUGHPUT_BATCH])  # warm-up
    single = [_timed(predict, [pool[i]]) for i in range(batches)]
    big_batches = max(2, batches // 4)
    big = [_timed(predict, pool[i * THROUGHPUT_BATCH : (i + 1) * THROUGHPUT_BATCH]) for i in range(big_batches)]
    out = {
        "batch_1_latency_ms_p50": 1000 * float(np.percentile(single, 50)),
        "batch_1_latency_ms_p95": 1000 * float(np.percentile(single, 95)),
        "batch_1_per_second": float(len(single) / sum(single)),
        f"batch_{THROUGHPUT_BATCH}_latency_ms_p50": 1000 * float(np.percentile(big, 50)),
        f"batch_{THROUGHPUT_BATCH}_per_second": float(THROUGHPUT_BATCH * len(big) / sum(big)),
        "timed_batches": {"batch_1": len(single), f"batch_{THROUGHPUT_BATCH}": len(big)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if model_dir is not None:
        out["model_size_bytes"] = folder_size(model_dir)
    return out


def _timed(predict, texts: list[str]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    predict(texts)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0
