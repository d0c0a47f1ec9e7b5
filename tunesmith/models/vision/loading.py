"""Load a pretrained image classifier (any HF folder or hub id, or a packaged alias) with a fresh head."""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelError
from ..loading import ModelSource, quantization_config
from . import mbconv  # noqa: F401  (registers tunesmith's MBConv family with the Auto classes)

HEAD_NAMES = ("classifier", "score", "head", "fc")
"""Module names that hold a classification head: kept in full precision, never counted as quantizable."""


def load_image_classifier(
    source: ModelSource,
    label_names: list[str],
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantize: str = "none",
):
    """The pretrained backbone with a freshly initialised head for `label_names` (AutoModelForImageClassification)."""
    import torch
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were newly initialised / resized" is expected: it is the head
    hf_logging.disable_progress_bar()
    quant = {}
    if quantize != "none":
        _check_quantizable(source, revision, trust_remote_code)
        quant = {
            "quantization_config": quantization_config(quantize),
            "device_map": {"": 0} if torch.cuda.is_available() else "cpu",
        }
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            source.location,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            revision=revision,
            trust_remote_code=trust_remote_code,
            # An ImageNet (or other-task) head of another size is replaced by a fresh one of the right size.
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            dtype=torch.float32,  # hub checkpoints saved in half precision still train with float32 weights
            **quant,
        )
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model '{source.name}': cannot load it for image classification ({_first_line(err)}); "
            f"point model.name at a Hugging Face image-classification model folder or hub id"
        ) from None
    # What loading initialised afresh (the head): it has no pretrained value to keep (regularize: l2sp, ewc).
    model.tunesmith_new_weights = set(info.get("missing_keys", ())) | {k[0] for k in info.get("mismatched_keys", ())}
    for module in model.modules():  # bitsandbytes' CPU inference repacking breaks training (see models/loading.py)
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _check_quantizable(source: ModelSource, revision: str | None, trust_remote_code: bool) -> None:
    """bitsandbytes quantizes nn.Linear only: a convolutional network whose one Linear is its head gains nothing."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(source.location, revision=revision, trust_remote_code=trust_remote_code)
        with torch.device("meta"):  # the module tree only, no weights read and no memory spent
            skeleton = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"model '{source.name}': cannot read its config ({_first_line(err)})") from None
    linear = [
        name
        for name, module in skeleton.named_modules()
        if isinstance(module, nn.Linear) and not any(part in HEAD_NAMES for part in name.split("."))
    ]
    if not linear:
        raise ModelError(
            f"model '{source.name}': QLoRA has nothing to quantize in this model's convolutions (bitsandbytes "
            f"quantizes Linear layers only, and its only Linear is the classifier); use strategy.name=lora with "
            f"strategy.quantize=none"
        )


def load_image_processor(source_or_folder, revision: str | None = None, trust_remote_code: bool = False):
    """The model's own image processor (resize, crop, normalisation it was trained with): AutoImageProcessor."""
    from transformers import AutoImageProcessor

    name = source_or_folder.name if isinstance(source_or_folder, ModelSource) else str(source_or_folder)
    location = source_or_folder.location if isinstance(source_or_folder, ModelSource) else str(source_or_folder)
    try:
        return AutoImageProcessor.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except OSError:
        where = location if Path(location).exists() else f"hub repo {location}"
        raise ModelError(
            f"model '{name}': no image processor (preprocessor_config.json) in {where}; copy the original model's "
            f"into it (AutoImageProcessor.from_pretrained(ORIGINAL).save_pretrained(FOLDER))"
        ) from None
    except (ValueError, KeyError) as err:
        raise ModelError(
            f"model '{name}': cannot load its image processor ({_first_line(err)}); check preprocessor_config.json "
            f"in {location}"
        ) from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
