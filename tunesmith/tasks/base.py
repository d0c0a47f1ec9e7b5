"""What a task is: everything the one engine needs to know about what is learned.

A task is a class with a `name` (registered in `registry.py`, or named `module:Class` in a config). The
engine (`engine/pipeline.py`) calls, in this order and nothing else:

    load_data -> load_tokenizer -> check_data -> check_strategy -> load_model -> [strategy.prepare]
    -> [run folder opens] -> encode -> before_training -> train_batches -> [fit: loss, validate]
    -> after_fit -> [model saved] -> test -> write_artifacts -> headline -> summary_lines

and `Run` (the read side) asks `load_model` (to rebuild a saved model) and `predictor` (predict/generate/evaluate).
Only `load_data`, `load_model`, `encode`, `loss`, `validate` and `test` must be written; the rest has defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config.schema import Config
from ..errors import ConfigError, RunError
from ..models.loading import load_tokenizer
from ..tracking.report import write_basic_artifacts


@dataclass
class TaskData:
    """What `load_data` returns: the task's splits plus what every run records about them."""

    splits: Any
    """The task's own split object (e.g. train/validation/test texts and label ids)."""
    summary: dict
    """{split: {rows, fingerprint, source}}: recorded in run.json, compared by `tunesmith compare`."""
    labels: list[str] = field(default_factory=list)
    """Output names (class labels) when the task has them: labels.json, the model's head."""
    notes: list[str] = field(default_factory=list)
    """What was done to the data on the way (dropped rows, subsampling, grouped splits), printed and recorded."""
    record: dict = field(default_factory=dict)
    """More of run.json's `data` entry (e.g. the sample format)."""


@dataclass
class Findings:
    """What `check_data` found (the audit, the lint): printed, recorded, saved into the run folder."""

    lines: list[str] = field(default_factory=list)
    """Printed when the run starts (prefixed with what produced them)."""
    record: dict = field(default_factory=dict)
    """Merged into run.json (e.g. {"audit": counts})."""
    metrics: dict = field(default_factory=dict)
    """Tracked once, when the run starts (e.g. audit counts)."""
    save: Callable[[Path], None] | None = None
    """Writes the findings' own files into the run folder (audit.md, lint.txt)."""


@dataclass
class Prediction:
    """A predicted label, its probability, and every label's probability."""

    label: str
    score: float
    probs: dict[str, float]


class Predictor:
    """What a saved run can do (`Run.predict`, `Run.generate`, `Run.evaluate`); a task offers what fits it."""

    def __init__(self, run):
        self.run = run

    input_kind = "text"
    """What `predict` takes: "text" (strings) or "image" (paths, bytes or PIL images); the CLI's --text / --image."""

    def read_inputs(self, path: str, column: str | None = None):
        """(table, inputs) of a file to predict: the table as read, and the column the model reads from it."""
        from ..data.loaders import load_table, pick_split, require_columns

        cfg = self.run.config.data
        df = pick_split(load_table(path, "auto", cfg.encoding, cfg.encoding_errors), "test", path)
        column = column or cfg.text_column
        require_columns(df, {"text": column}, path, "pass --text-column")
        return df, df[column].fillna("").astype(str).tolist()

    def predict(self, texts: list[str], batch_size: int = 64):
        raise RunError(f"{self.run.path}: a {self.run.task.name} run cannot predict labels; use generate")

    def predict_probs(self, texts: list[str], batch_size: int = 64):
        raise RunError(f"{self.run.path}: a {self.run.task.name} run has no class probabilities; use generate")

    def embed(self, texts: list[str], batch_size: int = 64):
        """One vector per input from the trained model's own encoder (drift monitoring); None where it has none."""
        return None

    def generate(self, prompts: list, max_new_tokens: int | None = None, streamer=None, **overrides) -> list[str]:
        raise RunError(f"{self.run.path}: a {self.run.task.name} run does not generate text; use predict")

    def prompt_tokens(self, prompts: list) -> list[int]:
        """Tokens per prompt as the model is prompted (limits of the server)."""
        raise RunError(f"{self.run.path}: a {self.run.task.name} run does not generate text")

    def evaluate(self, data: str, **columns) -> dict:
        raise RunError(f"{self.run.path}: a {self.run.task.name} run cannot be evaluated on another file")


class Task:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    """One line: what it learns (shown by `tunesmith tasks`)."""
    metrics: ClassVar[tuple[str, ...]] = ("loss",)
    """Valid `train.metric` values (what `validate` reports); the first is the default."""
    minimize: ClassVar[frozenset[str]] = frozenset({"loss", "perplexity"})
    """The metrics for which lower is better (early stopping and the best checkpoint); the others are maximised."""
    uses: ClassVar[frozenset[str]] = frozenset()
    """The task-specific config keys (config/schema.py: TASK_KEYS) this task reads, e.g. "data.label_column", "generate.*"."""
    # ---- capabilities that tools and the read side ask for instead of the task's name
    infer_in_compute_dtype: ClassVar[bool] = False
    """A saved model is cast to the compute dtype (bf16) for inference (generation: no cast per token)."""
    cast_frozen_weights: ClassVar[bool] = False
    """While training with an adapter, frozen weights are stored in the autocast dtype (saves memory and casts)."""
    supports_cv: ClassVar[bool] = False
    supports_compare: ClassVar[bool] = False
    supports_chat: ClassVar[bool] = False
    composite: ClassVar[bool] = False
    """A task made of tasks (`tasks:`, one head each): predict, serve and compare take a task's name."""
    serves: ClassVar[frozenset[str]] = frozenset()
    """What `tunesmith serve` offers for the task's runs: "classify" (predict), "generate", "chat" (OpenAI chat)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    # ---- data
    def load_data(self) -> TaskData:
        raise NotImplementedError

    def load_tokenizer(self, source):
        return load_tokenizer(source, self.cfg.model.revision, self.cfg.model.trust_remote_code)

    def load_saved_tokenizer(self, folder: Path):
        """The tokenizer (or image processor) a run saved beside its model (`Run.load`)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)

    def encoding_key(self) -> str:
        """What the model's inputs depend on besides the weights and the data (keys the cached frozen features)."""
        return str(self.cfg.data.max_length)

    def check_data(self, data: TaskData, tokenizer, source=None) -> Findings:
        """Audit/lint the data; raise DataError when something must stop the run. `source`: the model's ModelSource."""
        return Findings()

    def hold_out_test(self, data: TaskData) -> TaskData:
        """The data of a search trial (`tunesmith tune`): the validation split stands in for the test split, so the
        trial's "test" figures (with their intervals) are validation figures and no test row is ever evaluated.
        Default: for split objects with train/validation/test dataclass fields, each split having `name`/`source`."""
        s = data.splits
        where = "validation split (test held out for model selection)"
        stand_in = dataclasses.replace(s.validation, name="test", source=where)
        summary = {**data.summary, "test": {**data.summary["validation"], "source": where}}
        note = "tune: the test split is held out of this trial; its test figures are on the validation split"
        return dataclasses.replace(
            data, splits=dataclasses.replace(s, test=stand_in), summary=summary, notes=[*data.notes, note]
        )

    def lint(self, data: TaskData, tokenizer, show: int = 2):
        """`tunesmith data lint`: a report of how samples render (generative tasks)."""
        raise ConfigError(
            f"data lint checks generative tasks; task {self.name} has nothing to lint (use `tunesmith data audit`)"
        )

    def check_strategy(self, strategy) -> None:
        """Refuse a strategy this task cannot train (a ConfigError saying what to use instead)."""

    # ---- model
    def load_model(self, source, tokenizer, strategy, labels: list[str]):
        """The pretrained model with the task's head (quantized as `strategy.quantize` says)."""
        raise NotImplementedError

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        """{"train"|"validation"|"test": Batches} (engine/batches.py: the Batches protocol)."""
        raise NotImplementedError

    def before_training(self, model, data: TaskData, batches: dict, ctx) -> dict:
        """Scores of the pretrained model (kept in run.json until the run completes, so a resumed run has them)."""
        return {}

    def train_batches(self, model, batches: dict, strategy, ctx):
        """What the loop trains on (e.g. packed rows); default: the encoded training split."""
        return batches["train"]

    def loss(self, model, inputs: dict):
        """The loss SUMMED over the batch's units (the loop divides by the units of the whole optimizer step)."""
        raise NotImplementedError

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        raise NotImplementedError

    def train_figures(self) -> dict[str, float]:
        """Figures the task measured while training since the last log (GRPO: the sampled completions' rewards per
        component), logged with train_loss as train_<name>. Called on every process at the same step (a task may
        reduce across them)."""
        return {}

    def after_fit(self, model, trained) -> None:
        """Told once training is over (the best weights loaded), before the model is saved: a task removes what only
        training needed (e.g. multi-task's learned loss weights)."""

    # ---- after training (the best weights are loaded; the model is saved)
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        """metrics.json's task part (`test`, baselines, before/after ...). Runs on every process; the main one's counts."""
        raise NotImplementedError

    def write_artifacts(
        self, run_dir: Path, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx
    ) -> None:
        """metrics.json, history.jsonl, plots, report.md, MODEL_CARD.md and the task's own files."""

        write_basic_artifacts(run_dir, metrics, history, self.cfg.train.metric)

    def headline(self, metrics: dict) -> dict[str, float]:
        """The scalar test metrics that trackers, listings and registries show."""
        return {k: v for k, v in (metrics.get("test") or {}).items() if isinstance(v, float)}

    def tracked(self, metrics: dict) -> dict[str, float]:
        """What the tracker (MLflow) records at the end of the run, by name."""
        return {f"test_{k}": v for k, v in self.headline(metrics).items()}

    def brief(self, metrics: dict) -> str:
        """One line of results for `tunesmith runs`."""
        return "  ".join(f"{k} {v:.4f}" for k, v in list(self.headline(metrics).items())[:3]) or "-"

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        """Printed at the end of a run."""
        return [self.brief(metrics)]

    def predictor(self, run) -> Predictor:
        return Predictor(run)

    # ---- forgetting: reference sets measured before/after (eval.reference), and what the remedies read (regularize)
    reference_hint: ClassVar[str] = ""
    """What a reference set a remedy trains or scores on must be, for this task (said when one does not suit)."""
    distill_flags: ClassVar[dict] = {}
    """Extra forward arguments that make the training forward pass return what `distill_outputs` reads."""

    def references(self, model, tokenizer, ctx) -> dict:
        """{name: forgetting.Reference} of eval.reference, encoded (read before the run folder opens: a missing file
        or run is the user's mistake, said before any work)."""
        if self.cfg.eval.reference or self.cfg.regularize:
            raise ConfigError(f"eval.reference / regularize: task {self.name} does not measure or prevent forgetting")
        return {}

    def forgetting_before(self, model, references: dict, ctx) -> dict:
        """The reference sets scored with the original model (main process; kept in run.json until completion)."""
        return {}

    def forgetting_after(self, model, trained, references: dict, before: dict, ctx) -> dict:
        """metrics.json's `forgetting`: every reference set before -> after, and a `summary` line."""
        return {}

    def forgetting_curve(self, model, references: dict, before: dict, ctx) -> dict[str, float]:
        """eval.reference_every_eval: scalar forgetting figures (`ref_<set>_<figure>`) at a validation."""
        return {}

    def forgetting_summary(self, metrics: dict) -> str:
        """One line: the task figure next to the forgetting figures (report, model card, end of the run)."""
        return ""

    def distill_forward(self, module, batch: dict):
        """A forward pass of `module` on `batch` (no loss) whose output `distill_outputs` reads."""
        raise ConfigError(f"regularize distill: task {self.name} has no outputs to distil")

    def distill_outputs(self, output, batch: dict):
        """(rows, kind) compared by distillation: kind `logits` (KL) or `embedding` (cosine); rows are the loss units."""
        raise ConfigError(f"regularize distill: task {self.name} has no outputs to distil")
