"""The one training loop. It reads top to bottom; every strategy and task goes through it.

Shape of one optimizer step:
    plan global micro-batches from (seed, epoch)  ->  each process takes its share
    forward under autocast  ->  the task's loss, summed over units / units in the whole step
    backward (gradients synced only on the last micro-batch)  ->  clip  ->  AdamW  ->  schedule
    every `eval_every` steps (or each epoch): evaluate, keep the best, checkpoint, early stop
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object
from safetensors.torch import save_file
from torch import nn

from ..config.schema import TrainConfig
from ..errors import ConfigError, Interrupted
from ..forgetting.regularize import NO_REGULARIZATION, Regularization
from ..strategies.base import trainable_state
from ..utils import atomic_dir, atomic_write_json, read_json
from .batches import Batches, plan_steps, shard
from .checkpoint import load_checkpoint, save_checkpoint
from .checkpoint import load_weights as load_checkpoint_weights
from .context import Context
from .optim import build_optimizer, build_scheduler
from .sharding import (
    full_trainable_state,
    gathered,
    load_sharded,
    save_sharded,
    shard_model,
    wants_sharding,
)
from .stop import StopFlag, fault_injection


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
    sharded: bool = False
    """FSDP: the model passed in is sharded and lacks the best weights; the caller builds a plain one from best/."""


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
    running_loss: float = 0.0
    """Loss summed since the last log, all processes (so the first log after a resume averages the right steps)."""
    running_units: float = 0.0
    logged_step: int = 0
    running_parts: dict = field(default_factory=dict)
    """Each regulariser's contribution to the loss summed since the last log (over processes, / processes)."""


def fit(
    model: nn.Module,
    strategy,
    train: Batches,
    loss: Callable[[nn.Module, dict], torch.Tensor],
    validate: Callable[[nn.Module], dict],
    cfg: TrainConfig,
    ctx: Context,
    reached: Callable[[int], None] = lambda step: None,
    regularization: Regularization = NO_REGULARIZATION,
    figures: Callable[[], dict[str, float]] = dict,
) -> FitResult:
    """Train `model` as `strategy` says; returns with the best checkpoint's weights loaded.

    The task enters through two functions: `loss(model, inputs)` returns the loss SUMMED over the
    batch's units (examples for classification, trained tokens for language models: `train.units`),
    and `validate(model)` returns validation metrics, `cfg.metric` among them. `reached(step)` is told
    each optimizer step reached (the run folder's heartbeat; it must be cheap: no I/O). `regularization` adds the
    remedies against forgetting (forgetting/regularize.py): terms per micro-batch and per step, logged apart.
    `figures()` gives what the task measured while training since the last log (logged as train_<name>).
    """
    acc, seed, run_dir = ctx.acc, ctx.cfg.seed, ctx.run_dir
    world, rank = acc.num_processes, acc.process_index
    ckpt_dir, best_dir = run_dir / "checkpoints" / "last", run_dir / "checkpoints" / "best"

    # ---- how long: optimizer steps are planned globally (batch_size x processes x grad_accum examples)
    global_micro = cfg.batch_size * world
    steps_per_epoch = max(1, len(plan_steps(train, global_micro, cfg.grad_accum, seed, 0, cfg.group_by_length, world)))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = cfg.eval_every or steps_per_epoch
    lower_is_better = cfg.metric in ctx.minimize

    if world > 1 and not strategy.supports_distributed:
        raise ConfigError(f"strategy {strategy.name} does not support several processes yet; run it in one process")
    names = strategy.trainable_names(model)  # everything that trains at some step: optimizer + checkpoints
    sharded = wants_sharding(cfg, world)
    if sharded:  # FSDP2 (refusals: pipeline): shard first, the optimizer is then built over the shards (docs/scale.md)
        model = shard_model(model, cfg.fsdp, ctx.precision, acc.device)
    optimizer = build_optimizer(strategy.param_groups(model, cfg.lr, cfg.weight_decay), cfg.lr)
    scheduler = build_scheduler(optimizer, cfg.scheduler, int(cfg.warmup_ratio * total_steps), total_steps)
    if not sharded:
        model, optimizer = acc.prepare(model, optimizer)  # DDP wrapping when there are several processes
    trainable = [p for p in model.parameters() if p.requires_grad]

    state = LoopState()
    if ctx.resume and ckpt_dir.exists():
        if sharded or (ckpt_dir / "shards").is_dir():  # DCP reshards onto any number of processes, even one
            saved, rng = load_sharded(ckpt_dir, model if sharded else acc.unwrap_model(model), optimizer, scheduler)
        else:
            saved, rng = load_checkpoint(ckpt_dir, acc.unwrap_model(model), optimizer, scheduler)
        state = LoopState(**saved)
        torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        strategy.on_step(acc.unwrap_model(model), state.step, steps_per_epoch)  # the schedule as it was (not an event)
        acc.print(f"resumed from step {state.step} of {total_steps}")
        reached(state.step)
    else:
        torch.manual_seed(seed + rank)

    acc.print(
        f"training: {len(train)} examples, {steps_per_epoch} steps/epoch, {total_steps} steps, "
        f"global batch {global_micro * cfg.grad_accum} ({world} process(es) x {cfg.batch_size} x {cfg.grad_accum} accumulation)"
    )
    stop = StopFlag()
    fault = fault_injection()
    progress = _progress(acc, total_steps, state.step)
    # Stays on the device: no per-step sync. A resumed run carries on with what the checkpoint had (main process).
    running_loss = torch.tensor(state.running_loss if rank == 0 else 0.0, dtype=torch.float64, device=acc.device)
    running_n = state.running_units if rank == 0 else 0
    reg = regularization
    running_parts = {
        n: torch.tensor(state.running_parts.get(n, 0.0) if rank == 0 else 0.0, dtype=torch.float64, device=acc.device)
        for n in reg.names
    }
    t_window, samples_window = time.perf_counter(), 0
    t_start = time.perf_counter() - state.train_seconds
    model.train()

    try:
        while state.step < total_steps and not state.stopped_early:
            epoch = state.step // steps_per_epoch
            steps = plan_steps(train, global_micro, cfg.grad_accum, seed, epoch, cfg.group_by_length, world)
            remaining = steps[state.step - epoch * steps_per_epoch :]
            if hasattr(train, "upcoming"):  # a split that decodes ahead (images) learns what it will be asked for
                train.upcoming(epoch, [shard(b, rank, world) for micro in remaining for b in micro])
            for micro_batches in remaining:
                changed = strategy.on_step(acc.unwrap_model(model), state.step, steps_per_epoch)
                if changed:
                    acc.print(f"\n{changed}")
                    state.history.append({"step": state.step, "event": changed})
                # Normalise by the units (examples, or trained tokens) in the whole optimizer step (all
                # micro-batches, all processes), so accumulation and uneven last batches weigh every unit equally.
                # Replayed reference rows (regularize: replay) count among the step's units.
                n_step = sum(train.units(b) for b in micro_batches) + reg.step_units(state.step)
                for k, global_batch in enumerate(micro_batches):
                    rows = shard(global_batch, rank, world)
                    inputs = {k: v.to(acc.device) for k, v in train.batch(rows).items()}
                    # In DDP (and FSDP) only the last micro-step needs to all-reduce (reduce-scatter) gradients.
                    sync = k == len(micro_batches) - 1
                    if sharded:
                        model.set_requires_gradient_sync(sync)
                    with nullcontext() if sync or sharded else acc.no_sync(model), acc.autocast():
                        loss_sum, parts = reg.micro(model, inputs, lambda b: loss(model, b), world, n_step)
                        if sync:  # per-step terms (penalties, replay) join the last micro-batch's backward pass
                            parts.update(reg.step(model, state.step, rank, world, n_step))
                    # DDP (FSDP) averages gradients over processes; multiply by `world` to get the global sum.
                    acc.backward(loss_sum * world / n_step + sum(parts.values()))
                    running_loss += loss_sum.detach().double()
                    for name, value in parts.items():
                        running_parts[name] += value.detach().double() / world
                    running_n += train.units(rows)
                    state.tokens += train.tokens(global_batch)
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                reached(state.step)
                n_examples = sum(train.examples(b) for b in micro_batches)
                state.samples += n_examples
                samples_window += n_examples

                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    # The only host sync of a training step, every `log_every` steps.
                    total, units = acc.reduce(
                        torch.stack([running_loss, running_loss.new_tensor(float(running_n))]), "sum"
                    ).tolist()
                    mean = total / max(1.0, units)
                    rate = samples_window / max(1e-9, time.perf_counter() - t_window)
                    lr = scheduler.get_last_lr()[0]
                    terms = _terms(acc, running_parts, state.step - state.logged_step)
                    terms.update({f"train_{k}": v for k, v in figures().items()})
                    ctx.log({"train_loss": mean, **terms, "lr": lr, "samples_per_s": rate}, state.step)
                    state.history.append({"step": state.step, "train_loss": mean, **terms, "lr": lr})
                    progress.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.0f}")
                    state.logged_step = state.step
                    running_loss.zero_()
                    running_n, t_window, samples_window = 0, time.perf_counter(), 0
                progress.update(1)

                evaluate_now = state.step % eval_every == 0 or state.step == total_steps
                if evaluate_now:
                    state.train_seconds = time.perf_counter() - t_start
                    with gathered(model) if sharded else nullcontext():
                        metrics = validate(model)
                    value = metrics[cfg.metric]
                    scalars = {f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)}
                    record = {"step": state.step, "epoch": state.step / steps_per_epoch, **scalars}
                    state.history.append(record)
                    ctx.log({k: v for k, v in record.items() if k.startswith("val_")}, state.step)
                    if state.best is None or (value < state.best if lower_is_better else value > state.best):
                        state.best, state.best_step, state.bad_evals = value, state.step, 0
                        _save_best(acc, model, best_dir, state, metrics, names, sharded)
                    else:
                        state.bad_evals += 1
                        if cfg.patience and state.bad_evals >= cfg.patience:
                            state.stopped_early = True
                            acc.print(
                                f"\nearly stopping at step {state.step}: val {cfg.metric} did not improve for {cfg.patience} evaluations"
                            )
                    if acc.is_main_process:
                        progress.write(
                            f"step {state.step}: val {cfg.metric} {value:.4f} (best {state.best:.4f} at step {state.best_step})"
                        )
                    model.train()
                    _carry(acc, running_loss, running_n, running_parts, state)
                    _checkpoint(acc, ckpt_dir, model, optimizer, scheduler, state, names, sharded)
                    ctx.on_validation(sum("epoch" in h for h in state.history), state.step, metrics)

                fault(state.step)
                if stop.requested(acc, state.step, sync_every=1 if world == 1 else cfg.log_every):
                    state.train_seconds = time.perf_counter() - t_start
                    if not evaluate_now:
                        _carry(acc, running_loss, running_n, running_parts, state)
                        _checkpoint(acc, ckpt_dir, model, optimizer, scheduler, state, names, sharded)
                    raise Interrupted(state.step)
                if state.stopped_early or state.step >= total_steps:
                    break
    finally:
        progress.close()
        stop.restore()

    state.train_seconds = time.perf_counter() - t_start
    # Continue with the best weights (every process loads them: test evaluation is distributed too).
    acc.wait_for_everyone()
    if not sharded:
        load_checkpoint_weights(best_dir, acc.unwrap_model(model))
    best_metrics = read_json(best_dir / "metrics.json")
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
        sharded=sharded,
    )


# --------------------------------------------------------------------------------------------
# helpers


def _carry(acc, running_loss: torch.Tensor, running_n: float, parts: dict, state: LoopState) -> None:
    """Put the loss accumulated since the last log (summed over processes) into the state a checkpoint keeps."""
    values = [running_loss, running_loss.new_tensor(float(running_n)), *parts.values()]
    total, units, *terms = acc.reduce(torch.stack(values), "sum").tolist()
    state.running_loss, state.running_units = total, units
    state.running_parts = dict(zip(parts, terms))


def _terms(acc, parts: dict, steps: int) -> dict[str, float]:
    """Each regulariser's mean contribution per optimizer step since the last log (`train_<name>`), then reset."""
    if not parts:
        return {}
    sums = acc.reduce(torch.stack(list(parts.values())), "sum").tolist()
    for value in parts.values():
        value.zero_()
    return {f"train_{name}": s / max(1, steps) for name, s in zip(parts, sums)}


def _save_best(acc, model, best_dir: Path, state: LoopState, metrics: dict, names: set[str], sharded: bool) -> None:
    gathered_weights = full_trainable_state(model, names) if sharded else None  # collective: every process
    if acc.is_main_process:
        with atomic_dir(best_dir) as tmp:
            weights = gathered_weights if sharded else trainable_state(acc.unwrap_model(model), names)
            save_file(weights, str(tmp / "trainable.safetensors"))
            atomic_write_json(tmp / "metrics.json", {"step": state.step, **metrics})
    acc.wait_for_everyone()


def _checkpoint(acc, folder: Path, model, optimizer, scheduler, state: LoopState, names: set[str], sharded) -> None:
    rng = gather_object([torch.get_rng_state()]) if acc.num_processes > 1 else [torch.get_rng_state()]
    if sharded:
        return save_sharded(folder, model, optimizer, scheduler, state.__dict__, rng, acc.is_main_process)
    if acc.is_main_process:
        save_checkpoint(folder, acc.unwrap_model(model), optimizer, scheduler, state.__dict__, rng, names)
    acc.wait_for_everyone()


def _progress(acc, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        unit="step",
        disable=not acc.is_main_process or bool(os.environ.get("TQDM_DISABLE")),  # tqdm's own switch (tune workers)
        mininterval=1.0 if os.environ.get("CI") is None else 10.0,
        dynamic_ncols=True,
    )
