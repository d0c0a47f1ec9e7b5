"""Features of a frozen pretrained model, computed once and cached on disk.

`text_features` mean-pools the last hidden state of the model a run is about to fine-tune (what
sentence-transformers does for MiniLM-style encoders; decoders work the same way) and L2-normalises it.
The audit's label-error model reads them; `cached_features` also holds the linear probe's features.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def cache_key(model_key: str, fingerprint: str) -> str:
    """Features depend on the weights and the encoding (`model_key`: location, revision, max length) and the data."""
    return hashlib.sha256(f"{model_key}|{fingerprint}".encode()).hexdigest()[:20]


def cached_features(
    folder: Path, key: str, compute: Callable[[], torch.Tensor], read: bool, write: bool
) -> tuple[torch.Tensor, bool]:
    """(features, was_cached): load `<folder>/<key>.safetensors`, or compute (and store it atomically)."""
    from safetensors.torch import load_file

    from ..utils import atomic_save_tensors

    path = Path(folder) / f"{key}.safetensors"
    if read and path.is_file():
        return load_file(str(path))["features"], True
    x = compute()
    if write:
        atomic_save_tensors({"features": x}, path)
    return x, False


@torch.no_grad()
def text_features(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    max_length: int,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
    hidden: Callable[[dict], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One L2-normalised, mean-pooled vector per text from `model` (a bare backbone: AutoModel).

    Texts are batched by length (little padding); `dtype` (bf16 where the CPU has it) runs under autocast.
    `hidden(encoded batch)` gives the last hidden states of another kind of model (default: the backbone's
    `last_hidden_state`); positions before the text's own (soft prompts) are cut off.
    """
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    hidden = hidden or (lambda enc: model(**enc).last_hidden_state)
    out = torch.empty((len(texts), model.config.hidden_size), dtype=torch.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            states = hidden(enc).float()
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        states = states[:, -mask.shape[1] :]
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[torch.from_numpy(rows)] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        if progress:
            progress(min(start + batch_size, len(texts)))
    return out


def text_embedder(
    source,
    tokenizer,
    max_length: int,
    cache_dir: Path,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    log: Callable[[str], None] = print,
) -> Callable[[list[str]], np.ndarray]:
    """texts -> `text_features` of the pretrained `source` (a `ModelSource`), loaded on first use and cached on disk.

    The cache key covers the weights' location and revision, the max length and every text, so a changed
    file or model never reuses stale features.
    """
    from tqdm.auto import tqdm

    from ..utils import fingerprint
    from .loading import load_backbone

    def embed(texts: list[str]) -> np.ndarray:
        key = cache_key(f"{source.location}|{revision}|{max_length}|mean-pooled", fingerprint(texts, [""] * len(texts)))

        def compute() -> torch.Tensor:
            model = load_backbone(source, revision, trust_remote_code)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            with tqdm(total=len(texts), desc="audit: features", unit="text", leave=False) as bar:
                return text_features(
                    model, tokenizer, texts, max_length, dtype=dtype, progress=lambda n: bar.update(n - bar.n)
                )

        t0 = time.perf_counter()
        x, hit = cached_features(cache_dir, key, compute, read=True, write=True)
        how = "from cache" if hit else f"computed in {time.perf_counter() - t0:.0f}s"
        log(f"audit: frozen {source.name} features of {len(texts):,} texts for the label-error model ({how})")
        return x.numpy()

    return embed
