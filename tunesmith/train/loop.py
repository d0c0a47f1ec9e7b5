"""The one training loop. It reads top to bottom; every strategy and task goes through it.

Shape of one optimizer step:
    plan global micro-batches from (seed, epoch)  ->  each process takes its share
    forward under autocast  ->  loss summed over examples / examples in the whole step
    backward (gradients synced only on the last micro-batch)  ->  clip  ->  AdamW  ->  schedule
    every `eval_every` steps (or each epoch): evaluate, keep the best, checkpoint, early stop
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from ..config import TrainConfig
from ..data.batching import collate, plan_epoch, plan_eval, shard
from ..evaluate.metrics import classification_metrics, headline, is_better
from .checkpoint import load_checkpoint, save_checkpoint
from .stop import StopFlag, fault_injection
from .checkpoint import load_weights as load_checkpoint_weights
from .optim import build_optimizer, build_scheduler


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C / SIGTERM) after writing a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}")
        self.step = step


@dataclass
class Tokenized:
    """Token ids per example (unpadded) and label ids: what the loop trains on."""

    ids: list[list[int]]
    labels: list[int]

    def __post_init__(self):
        self.lengths = [len(x) for x in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def units(self, rows: list[int]) -> int:
        """What the loss is averaged over: examples."""
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return sum(self.lengths[r] for r in rows)

    def batch(self, rows: list[int], pad_id: int, with_labels: bool = True) -> dict[str, torch.Tensor]:
        return collate(self.ids, rows, pad_id, self.labels if with_labels else None)


@dataclass
class Features:
    """Cached backbone features per example (linear probe): the head trains on these."""

    x: torch.Tensor
    labels: list[int]

    def __post_init__(self):
        self.lengths = [1] * len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def units(self, rows: list[int]) -> int:
        return len(rows)

    def tokens(self, rows: list[int]) -> int:
        return 0

    def batch(self, rows: list[int], pad_id: int, with_labels: bool = True) -> dict[str, torch.Tensor]:
        out = {"features": self.x[rows]}
        if with_labels:
            out["labels"] = torch.tensor([self.labels[r] for r in rows], dtype=torch.long)
        return out


@dataclass
class FitResult:
    best_step: int
    best_metrics: dict
    steps: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    tokens_per_second: float = 0.0


@dataclass
class LoopState:
    """Everything about the loop's position that a checkpoint must restore (JSON-serialisable)."""

    step: int = 0
    best: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    samples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    history: list = field(default_factory=list)


def fit(
    model: nn.Module,
    strategy,
    train: Tokenized | Features,
    validation: Tokenized | Features,
    label_names: list[str],
    cfg: TrainConfig,
    seed: int,
    accelerator: Accelerator,
    pad_id: int,
    run_dir: Path,
    eval_batch_size: int,
    resume: bool = False,
    log: Callable[[dict, int], None] = lambda metrics, step: None,
    class_weights: torch.Tensor | None = None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    evaluate_fn: Callable[[nn.Module], dict] | None = None,
) -> FitResult:
    """Train `model` as `strategy` says; returns with the best checkpoint's weights loaded.

    The task enters through two functions: `loss_fn(model, inputs)` returns the loss SUMMED over the
    batch's units (examples for classification, trained tokens for language models: `train.units`),
    and `evaluate_fn(model)` returns validation metrics. Defaults: classification.
    """
    acc = accelerator
    world, rank = acc.num_processes, acc.process_index
    ckpt_dir, best_dir = run_dir / "checkpoints" / "last", run_dir / "checkpoints" / "best"

    # ---- how long: optimizer steps are planned globally (batch_size x processes x grad_accum examples)
    global_micro = cfg.batch_size * world
    steps_per_epoch = max(1, len(_plan(train, global_micro, cfg.grad_accum, seed, 0, cfg.group_by_length, world)))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = cfg.eval_every or steps_per_epoch

    if world > 1 and not strategy.supports_distributed:
        from ..errors import ConfigError

        raise ConfigError(f"strategy {strategy.name} does not support several processes yet; run it in one process")
    names = strategy.trainable_names(model)  # everything that trains at some step: optimizer + checkpoints
    optimizer = build_optimizer(strategy.param_groups(model, cfg.lr, cfg.weight_decay), cfg.lr)
    scheduler = build_scheduler(optimizer, cfg.scheduler, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer = acc.prepare(model, optimizer)  # DDP wrapping when there are several processes
    trainable = [p for p in model.parameters() if p.requires_grad]
    if loss_fn is None:
        loss_fn = classification_loss(class_weights.to(acc.device) if class_weights is not None else None)
    if evaluate_fn is None:
        def evaluate_fn(m):
            return evaluate(m, validation, label_names, acc, pad_id, eval_batch_size)

    state = LoopState()
    if resume and ckpt_dir.exists():
        saved, rng = load_checkpoint(ckpt_dir, acc.unwrap_model(model), optimizer, scheduler)
        state = LoopState(**saved)
        torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        acc.print(f"resumed from step {state.step} of {total_steps}")
    else:
        torch.manual_seed(seed + rank)

    acc.print(
        f"training: {len(train)} examples, {steps_per_epoch} steps/epoch, {total_steps} steps, "
        f"global batch {global_micro * cfg.grad_accum} ({world} process(es) x {cfg.batch_size} x {cfg.grad_accum} accumulation)"
    )
    stop = StopFlag()
    fault = fault_injection()
    progress = _progress(acc, total_steps, state.step)
    running_loss = torch.zeros((), dtype=torch.float64, device=acc.device)  # stays on the device: no per-step sync
    running_n, t_window, samples_window = 0, time.perf_counter(), 0
    t_start = time.perf_counter() - state.train_seconds
    model.train()

    try:
        while state.step < total_steps and not state.stopped_early:
            epoch = state.step // steps_per_epoch
            steps = _plan(train, global_micro, cfg.grad_accum, seed, epoch, cfg.group_by_length, world)
            for micro_batches in steps[state.step - epoch * steps_per_epoch :]:
                changed = strategy.on_step(acc.unwrap_model(model), state.step, steps_per_epoch)
                if changed:
                    acc.print(f"\n{changed}")
                    state.history.append({"step": state.step, "event": changed})
                # Normalise by the units (examples, or trained tokens) in the whole optimizer step (all
                # micro-batches, all processes), so accumulation and uneven last batches weigh every unit equally.
                n_step = sum(train.units(b) for b in micro_batches)
                for k, global_batch in enumerate(micro_batches):
                    rows = shard(global_batch, rank, world)
                    inputs = {k: v.to(acc.device) for k, v in train.batch(rows, pad_id).items()}
                    # In DDP only the last micro-step needs to all-reduce gradients.
                    sync = k == len(micro_batches) - 1
                    with nullcontext() if sync else acc.no_sync(model), acc.autocast():
                        loss_sum = loss_fn(model, inputs)
                    # DDP averages gradients over processes; multiply by `world` to get the global sum.
                    acc.backward(loss_sum * world / n_step)
                    running_loss += loss_sum.detach().double()
                    running_n += train.units(rows)
                    state.tokens += train.tokens(global_batch)
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                n_examples = sum(train.examples(b) if hasattr(train, "examples") else len(b) for b in micro_batches)
                state.samples += n_examples
                samples_window += n_examples

                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    # The only host sync of a training step, every `log_every` steps.
                    total, units = acc.reduce(torch.stack([running_loss, running_loss.new_tensor(float(running_n))]), "sum").tolist()
                    loss = total / max(1.0, units)
                    rate = samples_window / max(1e-9, time.perf_counter() - t_window)
                    lr = scheduler.get_last_lr()[0]
                    log({"train_loss": loss, "lr": lr, "samples_per_s": rate}, state.step)
                    state.history.append({"step": state.step, "train_loss": loss, "lr": lr})
                    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.0f}")
                    running_loss.zero_()
                    running_n, t_window, samples_window = 0, time.perf_counter(), 0
                progress.update(1)

                evaluate_now = state.step % eval_every == 0 or state.step == total_steps
                if evaluate_now:
                    state.train_seconds = time.perf_counter() - t_start
                    metrics = evaluate_fn(model)
                    value = metrics[cfg.metric]
                    record = {"step": state.step, "epoch": state.step / steps_per_epoch, **{f"val_{k}": v for k, v in headline(metrics).items()}}
                    state.history.append(record)
                    log({k: v for k, v in record.items() if k.startswith("val_")}, state.step)
                    if is_better(cfg.metric, value, state.best):
                        state.best, state.best_step, state.bad_evals = value, state.step, 0
                        _save_best(acc, model, best_dir, state, metrics, names)
                    else:
                        state.bad_evals += 1
                        if cfg.patience and state.bad_evals >= cfg.patience:
                            state.stopped_early = True
                            acc.print(f"\nearly stopping at step {state.step}: val {cfg.metric} did not improve for {cfg.patience} evaluations")
                    if acc.is_main_process:
                        progress.write(f"step {state.step}: val {cfg.metric} {value:.4f} (best {state.best:.4f} at step {state.best_step})")
                    model.train()
                    _checkpoint(acc, ckpt_dir, model, optimizer, scheduler, state, names)

                fault(state.step)
                if stop.requested(acc, state.step, sync_every=1 if world == 1 else cfg.log_every):
                    state.train_seconds = time.perf_counter() - t_start
                    if not evaluate_now:
                        _checkpoint(acc, ckpt_dir, model, optimizer, scheduler, state, names)
                    raise Interrupted(state.step)
                if state.stopped_early or state.step >= total_steps:
                    break
    finally:
        progress.close()
        stop.restore()

    state.train_seconds = time.perf_counter() - t_start
    # Continue with the best weights (every process loads them: test evaluation is distributed too).
    acc.wait_for_everyone()
    load_checkpoint_weights(best_dir, acc.unwrap_model(model))
    best_metrics = _read_json(best_dir / "metrics.json")
    seconds = max(1e-9, state.train_seconds)
    return FitResult(
        best_step=state.best_step,
        best_metrics=best_metrics,
        steps=state.step,
        history=state.history,
        stopped_early=state.stopped_early,
        train_seconds=state.train_seconds,
        samples_per_second=state.samples / seconds,
        tokens_per_second=state.tokens / seconds,
    )


def classification_loss(class_weights: torch.Tensor | None = None) -> Callable[[nn.Module, dict], torch.Tensor]:
    """Cross-entropy summed over the batch's examples (optionally class-weighted)."""

    def loss(model: nn.Module, inputs: dict) -> torch.Tensor:
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), labels, weight=class_weights, reduction="sum")

    return loss


@torch.no_grad()
def map_batches(data, pad_id: int, batch_size: int, fn, rank: int = 0, world: int = 1) -> np.ndarray:
    """fn(inputs) -> a [batch, ...] tensor for every example, computed in shares across processes; all get all."""
    mine: list[tuple[list[int], np.ndarray]] = []
    for global_batch in plan_eval(data.lengths, batch_size * world):
        rows = shard(global_batch, rank, world)
        if rows:
            mine.append((rows, fn(data.batch(rows, pad_id, with_labels=False)).float().cpu().numpy()))
    parts = gather_object(mine) if world > 1 else mine
    first = parts[0][1]
    out = np.zeros((len(data.labels), *first.shape[1:]), dtype=np.float32)
    for rows, values in parts:
        out[rows] = values
    return out


def predict_probs(model: nn.Module, data, pad_id: int, batch_size: int, autocast=nullcontext, rank: int = 0, world: int = 1) -> np.ndarray:
    """Class probabilities for every example."""
    model.eval()
    device = next(model.parameters()).device

    def probs(inputs):
        with autocast():
            return torch.softmax(model(**{k: v.to(device) for k, v in inputs.items()}).logits.float(), dim=-1)

    return map_batches(data, pad_id, batch_size, probs, rank, world)


def evaluate(model, data: Tokenized | Features, label_names, acc: Accelerator, pad_id, batch_size) -> dict:
    probs = predict_probs(model, data, pad_id, batch_size, acc.autocast, acc.process_index, acc.num_processes)
    return classification_metrics(data.labels, probs, label_names)


# --------------------------------------------------------------------------------------------
# helpers


def _plan(data: Tokenized | Features, global_micro: int, accum: int, seed: int, epoch: int, group: bool, world: int) -> list[list[list[int]]]:
    """Optimizer steps of one epoch, each a list of global micro-batches.

    Steps are drawn first (so 16 x 1 and 8 x 2 accumulation see the same examples per step), then cut
    into micro-batches. Every process needs at least one example per micro-batch, or DDP would wait forever.
    """
    steps = []
    for step in plan_epoch(data.lengths, global_micro * accum, seed, epoch, group):
        micro = [step[i : i + global_micro] for i in range(0, len(step), global_micro)]
        micro = [m for m in micro if len(m) >= world]
        if micro:
            steps.append(micro)
    return steps


def _save_best(acc, model, best_dir: Path, state: LoopState, metrics: dict, names: set[str]) -> None:
    from ..strategies.base import trainable_state
    from ..utils import atomic_dir, atomic_write_json

    if acc.is_main_process:
        from safetensors.torch import save_file

        with atomic_dir(best_dir) as tmp:
            save_file(trainable_state(acc.unwrap_model(model), names), str(tmp / "trainable.safetensors"))
            atomic_write_json(tmp / "metrics.json", {"step": state.step, **metrics})
    acc.wait_for_everyone()


def _checkpoint(acc, folder: Path, model, optimizer, scheduler, state: LoopState, names: set[str]) -> None:
    rng = gather_object([torch.get_rng_state()]) if acc.num_processes > 1 else [torch.get_rng_state()]
    if acc.is_main_process:
        save_checkpoint(folder, acc.unwrap_model(model), optimizer, scheduler, state.__dict__, rng, names)
    acc.wait_for_everyone()


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _progress(acc: Accelerator, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc="train", unit="step", disable=not acc.is_main_process,
        mininterval=1.0 if os.environ.get("CI") is None else 10.0, dynamic_ncols=True,
    )
