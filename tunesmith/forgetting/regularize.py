"""The remedies against forgetting as the training loop sees them: extra loss terms per micro-batch and per step.

    micro-batch loss = task loss (+ weight x distillation on the same forward pass)          summed over units
    step loss        = l2sp / ewc penalties + distillation on a reference batch + replayed reference rows

Every term is reported apart (`train_<name>`, its contribution to the optimised loss, per step) and plotted.
Reference rows (replay, distillation on reference) are drawn from (seed, step, process): a resumed run draws
exactly what the uninterrupted one would have, and no random state of the training loop is touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .anchors import Anchors


@dataclass
class Reference:
    """A reference set, encoded by its task: what forgetting is measured on and what some remedies read."""

    name: str
    batches: object
    """A `Batches` (engine/batches.py) of the rows the remedies read (EWC's Fisher, replay, distillation)."""
    measured: object = None
    """A `Batches` of the rows forgetting is measured on: the other half of the set, never trained on."""
    scorer: Callable[[nn.Module], nn.Module] | None = None
    """Given the model being trained, the module that scores the rows with `loss` (the model itself; for a previous
    classification task, that task's head on this model's encoder). None: the rows have no targets (texts only)."""
    loss: Callable[[nn.Module, dict], torch.Tensor] | None = None
    """The rows' loss, SUMMED over their units."""
    data: dict = field(default_factory=dict)
    """The task's own view of the set (texts, labels, samples) for measuring it."""

    @property
    def trainable(self) -> bool:
        return self.scorer is not None


class Term:
    """One remedy. `name` labels its logged contribution."""

    name = ""

    def micro(self, model: nn.Module, batch: dict, forward: Callable[[dict], torch.Tensor]):
        """(task loss sum, this term's sum over the batch's units) from ONE forward pass; default: no term."""
        return forward(batch), None

    def step_rows(self, step: int) -> tuple[object, list[int]] | None:
        """Rows of a reference set that join this optimizer step's loss (replay): (batches, global rows)."""
        return None

    def step(self, model: nn.Module, step: int, rank: int, world: int, n_step: float) -> torch.Tensor | None:
        """This term's contribution to the step's loss (already normalised), on the last micro-batch."""
        return None


class ParamPenalty(Term):
    def __init__(self, kind: str, weight: float, anchors: Anchors, fisher: dict | None = None):
        self.name, self.weight, self.anchors, self.fisher = kind, weight, anchors, fisher

    def value(self) -> torch.Tensor:
        return self.anchors.ewc(self.fisher) if self.fisher is not None else self.anchors.l2sp()

    def step(self, model, step, rank, world, n_step):
        # Every process holds the same weights: each adds the same penalty, and DDP's gradient average keeps it.
        return self.weight * self.value()


class Teacher:
    """The original model's outputs: a PEFT model with its adapters disabled (no second copy), else a frozen copy
    in the compute dtype taken before training."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None):
        self.peft = hasattr(model, "disable_adapter")
        self.copy = None
        if not self.peft:
            self.copy = copy.deepcopy(model).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)
            if dtype is not None:
                self.copy.to(dtype)

    @contextmanager
    def module(self, student: nn.Module):
        if self.copy is not None:
            yield self.copy
            return
        was_training = student.training
        student.eval()
        config = getattr(student, "active_peft_config", None)
        if getattr(config, "is_prompt_learning", False):
            # soft prompts live outside the base model, which is the original one (PEFT's disable_adapter
            # cannot switch prompt learning off for every task model)
            yield student.get_base_model()
        else:
            with student.disable_adapter():
                yield student
        student.train(was_training)


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows of T^2 x KL(teacher || student) of the temperature-softened distributions (Hinton et al.)."""
    t = temperature
    log_s = F.log_softmax(student.float() / t, dim=-1)
    log_t = F.log_softmax(teacher.float() / t, dim=-1)
    return (t * t) * (log_t.exp() * (log_t - log_s)).sum()


def cosine_sum(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over rows of 1 - cosine similarity (representations)."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).sum()


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    return kl_sum(student, teacher, temperature) if kind == "logits" else cosine_sum(student, teacher)


class Distill(Term):
    """weight x divergence between the model's and the original model's outputs (the task says which outputs)."""

    name = "distill"

    def __init__(self, weight, temperature, task, teacher: Teacher, unwrap, reference: Reference | None, seed, batch):
        self.weight, self.temperature, self.task, self.teacher, self.unwrap = weight, temperature, task, teacher, unwrap
        self.reference, self.seed, self.batch_size = reference, seed, batch

    def micro(self, model, batch, forward):
        if self.reference is not None:
            return forward(batch), None
        captured = []
        module = self.unwrap(model)
        handle = module.register_forward_hook(lambda m, args, out: captured.append(out))
        try:
            loss_sum = forward({**batch, **self.task.distill_flags})
        finally:
            handle.remove()
        student, kind = self.task.distill_outputs(captured[-1], batch)
        with torch.no_grad(), self.teacher.module(module) as original:
            teacher, _ = self.task.distill_outputs(self.task.distill_forward(original, batch), batch)
        return loss_sum, self.weight * divergence(student, teacher.detach(), kind, self.temperature)

    def step(self, model, step, rank, world, n_step):
        if self.reference is None:
            return None
        data = self.reference.batches
        rows = _draw(len(data), self.batch_size, self.seed, step, rank, salt=1)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in data.batch(rows).items()}
        module = self.unwrap(model)
        student, kind = self.task.distill_outputs(self.task.distill_forward(module, batch), batch)
        with torch.no_grad(), self.teacher.module(module) as original:
            teacher, _ = self.task.distill_outputs(self.task.distill_forward(original, batch), batch)
        rows_out = max(1, student.shape[0])
        # A mean over this process's reference rows; DDP averages it over processes.
        return self.weight * divergence(student, teacher.detach(), kind, self.temperature) / rows_out


class Replay(Term):
    """`fraction` of every optimizer step's rows come from a reference set, trained on with its own loss."""

    name = "replay"

    def __init__(self, fraction: float, reference: Reference, unwrap, seed: int, global_rows: int):
        self.fraction, self.reference, self.unwrap, self.seed = fraction, reference, unwrap, seed
        # rows per step such that replayed / (training + replayed) = fraction
        self.per_step = max(1, round(global_rows * fraction / (1 - fraction)))

    def step_rows(self, step):
        return self.reference.batches, _draw(len(self.reference.batches), self.per_step, self.seed, step, 0, salt=2)

    def step(self, model, step, rank, world, n_step):
        data, rows = self.step_rows(step)
        mine = rows[rank::world]
        if not mine:
            return None
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in data.batch(mine).items()}
        scored = self.reference.scorer(self.unwrap(model))
        # Like a training micro-batch: summed over units / the step's units (replayed ones included), x world for DDP.
        return self.reference.loss(scored, batch) * world / n_step


class Regularization:
    """The terms of a run's `regularize` list, as the loop calls them."""

    def __init__(self, terms: list[Term]):
        self.terms = terms
        self.names = [t.name for t in terms]

    def __bool__(self) -> bool:
        return bool(self.terms)

    def step_units(self, step: int) -> float:
        """Units of the reference rows replayed at this step (they join the step's normaliser)."""
        total = 0.0
        for term in self.terms:
            drawn = term.step_rows(step)
            if drawn:
                data, rows = drawn
                total += data.units(rows)
        return total

    def micro(self, model, batch: dict, forward, world: int, n_step: float):
        """(task loss sum, {name: contribution}) of one micro-batch; contributions are normalised like the loss."""
        parts = {}
        loss_sum = None
        for term in self.terms:
            if type(term).micro is not Term.micro:
                loss_sum, extra = term.micro(model, batch, forward)
                if extra is not None:
                    parts[term.name] = extra * world / n_step
        if loss_sum is None:
            loss_sum = forward(batch)
        return loss_sum, parts

    def step(self, model, step: int, rank: int, world: int, n_step: float) -> dict[str, torch.Tensor]:
        out = {}
        for term in self.terms:
            value = term.step(model, step, rank, world, n_step)
            if value is not None:
                out[term.name] = value
        return out


NO_REGULARIZATION = Regularization([])


def _draw(n: int, k: int, seed: int, step: int, rank: int, salt: int) -> list[int]:
    """k row numbers of n, a pure function of (seed, step, rank): resumable, and independent of torch's RNG."""
    rng = np.random.default_rng([seed, step, rank, salt])
    return rng.choice(n, size=k, replace=k > n).tolist()
