"""The config schema: typed sections whose field docstrings are the reference documentation.

Each section validates itself (`check()`): no I/O and no mutation happen here. Cross-section rules
are in `Config.check`. Which keys belong to which task is declared by the tasks (`Task.uses`) over
the task-specific keys listed in `TASK_KEYS`; the loader (`config/loader.py`) enforces it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..errors import ConfigError
from .distributed import FsdpConfig
from .forgetting import ReferenceSet, Regularizer, check_forgetting
from .hygiene import AuditConfig, AugmentConfig, PrepareConfig
from .images import ImagesConfig
from .multitask import MixSource, MultiTaskConfig, check_mix
from .preference import GRPOConfig, PreferenceConfig, RewardSpec
from .tune import TuneConfig


@dataclass
class DataConfig:
    path: str | None = None
    """One data file (CSV, JSONL, Parquet) or saved `datasets` folder; tunesmith splits it into
    train/validation/test, stratified by label. `pkg://<package>/<file>` reads a file that ships
    inside an installed Python package."""
    train: str | None = None
    """Explicit training file (instead of `path`). Missing validation/test sets are split from it."""
    validation: str | None = None
    """Explicit validation file (used for early stopping and the best checkpoint)."""
    test: str | None = None
    """Explicit test file (evaluated once, at the end, with the best checkpoint)."""
    format: Literal["auto", "csv", "jsonl", "parquet", "hf"] = "auto"
    """File format; `auto` decides by suffix (a folder is a saved `datasets` dataset)."""
    text_column: str = "text"
    """Column holding the input text."""
    label_column: str = "label"
    """Column holding the class label (strings or integers)."""
    labels: list[str] | None = None
    """Label names in the order of the model's outputs; default: sorted labels of the training set."""
    normalize_labels: bool = False
    """Labels that differ only in case, surrounding/inner spaces or Unicode form ("COMPUTERS " vs "computers")
    stop the run with their counts; `true` merges each group into its most common spelling (or its data.labels
    spelling) and says so."""
    validation_size: float = 0.1
    """Share of rows held out for validation when it is split from the data."""
    test_size: float = 0.1
    """Share of rows held out for testing when it is split from the data."""
    max_samples: int | None = None
    """Stratified subsample of the data to this many rows before splitting (quick experiments)."""
    encoding: str = "utf-8"
    """Text encoding of CSV/JSONL files."""
    delimiter: str | None = None
    """CSV field delimiter; default: `,` (tab for .tsv), and a file that does not parse that way is sniffed for
    `;`, tab or `|` (the run's data notes say what was used)."""
    encoding_errors: Literal["strict", "replace"] = "strict"
    """`strict` stops at the first undecodable byte (with its line); `replace` substitutes U+FFFD."""
    max_length: int = 128
    """Tokens per example after truncation. Batches are padded to their longest member, never to this."""
    group_near_duplicates: bool = True
    """When validation/test are split from the data, keep exact and near duplicates (audit.near_threshold) on
    one side, so the split cannot leak them."""
    group_column: str | None = None
    """Column naming the source of each row (user, document, ...): all rows of one group land in one split."""
    sample_format: Literal["auto", "chat", "instruction", "completion", "text"] = "auto"
    """Generative tasks: `chat` (a `messages` list of {role, content}), `instruction` (instruction, optional
    input, output), `completion` (prompt, completion), `text` (plain text, every token trains); `auto`
    decides by the columns present."""
    messages_column: str = "messages"
    """Chat format: the column holding the list of {role, content} messages."""
    prompt_column: str = "prompt"
    """Completion format (and seq2seq): the input column."""
    completion_column: str = "completion"
    """Completion format (and seq2seq): the target column."""
    add_eos: bool = True
    """Append the end-of-sequence token to every completion (and train it) where the template does not."""
    long_samples: Literal["error", "drop"] = "error"
    """Samples whose completion does not fit in `max_length`: `error` stops (lint), `drop` leaves them out."""
    packing: bool = False
    """Causal LM: pack several short samples into one row of `max_length` tokens (positions restart per
    sample and samples cannot attend to each other); falls back to length-grouped padding when the
    model's attention cannot keep packed samples apart."""
    mix: list[MixSource] | None = None
    """Generative tasks: several weighted files instead of `path`, `- {path: a.jsonl, weight: 0.7}`. Each is split
    with the shares above; training draws batches from the sources by weight, in a fresh order per epoch (a small
    source repeats, a large one is subsampled), and the run reports the realised shares and per-source test loss."""


@dataclass
class TaskSpec:
    data: DataConfig = field(default_factory=DataConfig)
    """The task's data: a `data:` section (path or train/validation/test, columns, shares, ...) over the top-level
    `data:` (whose settings are every task's defaults)."""
    task: Literal["text-classification"] = "text-classification"
    """What the task learns: a label per text, from its own head on the shared backbone."""
    weight: float = 1.0
    """Its loss is multiplied by this (each task's loss is its mean per example, as a single-task run's would be)."""
    auxiliary: bool = False
    """Trained and reported, but not the selection metric: early stopping and the best checkpoint follow the other
    (primary) tasks."""
    metric_weight: float = 1.0
    """A primary task's share of the selection metric (the weighted mean of the primary tasks' validation metric)."""


@dataclass
class ModelConfig:
    name: str = "minilm"
    """A packaged alias (`minilm`, `smollm2-135m-instruct`), a local Hugging Face folder, a `.gguf` file
    (converted once to a cached HF folder), or a hub id (needs a network)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository to run (only for models you trust)."""
    chat_template: str | None = None
    """Generative tasks: the chat template for training AND inference: null = the tokenizer's own (else
    tunesmith's documented default), `default` = tunesmith's, or a Jinja template string / file path."""


@dataclass
class StrategyConfig:
    """Which parameters train and how; `name` picks the strategy, the other keys are its options."""

    name: str = "full"
    """A registered strategy: see `tunesmith strategies`."""
    options: Any = None
    """The strategy's own options dataclass (the other keys of the `strategy:` section)."""


@dataclass
class TrainConfig:
    epochs: float = 3.0
    """Passes over the training set (fractions allowed); `max_steps` wins when set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    batch_size: int = 32
    """Examples per process per micro-batch. Global batch = batch_size x grad_accum x processes."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimizer step (loss normalised over the whole step)."""
    lr: float = 5e-5
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.01
    """AdamW weight decay; never applied to biases and normalisation weights."""
    warmup_ratio: float = 0.06
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warmup."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """`auto`: bf16 where the hardware runs it fast (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), fp16 with
    loss scaling on older GPUs, else fp32."""
    eval_every: int | None = None
    """Evaluate (and checkpoint) every N optimizer steps; null: at the end of every epoch."""
    metric: str = "auto"
    """Validation metric for early stopping and the best checkpoint (`loss`/`perplexity` are minimised, others
    maximised); `auto`: macro_f1 for classification, loss for generative tasks."""
    patience: int | None = 3
    """Stop after this many evaluations without improvement; null disables early stopping."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding, faster)."""
    log_every: int = 10
    """Log training loss and learning rate every N optimizer steps."""
    keep_checkpoints: bool = False
    """Keep `checkpoints/` in the run folder after a successful run (needed only to resume)."""
    class_weights: Literal["none", "balanced"] = "none"
    """`balanced`: weight the loss by n_rows / (n_classes x rows_of_class) against class imbalance."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: much less memory for ~30% more time."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """With several processes (torchrun): `ddp` replicates the model; `fsdp` shards it (`train.fsdp`; full, freeze
    and lora strategies). One process ignores it."""
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)


@dataclass
class EvalConfig:
    batch_size: int = 128
    """Examples per process per evaluation batch."""
    baseline: bool = True
    """Also fit a TF-IDF + logistic-regression baseline on the same split and report it side by side."""
    ci_level: float = 0.95
    """Confidence level of the bootstrap intervals reported beside every headline test metric."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples per interval (and permutations per significance test in `tunesmith compare`)."""
    sets: dict[str, str] | None = None
    """Extra labelled evaluation sets, `{name: file}` (e.g. `{ood: data/other.csv}`), each evaluated with the
    best weights and reported separately; same text/label columns as `data`."""
    slice_by: list[str] = field(default_factory=list)
    """Columns of the test data to report the test metric per value of (the worst slice and its gap are flagged)."""
    length_buckets: int = 3
    """Built-in slice: test texts cut into this many word-count buckets of similar size; 0 turns it off."""
    min_slice_size: int = 20
    """Slices with fewer test items are reported but never named the worst slice (too noisy)."""
    sensitive_column: str | None = None
    """A column of the test data holding a sensitive attribute: demographic-parity and equalized-odds
    differences (fairlearn, one-vs-rest per class) across its values."""
    calibration: bool = True
    """Expected calibration error and a reliability diagram of the test predictions."""
    temperature_scaling: bool = True
    """Fit a softmax temperature on the validation set and report the test calibration after scaling."""
    robustness: bool = True
    """Evaluate on perturbed test texts (typos, upper case, no punctuation, dropped words); report each drop."""
    robustness_samples: int = 500
    """Test items (stratified sample) used per perturbation; 0 = all."""
    efficiency: bool = True
    """Measure inference latency (batch 1, p50/p95), throughput (batch 32), size on disk and peak memory."""
    efficiency_batches: int = 32
    """Timed batch-1 calls (and a quarter as many batch-32 calls) for the efficiency figures."""
    reference: list[ReferenceSet] = field(default_factory=list)
    """Reference sets that stand for what the model must keep (forgetting), each measured with the original model
    before training and with the result after: `- {name: general, path: data/reference-text.csv}` (see below)."""
    reference_every_eval: bool = False
    """Also measure the reference sets at every validation: a forgetting curve in training_curves.png."""

    def check(self) -> None:
        if not 0.5 <= self.ci_level < 1:
            raise ConfigError(f"eval.ci_level must be in [0.5, 1) (got {self.ci_level}); e.g. 0.95")
        for key in ("bootstrap_resamples", "efficiency_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be at least 1 (got {getattr(self, key)})")
        for key in ("length_buckets", "min_slice_size", "robustness_samples"):
            if getattr(self, key) < 0:
                raise ConfigError(f"eval.{key} must be 0 or more (got {getattr(self, key)})")
        if self.sets is not None and (
            not isinstance(self.sets, dict) or not all(isinstance(v, str) for v in self.sets.values())
        ):
            raise ConfigError(f"eval.sets must map names to files, e.g. {{ood: data/other.csv}} (got {self.sets!r})")


@dataclass
class GenerateConfig:
    max_new_tokens: int = 128
    """Generative tasks: the most tokens generated per prompt."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 0.7
    """Sampling temperature (with do_sample)."""
    top_p: float = 0.9
    """Nucleus sampling share (with do_sample)."""
    samples: int = 64
    """Held-out test prompts generated and scored at the end of a run (and before training); 0 = none."""
    before: bool = True
    """Also generate with the model before fine-tuning, for the before/after table in the report."""
    batch_size: int = 16
    """Prompts generated together."""
    json_keys: list[str] | None = None
    """Structured outputs: score the share of generations that parse as a JSON object with these keys, and
    the exact match of each key's value against the reference."""


@dataclass
class TrackingConfig:
    backend: Literal["mlflow", "none"] = "mlflow"
    """Where runs are tracked in addition to the run folder."""
    uri: str | None = None
    """MLflow tracking URI; default: an embedded SQLite store `<output_dir>/mlflow.db`."""
    experiment: str = "tunesmith"
    """MLflow experiment name."""


@dataclass
class Config:
    name: str = "run"
    """Run name; the run folder is `<output_dir>/<name>-<timestamp>`."""
    task: str | None = None
    """What the model learns (null: text classification): a registered task (`tunesmith tasks` lists them: `text-classification`, a label per
    text; `causal-lm`, a decoder-only model's continuation (chat/instruction SFT, continued pre-training);
    `seq2seq`, an encoder-decoder's target sequence) or `module:Class` for a task of your own."""
    output_dir: str = "runs"
    """Folder that holds run folders (and the default MLflow store)."""
    seed: int = 42
    """Seed for splitting, initialisation, shuffling and dropout."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    """Data audit run before training (see `tunesmith data audit`)."""
    images: ImagesConfig = field(default_factory=ImagesConfig)
    """Image classification: the image column, the size the model sees, augmentation, decoding workers."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """Settings of `tunesmith data prepare` (cleaning, balancing, grouped splits, augmentation)."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """`tunesmith tune`: the search space (dotted keys -> distributions, conditional with `when`), the number of
    trials, sampler, pruner, a second objective and how the winner is checked on test (docs/tune.md)."""
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    """Task multi-task: the tasks trained together on one backbone, each with its own head, data, weight and
    metrics: `{sentiment: {data: {path: a.csv}}, topic: {data: {path: b.csv}, weight: 0.5, auxiliary: true}}`."""
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    """Task multi-task: how batches are drawn from the tasks and how their losses are weighted."""
    regularize: list[Regularizer] = field(default_factory=list)
    """Remedies against forgetting, any combination, with every strategy:
    `- {kind: l2sp, weight: 0.1}`, `- {kind: ewc, reference: NAME}`, `- {kind: distill, weight: 1.0, inputs: train}`,
    `- {kind: replay, fraction: 0.1}` (see below)."""
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """Task preference: the loss (dpo, ipo, orpo, kto, simpo), its beta, and the reference model."""
    reward: list[RewardSpec] = field(default_factory=list)
    """Task reward-tuning: the reward components, a weighted sum: `- {kind: json_schema, keys: [name]}`, `- {kind: python, fn: "m:f"}`."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Task reward-tuning: completions per prompt, the KL weight and sampling of GRPO."""

    def check(self) -> None:
        """Cross-field rules that no single field can check."""
        self.audit.check()
        self.prepare.check()
        self.eval.check()
        self.images.check()
        self.tune.check()
        self.preference.check()
        self.grpo.check()
        check_forgetting(self.eval.reference, self.regularize)
        d, t = self.data, self.train
        if d.path and (d.train or d.validation or d.test):
            raise ConfigError(
                "data: set either `path` (one file, split for you) or `train`/`validation`/`test`, not both"
            )
        self.multitask.check()
        check_mix(d.mix, bool(d.path or d.train or d.validation or d.test))
        if not d.path and not d.train and not d.mix and not self.tasks:
            raise ConfigError(
                "data: no data given; set data.path (one file) or data.train (plus optional validation/test)"
            )
        if not (0 <= d.validation_size < 1 and 0 <= d.test_size < 1 and d.validation_size + d.test_size < 1):
            raise ConfigError("data.validation_size + data.test_size must be below 1 (each between 0 and 1)")
        if d.max_length < 8:
            raise ConfigError(f"data.max_length={d.max_length} is too short; use at least 8 tokens")
        if d.delimiter is not None and len(d.delimiter) != 1:
            raise ConfigError(f"data.delimiter={d.delimiter!r} must be one character, e.g. ';' or a tab ('\\t')")
        for key, value in [("batch_size", t.batch_size), ("grad_accum", t.grad_accum), ("log_every", t.log_every)]:
            if value < 1:
                raise ConfigError(f"train.{key} must be at least 1 (got {value})")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be positive (got {t.lr})")
        if t.max_steps is None and t.epochs <= 0:
            raise ConfigError("train.epochs must be positive (or set train.max_steps)")
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1) (got {t.warmup_ratio})")
        if t.patience is not None and t.patience < 1:
            raise ConfigError("train.patience must be at least 1, or null to disable early stopping")
        g = self.generate
        if g.max_new_tokens < 1 or g.samples < 0 or g.batch_size < 1:
            raise ConfigError("generate: max_new_tokens and batch_size must be at least 1, samples at least 0")


def suggest(word: str, choices) -> str:
    """'; did you mean X?' for the closest of `choices`, else the list of valid ones."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(sorted(choices))}"


# Keys that only some tasks read. A task lists the ones it uses in `Task.uses` ("data.packing", "generate.*");
# setting any other of these to a non-default value is an error that names the task.
TASK_KEYS: dict[str, set[str]] = {
    "data": set(
        "label_column labels normalize_labels sample_format messages_column prompt_column completion_column add_eos "
        "long_samples packing mix".split()
    ),
    "model": {"chat_template"},
    "train": {"class_weights"},
    "images": {"column", "size", "augment", "workers", "min_size", "max_pixels", "bad_images"},
    "eval": set(
        "baseline ci_level bootstrap_resamples sets slice_by length_buckets min_slice_size sensitive_column calibration "
        "temperature_scaling robustness robustness_samples efficiency efficiency_batches".split()
    ),
    "generate": {f.name for f in fields(GenerateConfig)},
    "preference": {f.name for f in fields(PreferenceConfig)},
    "grpo": {f.name for f in fields(GRPOConfig)},
}


__all__ = [
    "AuditConfig",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "ModelConfig",
    "PrepareConfig",
    "ReferenceSet",
    "Regularizer",
    "StrategyConfig",
    "TASK_KEYS",
    "TrackingConfig",
    "TaskSpec",
    "TrainConfig",
    "suggest",
]
