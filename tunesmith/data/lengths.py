"""Text lengths as the model will see them, and what truncation at max_length cuts off (the audit's length section)."""

from __future__ import annotations

from typing import Any

import numpy as np


def length_stats(texts: list[str], tokenizer: Any, max_length: int | None) -> dict[str, float]:
    """Length percentiles in tokens of `tokenizer` (else whitespace tokens); with `max_length`, what truncation cuts."""
    if not texts:
        return {"unit": "none", "count": 0}
    if tokenizer is None:
        unit, lengths = "whitespace tokens", np.array([len(s.split()) for s in texts])
    else:
        # Lengths are measured untruncated on purpose: transformers' "longer than the specified maximum ... will
        # result in indexing errors" does not apply (training truncates); the audit reports truncation itself.
        warned = getattr(tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True
        ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        unit, lengths = (
            f"{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'} tokens",
            np.array([len(x) for x in ids]),
        )
    stats: dict[str, Any] = {
        "unit": unit,
        "count": int(lengths.size),
        "mean": round(float(lengths.mean()), 2),
        "min": int(lengths.min()),
    }
    for q in (50, 90, 95, 99):
        stats[f"p{q}"] = float(np.percentile(lengths, q))
    stats["max"] = int(lengths.max())
    if max_length:
        stats["max_length"] = max_length
        over = lengths[lengths > max_length]
        stats["truncated_share"] = round(float(over.size / lengths.size), 4)
        stats["truncated_rows"] = int(over.size)
        if over.size:  # what truncation cuts off the long rows
            stats["truncated_tokens_mean"] = round(float((over - max_length).mean()), 1)
            stats["truncated_tokens_max"] = int((over - max_length).max())
    return stats
