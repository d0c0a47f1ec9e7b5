"""Forgetting: what fine-tuning costs the pretrained model, measured (drift, retention) and prevented (regularize).

`build_regularization` turns a run's `regularize` list into the terms the training loop adds to the task loss
(regularize.py); the tasks measure their reference sets before and after training (`Task.references`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config.forgetting import Regularizer
from ..errors import ConfigError
from .anchors import Anchors, anchors_of, canonical_name, estimate_fisher
from .drift import cosine_correlation, drift, linear_cka
from .regularize import (
    NO_REGULARIZATION,
    Distill,
    ParamPenalty,
    Reference,
    Regularization,
    Replay,
    Teacher,
    cosine_sum,
    kl_sum,
)

FISHER_FILE = "forgetting/fisher.safetensors"
FISHER_BATCH = 4


def build_regularization(
    regularize: list[Regularizer], model, task, references: dict[str, Reference], ctx
) -> Regularization:
    """The terms of `regularize` for the prepared `model` (call before training: the starting weights are read now).

    EWC's Fisher is estimated on the main process and saved in the run folder; a resumed run (and every other
    process) reads it from there.
    """
    if not regularize:
        return NO_REGULARIZATION
    acc, cfg = ctx.acc, ctx.cfg
    unwrap = acc.unwrap_model
    anchors: Anchors | None = None
    terms = []
    for reg in regularize:
        if reg.kind in ("l2sp", "ewc") and anchors is None:
            anchors = anchors_of(model)
            if not len(anchors):
                raise ConfigError(f"regularize {reg.kind}: no trained weight has a pretrained value to anchor to")
        if reg.kind == "l2sp":
            terms.append(ParamPenalty("l2sp", reg.strength, anchors))
        elif reg.kind == "ewc":
            ref = pick_reference(reg, references, trainable=True, task=task)
            fisher = _fisher(model, anchors, ref, reg.batches, ctx)
            terms.append(ParamPenalty("ewc", reg.strength, anchors, fisher))
        elif reg.kind == "distill":
            ref = pick_reference(reg, references, trainable=False, task=task) if reg.inputs == "reference" else None
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ctx.precision)
            teacher = Teacher(model, dtype)
            terms.append(
                Distill(reg.strength, reg.temperature, task, teacher, unwrap, ref, cfg.seed, cfg.train.batch_size)
            )
        elif reg.kind == "replay":
            ref = pick_reference(reg, references, trainable=True, task=task)
            rows = cfg.train.batch_size * ctx.world * cfg.train.grad_accum
            terms.append(Replay(reg.fraction, ref, unwrap, cfg.seed, rows))
    return Regularization(terms)


def check_references(regularize: list[Regularizer], references: dict[str, Reference], task) -> None:
    """Every remedy that reads a reference set finds one that suits (before the run folder opens)."""
    for reg in regularize:
        if reg.kind in ("ewc", "replay"):
            pick_reference(reg, references, trainable=True, task=task)
        elif reg.kind == "distill" and reg.inputs == "reference":
            pick_reference(reg, references, trainable=False, task=task)


def tracked(forgetting: dict) -> dict[str, float]:
    """The forgetting figures as flat tracker metrics: forgetting_<set>_<figure>."""
    out = {}
    for name, item in forgetting.items():
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "rows":
                out[f"forgetting_{name}_{key}"] = float(value)
    return out


def pick_reference(reg: Regularizer, references: dict[str, Reference], trainable: bool, task) -> Reference:
    """The reference set a remedy reads: the one it names, else the first that suits."""
    if reg.reference is not None:
        ref = references[reg.reference]
        if trainable and not ref.trainable:
            raise ConfigError(
                f"regularize {reg.kind}: reference '{ref.name}' has no targets to train or score on "
                f"({task.reference_hint})"
            )
        return ref
    for ref in references.values():
        if ref.trainable or not trainable:
            return ref
    raise ConfigError(f"regularize {reg.kind}: no eval.reference set it can train or score on ({task.reference_hint})")


def _fisher(model, anchors: Anchors, ref: Reference, batches: int, ctx) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from ..utils import atomic_save_tensors

    path = Path(ctx.run_dir) / FISHER_FILE
    acc = ctx.acc
    if not path.is_file() and acc.is_main_process:
        data = ref.batches
        rows = torch.Generator().manual_seed(ctx.cfg.seed)
        order = torch.randperm(len(data), generator=rows).tolist()
        chosen = [order[i % len(order)] for i in range(batches * FISHER_BATCH)]
        device = next(model.parameters()).device
        scorer = ref.scorer(model)

        def examples():
            for r in chosen:
                yield {k: v.to(device) for k, v in data.batch([r]).items()}, data.units([r])

        def loss(item):
            inputs, units = item
            with ctx.autocast():
                return ref.loss(scorer, inputs) / max(1, units)

        from tqdm.auto import tqdm

        with tqdm(total=len(chosen), desc=f"ewc: Fisher on {ref.name}", unit="example", leave=False) as bar:
            fisher = estimate_fisher(model, anchors, examples(), loss, progress=lambda n: bar.update(n - bar.n))
        atomic_save_tensors({k: v.cpu() for k, v in fisher.items()}, path)
        ctx.say(
            f"ewc: Fisher information of {len(anchors)} weight groups estimated on {len(chosen)} rows of {ref.name}"
        )
    acc.wait_for_everyone()
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in load_file(str(path)).items()}


__all__ = [
    "NO_REGULARIZATION",
    "Reference",
    "Regularization",
    "build_regularization",
    "check_references",
    "canonical_name",
    "cosine_correlation",
    "cosine_sum",
    "drift",
    "kl_sum",
    "linear_cka",
    "tracked",
]
