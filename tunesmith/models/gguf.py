"""GGUF checkpoints: load once through transformers' GGUF support, keep a plain HF folder in a cache.

Loading a GGUF file de-quantizes every tensor (seconds to minutes), and a GGUF-loaded model cannot be
saved as it is (its config carries the GGUF quantization entry). So the first use rebuilds the model
from its config without that entry, loads the de-quantized state dict, and saves a normal
safetensors folder (with the tokenizer and its chat template) under the cache; later uses load that.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ModelError
from ..utils import atomic_dir


def cache_root() -> Path:
    """`$TUNESMITH_CACHE`, else `~/.cache/tunesmith`."""
    return Path(os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith")


def converted_folder(gguf_path: Path) -> Path:
    """Where the plain HF copy of `gguf_path` lives: keyed by the file's path, size and modification time."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{key}"


def convert_gguf(gguf_path: str | Path, say=print) -> Path:
    """A plain HF folder for the GGUF file (converted on first use, then reused)."""
    import time

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file '{gguf_path}' does not exist; check model.name")
    out = converted_folder(gguf_path)
    if (out / "config.json").is_file():
        return out
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError("loading a GGUF file needs the gguf package: pip install gguf") from None
    say(f"model: converting {gguf_path.name} to a plain Hugging Face folder (once) in {out}")
    t0 = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(
            f"'{gguf_path}': transformers cannot load this GGUF file ({str(err).splitlines()[0]})"
        ) from None
    finally:
        hf_logging.enable_progress_bar()
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(
            f"'{gguf_path}': the de-quantized weights do not fit the model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted by tunesmith from {gguf_path} (de-quantized to float32)\n")
    say(f"model: converted in {time.perf_counter() - t0:.0f}s")
    return out
