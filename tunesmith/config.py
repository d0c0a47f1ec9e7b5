"""Run configuration: typed dataclasses filled from YAML plus dotted CLI overrides.

Everything is validated here, before any heavy work: an unknown key names the file, the line and
the closest valid key; a wrong type names the expected one. Field docstrings are the reference
documentation of each setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError


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
    validation_size: float = 0.1
    """Share of rows held out for validation when it is split from the data."""
    test_size: float = 0.1
    """Share of rows held out for testing when it is split from the data."""
    max_samples: int | None = None
    """Stratified subsample of the data to this many rows before splitting (quick experiments)."""
    encoding: str = "utf-8"
    """Text encoding of CSV/JSONL files."""
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

    def check(self) -> None:
        if not 0.5 <= self.ci_level < 1:
            raise ConfigError(f"eval.ci_level must be in [0.5, 1) (got {self.ci_level}); e.g. 0.95")
        for key in ("bootstrap_resamples", "efficiency_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be at least 1 (got {getattr(self, key)})")
        for key in ("length_buckets", "min_slice_size", "robustness_samples"):
            if getattr(self, key) < 0:
                raise ConfigError(f"eval.{key} must be 0 or more (got {getattr(self, key)})")
        if self.sets is not None and (not isinstance(self.sets, dict) or not all(isinstance(v, str) for v in self.sets.values())):
            raise ConfigError(f"eval.sets must map names to files, e.g. {{ood: data/other.csv}} (got {self.sets!r})")
        from .utils import resolve_path

        for name, spec in (self.sets or {}).items():
            if not resolve_path(spec).exists():
                raise ConfigError(f"eval.sets.{name}: file {spec} not found; fix the path (relative paths start at {Path.cwd()})")


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
    task: Literal["text-classification", "causal-lm", "seq2seq"] = "text-classification"
    """What the model learns: a label per text, a decoder-only model's continuation (chat/instruction SFT,
    continued pre-training), or an encoder-decoder's target sequence."""
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
    audit: AuditConfig = field(default_factory=lambda: AuditConfig())
    """Data audit run before training (see `tunesmith data audit`)."""
    prepare: PrepareConfig = field(default_factory=lambda: PrepareConfig())
    """Settings of `tunesmith data prepare` (cleaning, balancing, grouped splits, augmentation)."""

    def check(self) -> None:
        """Cross-field rules that no single field can check."""
        self.audit.check()
        self.prepare.check()
        self.eval.check()
        d, t = self.data, self.train
        if d.path and (d.train or d.validation or d.test):
            raise ConfigError("data: set either `path` (one file, split for you) or `train`/`validation`/`test`, not both")
        if not d.path and not d.train:
            raise ConfigError("data: no data given; set data.path (one file) or data.train (plus optional validation/test)")
        if not (0 <= d.validation_size < 1 and 0 <= d.test_size < 1 and d.validation_size + d.test_size < 1):
            raise ConfigError("data.validation_size + data.test_size must be below 1 (each between 0 and 1)")
        if d.max_length < 8:
            raise ConfigError(f"data.max_length={d.max_length} is too short; use at least 8 tokens")
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
        from .evaluate.metrics import METRIC_NAMES

        names = METRIC_NAMES if self.task == "text-classification" else ["loss", "perplexity"]
        if t.metric == "auto":
            t.metric = "macro_f1" if self.task == "text-classification" else "loss"
        if t.metric not in names:
            raise ConfigError(f"train.metric: unknown metric '{t.metric}' for task {self.task}{_suggest(t.metric, names)}")
        g = self.generate
        if g.max_new_tokens < 1 or g.samples < 0 or g.batch_size < 1:
            raise ConfigError("generate: max_new_tokens and batch_size must be at least 1, samples at least 0")


# --------------------------------------------------------------------------------------------
# YAML + overrides -> Config


def load_config(source: str | Path | dict | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from a YAML file (or a dict) plus `a.b=value` overrides."""
    where = "config"
    lines: dict[tuple, int] = {}
    if source is None:
        raw: dict = {}
    elif isinstance(source, dict):
        raw = _deep_copy(source)
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; check the path (relative paths start at {Path.cwd()})")
        text = path.read_text(encoding="utf-8")
        try:
            raw = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" line {mark.line + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}{at}: malformed YAML ({problem}); fix the indentation/quoting there") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = _build(Config, raw, (), where, lines)
    cfg.check()
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain dict for YAML/MLflow, with the strategy options flattened next to `name`."""
    out = dataclasses.asdict(dataclasses.replace(cfg, strategy=StrategyConfig(cfg.strategy.name)))
    opts = cfg.strategy.options
    out["strategy"] = {"name": cfg.strategy.name, **(dataclasses.asdict(opts) if opts is not None else {})}
    return out


def save_config(cfg: Config, path: Path) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=3e-4")
    key, _, value_text = item.partition("=")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, path: tuple, where: str, lines: dict) -> Any:
    name = ".".join(path) or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(where, lines, path)}'{name}' must be a mapping, got {type(raw).__name__}")
    if cls is StrategyConfig:
        return _build_strategy(raw, path, where, lines)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"{_at(where, lines, path + (key,))}unknown key '{key}' in {name}{_suggest(str(key), fields)}"
            )
        values[key] = _coerce(value, hints[key], path + (key,), where, lines)
    for key, f in fields.items():  # nested sections that were not given still get built
        if key not in values and dataclasses.is_dataclass(hints[key]):
            values[key] = _build(hints[key], {}, path + (key,), where, lines)
    return cls(**values)


def _build_strategy(raw: dict, path: tuple, where: str, lines: dict) -> StrategyConfig:
    from .strategies.registry import get_strategy_class, strategy_names

    raw = dict(raw)
    name = raw.pop("name", "full")
    if not isinstance(name, str):
        raise ConfigError(f"{_at(where, lines, path + ('name',))}strategy.name must be a string")
    try:
        cls = get_strategy_class(name)
    except KeyError:
        raise ConfigError(
            f"{_at(where, lines, path + ('name',))}unknown strategy '{name}'{_suggest(name, strategy_names())}; "
            f"`tunesmith strategies` lists them"
        ) from None
    options = _build(cls.Options, raw, path, where, lines)
    return StrategyConfig(name=name, options=options)


def _coerce(value: Any, tp: Any, path: tuple, where: str, lines: dict) -> Any:
    key = ".".join(path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], path, where, lines)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, where, lines)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{_at(where, lines, path)}{key}={value!r} is not one of {', '.join(map(str, choices))}"
                f"{_suggest(str(value), [str(c) for c in choices])}"
            )
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{_at(where, lines, path)}{key} must be a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, path, where, lines) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{_at(where, lines, path)}{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(sorted(choices))}"


def _at(where: str, lines: dict, path: tuple) -> str:
    line = lines.get(path)
    return f"{where} line {line}: " if line else f"{where}: "


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path of a composed YAML document to its 1-based line number."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, path))
    return out


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


# Imported last: these modules import DataConfig from this (by then complete) module.
from .data.audit import AuditConfig  # noqa: E402
from .data.prepare import PrepareConfig  # noqa: E402
