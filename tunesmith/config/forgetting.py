"""Config of forgetting: the reference sets that stand for what the model must keep (`eval.reference`), and the
remedies that keep it (`regularize`). No I/O here: files and runs are checked by the loader and the tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError


@dataclass
class ReferenceSet:
    """One item of `eval.reference`: what the original model could do, measured before and after training."""

    name: str = ""
    """Names the set in metrics.json (`forgetting.<name>`), the report and `regularize[].reference`."""
    path: str | None = None
    """A file (CSV, JSONL, Parquet; `pkg://` works). text-classification: texts (`text_column`) whose encoder
    representations are compared before/after (linear CKA, correlation of pairwise cosine similarities).
    causal-lm / seq2seq: samples in any data format (chat, instruction, completion, text): perplexity per trained
    token before/after, and with `generate` the generations scored against the samples' answers."""
    run: str | None = None
    """text-classification: a previous tunesmith run (task A of sequential fine-tuning: this run starts from its
    model). Its test rows are scored with this run's encoder and the run's own head retained (task-A retention)."""
    text_column: str | None = None
    """Column of the texts in `path` (default: data.text_column, else `text`)."""
    max_rows: int = 1000
    """At most this many rows (a seeded sample) are measured (and used by regularizers that read the set)."""
    generate: int = 0
    """causal-lm / seq2seq: generate for this many of the set's prompts before and after training and score them
    (contains the answer, exact match, ROUGE-L)."""

    def check(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"{where}: a reference set needs a `name` (e.g. name: general)")
        if bool(self.path) == bool(self.run):
            raise ConfigError(
                f"{where} ({self.name}): give `path` (a file of texts or samples) or `run` (a previous run), one of them"
            )
        if self.max_rows < 2:
            raise ConfigError(f"{where} ({self.name}): max_rows must be at least 2 (got {self.max_rows})")
        if self.generate < 0:
            raise ConfigError(f"{where} ({self.name}): generate must be 0 or more (got {self.generate})")


DEFAULT_WEIGHTS = {"l2sp": 0.1, "ewc": 0.1, "distill": 1.0}

# The keys each kind reads (beside `kind`); anything else set to a non-default value is a mistake.
REGULARIZER_KEYS = {
    "l2sp": {"weight"},
    "ewc": {"weight", "batches", "reference"},
    "distill": {"weight", "temperature", "inputs", "reference"},
    "replay": {"fraction", "reference"},
}


@dataclass
class Regularizer:
    """One item of `regularize`: a remedy against forgetting, added to the task loss (logged and plotted apart)."""

    kind: Literal["l2sp", "ewc", "distill", "replay"] = "l2sp"
    """`l2sp`: weight x squared distance of the trained weights from the pretrained ones (adapters: of the
    weight change they add, LoRA's B A); `ewc`: the same, each weight's term scaled by its Fisher information on
    a reference set (normalised to mean 1, so `weight` is on l2sp's scale); `distill`: weight x divergence of
    the model's outputs from the original model's (LMs: KL of the temperature-softened next-token
    distributions x T^2; encoders: 1 - cosine of the mean-pooled representations); `replay`: `fraction` of every
    optimizer step's rows drawn from a reference set and trained on with the task loss."""
    weight: float | None = None
    """Scale of the penalty; default l2sp 0.1, ewc 0.1, distill 1.0 (on MiniLM full fine-tuning these kept most of
    an earlier task at a small cost to the new one; 1.0 for l2sp/ewc stopped the new task from being learned)."""
    batches: int = 50
    """ewc: reference batches (of 4 examples, each example's gradient apart) the Fisher is estimated on before
    training; saved in the run folder (a resumed run reads it)."""
    temperature: float = 2.0
    """distill: softmax temperature of the LM distributions compared."""
    inputs: Literal["train", "reference"] = "train"
    """distill: compare outputs on the training batches (no extra forward pass of the model being trained) or on
    a batch of a reference set each step. (Not `on:`: YAML reads an unquoted `on` key as true.)"""
    fraction: float = 0.1
    """replay: share of each optimizer step's rows that come from the reference set (0 < fraction < 1)."""
    reference: str | None = None
    """The `eval.reference` set it reads (ewc, distill on reference, replay); default: the first that suits
    (text-classification ewc and replay need a `run:` set: a previous task's labelled rows and head)."""

    def check(self, where: str, references: list[ReferenceSet]) -> None:
        default = Regularizer(kind=self.kind)
        stray = [
            k
            for k in ("weight", "batches", "temperature", "inputs", "fraction", "reference")
            if k not in REGULARIZER_KEYS[self.kind] and getattr(self, k) != getattr(default, k)
        ]
        if stray:
            raise ConfigError(
                f"{where}: {stray[0]} does not apply to kind {self.kind} "
                f"(it reads {', '.join(sorted(REGULARIZER_KEYS[self.kind]))}); remove it"
            )
        if self.weight is not None and self.weight < 0:
            raise ConfigError(f"{where}: weight must be 0 or more (got {self.weight})")
        if self.batches < 1:
            raise ConfigError(f"{where}: batches must be at least 1 (got {self.batches})")
        if self.temperature <= 0:
            raise ConfigError(f"{where}: temperature must be positive (got {self.temperature})")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"{where}: fraction must be between 0 and 1, e.g. 0.1 (got {self.fraction})")
        names = [r.name for r in references]
        if self.reference is not None and self.reference not in names:
            known = f"the sets are {', '.join(names)}" if names else "there is no eval.reference set"
            raise ConfigError(f"{where}: reference '{self.reference}' is not an eval.reference set ({known})")
        if self.needs_reference and not references:
            raise ConfigError(
                f"{where}: {self.kind} reads a reference set; add one to eval.reference "
                f"(e.g. - {{name: general, path: data/general-chat.jsonl}})"
            )

    @property
    def strength(self) -> float:
        """The penalty's weight: the one given, else the kind's default."""
        return self.weight if self.weight is not None else DEFAULT_WEIGHTS.get(self.kind, 0.0)

    @property
    def needs_reference(self) -> bool:
        return self.kind in ("ewc", "replay") or (self.kind == "distill" and self.inputs == "reference")


def check_forgetting(references: list[ReferenceSet], regularize: list[Regularizer]) -> None:
    names = [r.name for r in references]
    for i, ref in enumerate(references):
        ref.check(f"eval.reference[{i}]")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"eval.reference: the name '{dup[0]}' is used twice; give every set its own name")
    for i, reg in enumerate(regularize):
        reg.check(f"regularize[{i}] ({reg.kind})", references)
    kinds = [r.kind for r in regularize]
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise ConfigError(f"regularize: kind {twice[0]} is listed twice; keep one (with the weight you want)")
