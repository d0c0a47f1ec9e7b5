"""A run folder, read-only: what ran, its metrics, and its model for predict / generate / evaluate.

`Run.predict`, `Run.generate` and `Run.evaluate` delegate to the task's predictor, so a run answers
with exactly the data handling its task trained with.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.loader import load_config
from ..engine.precision import choose_precision, compute_dtype
from ..errors import RunError, TunesmithError
from ..models.loading import resolve_model
from ..strategies import build_strategy
from ..tasks.base import Prediction
from ..tasks.registry import build_task
from ..utils import atomic_write_json
from .record import Liveness, is_run_folder, liveness, read_info, read_labels, read_metrics
from .registry import resolve

__all__ = ["LoadedModel", "Prediction", "Run", "list_runs", "load_run"]


@dataclass
class LoadedModel:
    """A run's trained model, ready for inference."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    autocast: object
    """A no-argument callable giving the autocast context to run the model under."""
    strategy: object
    adapters: dict[str, str] = dataclasses.field(default_factory=dict)
    """{run path: PEFT adapter name} when several runs share this model (`Run.load(sharing=...)`)."""


class Run:
    """A run folder. `Run(path).predict(["great movie"])` loads the model on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.info: dict = read_info(self.path)
        self.label_names: list[str] = read_labels(self.path)
        self._loaded: LoadedModel | None = None

    @property
    def liveness(self) -> Liveness:
        """The status now, with the last step reached: run.json's, or `died` when it says running but the process is
        gone (derived on each read, never written back)."""
        return liveness(self.path, self.info)

    @property
    def status(self) -> str:
        """running | interrupted | failed | complete | died (see `liveness`)."""
        return self.liveness.status

    @property
    def metrics(self) -> dict:
        return read_metrics(self.path)

    @functools.cached_property
    def config(self):
        """The resolved config of the run (read once)."""
        return load_config(self.path / "config.yaml", strict=False)

    @functools.cached_property
    def task(self):
        return build_task(self.config)

    @functools.cached_property
    def predictor(self):
        return self.task.predictor(self)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    def load(self, for_inference: bool = True, sharing: list[Run] = ()) -> LoadedModel:
        """The trained model (the strategy rebuilds it on its pretrained base), its tokenizer, device and autocast.

        Inference runs in the precision the run trained in (where this machine can; else fp32). A task that
        generates gets its weights cast to that dtype, unless `for_inference=False` (exports keep the trained dtype).

        `sharing`: other adapter runs on the same base (see `adapter_key`) whose adapters are loaded into this
        model beside its own (PEFT multi-adapter): one base in memory answers for all of them. Each of those runs
        then loads as this model; `LoadedModel.adapters` maps run paths to adapter names for `set_adapter`.
        """
        if for_inference and self._loaded is not None and not sharing:
            return self._loaded
        status = self.status
        if status != "complete" or not (self.path / "model").is_dir():
            raise RunError(
                f"{self.path}: the run {'died' if status == 'died' else f'is {status}'}, it has no saved model; "
                f"resume it with `tunesmith train --resume {self.path}`"
            )
        cfg, task = self.config, self.task
        strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
        tokenizer = task.load_saved_tokenizer(self.path / "model")
        model = strategy.load(
            self.path / "model",
            lambda: task.load_model(resolve_model(cfg.model.name), tokenizer, strategy, self.label_names),
        )
        adapters = {str(self.path): "default"} if sharing else {}
        for i, other in enumerate(sharing, 1):
            if other.adapter_key() != self.adapter_key():
                raise RunError(
                    f"{other.path}: not an adapter on the same base as {self.path}; it cannot share its model"
                )
            adapters[str(other.path)] = f"adapter{i}"
            model.load_adapter(other.path / "model", adapter_name=adapters[str(other.path)])
        model.eval()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        dtype = compute_dtype(self._inference_precision(device.type))
        if dtype and task.infer_in_compute_dtype and for_inference:
            model.to(dtype)  # inference only: weights in the compute dtype, no cast per generated token
        autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
        loaded = LoadedModel(model, tokenizer, device, autocast, strategy, adapters)
        if for_inference:
            for run in (self, *sharing):
                run._loaded = loaded
        return loaded

    def adapter_key(self) -> tuple | None:
        """Runs with equal keys are adapters of one kind on one base model, with the same task and labels: they
        can share one model in memory (`load(sharing=...)`). None for a run that saves its whole model."""
        cfg = self.config
        strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
        if strategy.saves_base:
            return None
        base = resolve_model(cfg.model.name).location
        return (
            self.info.get("task"),
            base,
            cfg.model.revision,
            cfg.strategy.name,
            strategy.quantize,
            self.info.get("precision"),
            tuple(self.label_names),
        )

    def _inference_precision(self, device_type: str) -> str:
        """The run's own precision where this device runs it, else what `auto` picks here (fp32 stays fp32)."""
        trained = self.info.get("precision", "auto")
        try:
            return choose_precision(trained, device_type)[0]
        except TunesmithError:  # e.g. an fp16 (CUDA) run loaded on a CPU
            return choose_precision("auto", device_type)[0]

    # ---- what the task's predictor offers
    def predict(self, texts: str | list[str], batch_size: int = 64, task: str | None = None) -> list[Prediction]:
        """Label, its probability, and every label's probability, per text (`task`: a multi-task run's head)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.predictor.predict(texts, batch_size, **self._head(task)) if texts else []

    def predict_probs(self, texts: list[str], batch_size: int = 64, task: str | None = None):
        """Class probabilities, one row per text, columns in `label_names` order (a multi-task run: the task's)."""
        return self.predictor.predict_probs(list(texts), batch_size, **self._head(task))

    def _head(self, task: str | None) -> dict:
        if task is None:
            return {}
        if not self.task.composite:
            raise RunError(
                f"{self.path}: task={task!r} picks a head of a multi-task run; this run is {self.info.get('task')}"
            )
        return {"task": task}

    def generate(
        self, prompts: list[str] | list[list[dict]], max_new_tokens: int | None = None, **overrides
    ) -> list[str]:
        """Completions for prompts: strings (chat models: one user turn each) or message lists, rendered as in training."""
        return self.predictor.generate(prompts, max_new_tokens, **overrides)

    def evaluate(
        self,
        data: str,
        text_column: str | None = None,
        label_column: str | None = None,
        save: bool = True,
        task: str | None = None,
    ) -> dict:
        """Metrics of this run's model on another file (written to `evals/` in the run folder)."""
        metrics = self.predictor.evaluate(data, text_column=text_column, label_column=label_column, **self._head(task))
        if save:
            atomic_write_json(self.path / "evals" / f"{Path(data).stem}-{time.strftime('%Y%m%d-%H%M%S')}.json", metrics)
        return metrics


def load_run(path: str | Path) -> Run:
    """A run folder, or a registered version: `models:/NAME@ALIAS` / `models:/NAME/VERSION` (registry at $MLFLOW_TRACKING_URI, default runs/mlflow.db)."""
    if str(path).startswith("models:/"):
        path = resolve(str(path))
    return Run(path)


def list_runs(output_dir: str | Path = "runs") -> list[Run]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir()) if is_run_folder(p)]
