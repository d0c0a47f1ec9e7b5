"""GGUF, llama.cpp's file format, for Llama-family causal LMs: one file with the weights, the vocabulary and the
chat template, written with the gguf package (gguf-py) the way llama.cpp's convert_hf_to_gguf.py (`LlamaModel`)
writes it:

- tensor names from gguf's `TensorNameMap`; the q/k projection rows permuted into llama.cpp's rotary layout
  (Hugging Face rotates the two halves of a head, llama.cpp interleaved pairs); a tied lm_head is left out;
- `llama.*` hyperparameters (context, embedding and feed-forward length, blocks, heads, kv heads, rope base and
  dimensions, RMS-norm epsilon, vocabulary size) and `general.file_type`;
- the byte-level BPE vocabulary as tokenizer model "gpt2": tokens, token types, merges, the pre-tokenizer's
  llama.cpp name, bos/eos/unk/pad ids, add_bos/add_eos and the chat template the run trained with.

Types: f32, f16, bf16, and what gguf-py can quantize: q8_0, q5_1, q5_0, q4_1, q4_0. 1-D tensors (norms) stay
f32; with the 4/5-bit types the token embedding (and an untied output) is q8_0, as llama.cpp's own files keep it.
gguf-py has no K-quant quantizer: a K-quant comes from llama.cpp's `llama-quantize` on an f16 export.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, ModelError

TYPES = {  # --quantize value -> (tensor type name, llama.cpp's file type name)
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
DEFAULT = "f16"
UNQUANTIZED = frozenset({"f32", "f16", "bf16"})
LOW_BIT = frozenset({"q5_1", "q5_0", "q4_1", "q4_0"})
"""Types whose token embedding (and untied output) stays q8_0."""
ARCHITECTURES = frozenset({"llama"})
"""`config.model_type`s written (llama.cpp's LLAMA architecture: Llama 1-3, SmolLM, TinyLlama, ...)."""
# llama.cpp names of the pre-tokenizers (`tokenizer.ggml.pre`) whose split a tokenizer.json states exactly.
_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
_QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
READ_BACK_EXACTLY = frozenset({"gpt2", "llama-bpe", "qwen2"})
"""Pre-tokenizers that transformers' GGUF reader rebuilds exactly (for others the token check only reports)."""


def check_quantize(value: str | None) -> str:
    """The GGUF type for `--quantize` (default f16); a ConfigError naming the choices, or how to get a K-quant."""
    q = (value or DEFAULT).lower()
    if q in TYPES:
        return q
    if "_k" in q or q.startswith("iq"):
        raise ConfigError(
            f"--quantize {value}: gguf-py has no {value.upper()} quantizer; export f16 (`--quantize f16`) and run "
            f"llama.cpp's `llama-quantize OUT/model-f16.gguf OUT/model-{q}.gguf {value.upper()}`"
        )
    raise ConfigError(f"--quantize {value}: gguf exports are one of {', '.join(TYPES)}")


def check_model(model) -> None:
    """Refuse what this writer cannot write faithfully (a ModelError saying what to do instead)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = model.config
    kind = getattr(cfg, "model_type", "?")
    causal = type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not causal or getattr(cfg, "is_encoder_decoder", False):
        raise ConfigError(
            f"--format gguf writes causal language models; this run's model is a {type(model).__name__} "
            f"(--format hf writes any run; --format onnx is for encoder classifiers)"
        )
    if kind not in ARCHITECTURES:
        raise ModelError(
            f"--format gguf: architecture '{kind}' is not supported (only Llama-family models: "
            f"{', '.join(sorted(ARCHITECTURES))}); export --format hf and convert with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = _rope(cfg)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise ModelError(
            f"--format gguf: rope scaling '{rope['rope_type']}' is not written by tunesmith; export --format hf "
            f"and convert with llama.cpp's convert_hf_to_gguf.py"
        )


def file_name(qtype: str) -> str:
    return f"model-{qtype}.gguf"


def write_gguf(model, tokenizer, path: Path, qtype: str, name: str, say=print) -> list[str]:
    """Write `model` (plain transformers, adapters merged) and its tokenizer to `path`; returns notes."""
    import gguf
    import torch
    from tqdm.auto import tqdm

    cfg, notes = model.config, []
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    tensor_type, file_type = TYPES[qtype]
    _write_hyperparameters(writer, cfg, name, getattr(gguf.LlamaFileType, file_type))
    notes += _write_vocabulary(writer, tokenizer, cfg.vocab_size)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd for a tied output
    fallback = []
    for hf_name, tensor in tqdm(state.items(), desc=f"gguf {qtype}", unit="tensor", leave=False):
        out = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if out is None:
            raise ModelError(f"--format gguf: tensor '{hf_name}' has no llama.cpp name; export --format hf instead")
        with torch.no_grad():
            data = tensor.detach().to(torch.float32).cpu()
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute_rotary(data, heads, heads)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute_rotary(data, heads, kv_heads)
        kind = _tensor_type(out, data.ndim, tensor_type, qtype)
        if (
            kind not in ("F32", "F16")
            and data.shape[-1] % gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, kind)][0]
        ):
            fallback.append(out)
            kind = "F16"  # rows that do not fill whole blocks: llama.cpp's converter falls back the same way
        raw = getattr(gguf.GGMLQuantizationType, kind)
        writer.add_tensor(out, gguf.quants.quantize(data.numpy(), raw), raw_dtype=raw)
    if fallback:
        notes.append(
            f"{len(fallback)} tensor(s) written as F16 (rows not a whole number of {qtype} blocks): {fallback[:3]}"
        )
    say(f"export: writing {path.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return notes


def permute_rotary(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's `LlamaModel.permute`: each head's rows from (two halves) to (interleaved pairs) order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensor_type(name: str, ndim: int, tensor_type: str, qtype: str) -> str:
    if ndim <= 1:
        return "F32"  # norms (and biases): llama.cpp keeps them f32 whatever the file type
    if qtype in LOW_BIT and name.startswith(("token_embd.", "output.")):
        return "Q8_0"
    return tensor_type


def _rope(cfg) -> dict:
    """The rope settings of a transformers 5 config (`rope_parameters`) or an older one (`rope_theta`, `rope_scaling`)."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if scaling and "rope_type" not in rope:
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type"))
        rope.setdefault("factor", scaling.get("factor"))
    rope.setdefault("rope_theta", getattr(cfg, "rope_theta", None) or 10000.0)
    rope["rope_type"] = rope.get("rope_type") or "default"
    return rope


def _write_hyperparameters(writer, cfg, name: str, file_type: int) -> None:
    import gguf

    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = _rope(cfg)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope["rope_type"] == "linear" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_vocabulary(writer, tokenizer, vocab_size: int) -> list[str]:
    """tokenizer.ggml.* and the chat template; returns notes (e.g. a pre-tokenizer llama.cpp may split otherwise)."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    check_tokenizer(spec)
    notes = []
    vocab, added = spec["model"]["vocab"], {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()} | {i: t["content"] for i, t in added.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # embedding rows no token uses (a vocabulary padded to a round size)
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    beyond = [t for i, t in by_id.items() if i >= vocab_size]
    if beyond:
        notes.append(
            f"{len(beyond)} tokenizer token(s) beyond the model's {vocab_size} embeddings left out: {beyond[:3]}"
        )
    pre = pre_tokenizer_name(spec)
    if pre is None:
        pre = "gpt2"
        notes.append("pre-tokenizer not one llama.cpp names; wrote 'gpt2' (llama.cpp may split some text differently)")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([_merge(m) for m in spec["model"].get("merges", [])])
    for kind, token_id in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if token_id is not None and token_id < vocab_size:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
    return notes


def check_tokenizer(spec: dict) -> None:
    """Only byte-level BPE vocabularies (GPT-2 style: Llama 3, SmolLM, Qwen, ...) are written."""
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    if model.get("type") != "BPE" or not any(d.get("type") == "ByteLevel" for d in decoders):
        raise ModelError(
            "--format gguf: only byte-level BPE tokenizers are written (this one is "
            f"{model.get('type', '?')} with a {decoder.get('type', 'no')} decoder, e.g. sentencepiece); export --format hf "
            "and convert with llama.cpp's convert_hf_to_gguf.py"
        )


def pre_tokenizer_name(spec: dict) -> str | None:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the tokenizer's pre-tokenizer, when it is one llama.cpp knows."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def _merge(merge) -> str:
    """A merge as llama.cpp reads it: "a b" (a space inside a part written as U+0120, as gguf-py's SpecialVocab does)."""
    if isinstance(merge, str):
        return merge
    return " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge)


def load_gguf(folder: Path, name: str):
    """(model, tokenizer) read back by transformers' GGUF support (de-quantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def describe(path: Path) -> dict:
    """What the file holds, read back with gguf-py: architecture, tokenizer, tensor types (counts)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1

    def field(key):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    return {
        "architecture": field("general.architecture"),
        "tokenizer": field("tokenizer.ggml.model"),
        "pre_tokenizer": field("tokenizer.ggml.pre"),
        "chat_template": field("tokenizer.chat_template") is not None,
        "tensors": dict(sorted(counts.items())),
    }
