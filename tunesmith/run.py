"""A finished (or interrupted) run folder, and what can be done with it: predict, evaluate, list.

runs/<name>-<timestamp>/
  config.yaml  labels.json  run.json  metrics.json  history.jsonl  report.md
  confusion_matrix.png  training_curves.png  test_predictions.csv  model/  [checkpoints/]
"""

from __future__ import annotations

import csv
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from contextlib import nullcontext

import numpy as np
import torch

from .errors import DataError, RunError
from .utils import atomic_write_json, atomic_write_text


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class Prediction:
    label: str
    score: float
    probs: dict[str, float]


class Run:
    """A run folder. `Run(path).predict(["great movie"])` loads the model on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "run.json").is_file():
            raise RunError(f"{self.path}: not a tunesmith run folder (no run.json); `tunesmith runs` lists run folders")
        self.info: dict = read_json(self.path / "run.json")
        labels = self.path / "labels.json"  # generative runs have no labels
        self.label_names: list[str] = read_json(labels) if labels.is_file() else []
        self._model = None
        self._tokenizer = None

    @property
    def status(self) -> str:
        return self.info.get("status", "unknown")

    @property
    def metrics(self) -> dict:
        path = self.path / "metrics.json"
        return read_json(path) if path.is_file() else {}

    @functools.cached_property
    def config(self):
        """The resolved config of the run (read once)."""
        from .config import load_config

        return load_config(self.path / "config.yaml")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    # ---- model

    def _load(self):
        if self._model is not None:
            return
        if self.status != "complete" or not (self.path / "model").is_dir():
            raise RunError(f"{self.path}: the run is {self.status}, it has no saved model; resume it with `tunesmith train --resume {self.path}`")
        from transformers import AutoTokenizer

        from .models.loading import load_classifier, resolve_model
        from .strategies import build_strategy
        from .train.precision import choose_precision

        cfg = self.config
        strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
        self._tokenizer = AutoTokenizer.from_pretrained(self.path / "model")

        def load_base():
            if cfg.task != "text-classification":
                from .models.loading import load_generative

                return load_generative(resolve_model(cfg.model.name), cfg.task, cfg.model.revision, cfg.model.trust_remote_code,
                                       getattr(strategy.options, "quantize", "none"))
            return load_classifier(resolve_model(cfg.model.name), self.label_names, self._tokenizer.pad_token_id, cfg.model.revision,
                                   cfg.model.trust_remote_code, getattr(strategy.options, "quantize", "none"))

        self._model = strategy.load(self.path / "model", load_base).eval()
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(self._device)
        precision, _ = choose_precision("auto", self._device.type)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if dtype and cfg.task != "text-classification":
            self._model.to(dtype)  # inference only: weights in the compute dtype, no cast per generated token
        self._autocast = (lambda: torch.autocast(self._device.type, dtype=dtype)) if dtype else nullcontext

    # ---- generative runs

    def generate(self, prompts: list[str] | list[list[dict]], max_new_tokens: int | None = None, **overrides) -> list[str]:
        """Completions for prompts: strings (chat models: one user turn each) or message lists, rendered as in training."""
        import dataclasses

        from .generative.generation import generate_for

        cfg = self.config
        if cfg.task == "text-classification":
            raise RunError(f"{self.path}: a classification run; use predict, not generate")
        self._load()
        gen = dataclasses.replace(cfg.generate, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}), **overrides)
        return generate_for(self._model, self._tokenizer, [self.sample(p) for p in prompts], gen, cfg.task, self._autocast)

    def sample(self, prompt: str | list[dict]):
        """A prompt as the run's training rendered it: a chat turn for chat/instruction runs, raw text otherwise."""
        from .generative.formats import Sample

        fmt = self.info.get("data", {}).get("format")
        if isinstance(prompt, list):
            return Sample(0, messages=[*prompt, {"role": "assistant", "content": ""}])
        if self.config.task == "causal-lm" and fmt in ("chat", "instruction"):
            return Sample(0, messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}])
        return Sample(0, prompt=prompt, completion="")

    def predict_probs(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, one row per text, columns in `label_names` order."""
        from .data.batching import tokenize
        from .train.loop import Tokenized, predict_probs

        self._load()
        data = Tokenized(tokenize(self._tokenizer, list(texts), self.config.data.max_length), [0] * len(texts))
        return predict_probs(self._model, data, self._tokenizer.pad_token_id, batch_size, self._autocast)

    def predict(self, texts: str | list[str], batch_size: int = 64) -> list[Prediction]:
        """Label, its probability, and every label's probability, per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return []
        probs = self.predict_probs(texts, batch_size)
        out = []
        for row in probs:
            k = int(row.argmax())
            out.append(Prediction(self.label_names[k], float(row[k]), {n: float(p) for n, p in zip(self.label_names, row)}))
        return out

    def evaluate(self, data: str, text_column: str | None = None, label_column: str | None = None, save: bool = True) -> dict:
        """Metrics of this run's model on another labelled file (written to `evals/` in the run folder)."""
        from .data.loaders import load_table
        from .evaluate.metrics import classification_metrics

        if self.config.task != "text-classification":
            from .generative.pipeline import evaluate_generative

            metrics = evaluate_generative(self, data)
            if save:
                atomic_write_json(self.path / "evals" / f"{Path(data).stem}-{time.strftime('%Y%m%d-%H%M%S')}.json", metrics)
            return metrics
        cfg = self.config.data
        text_column, label_column = text_column or cfg.text_column, label_column or cfg.label_column
        df = load_table(data, "auto", cfg.encoding, cfg.encoding_errors)
        if isinstance(df, dict):
            df = df.get("test", next(iter(df.values())))
        for role, col in (("text", text_column), ("label", label_column)):
            if col not in df.columns:
                raise DataError(f"{data}: no {role} column '{col}' (columns: {', '.join(map(str, df.columns[:20]))}); pass --{role}-column")
        df = df.dropna(subset=[text_column, label_column])
        labels = df[label_column].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
        unseen = sorted(set(labels) - set(self.label_names))
        if unseen:
            raise DataError(f"{data}: labels {unseen} were not trained (the run knows {self.label_names}); remove those rows")
        index = {n: i for i, n in enumerate(self.label_names)}
        probs = self.predict_probs(df[text_column].astype(str).tolist())
        metrics = classification_metrics([index[y] for y in labels], probs, self.label_names)
        metrics["data"] = str(data)
        if save:
            atomic_write_json(self.path / "evals" / f"{Path(data).stem}-{time.strftime('%Y%m%d-%H%M%S')}.json", metrics)
        return metrics


def load_run(path: str | Path) -> Run:
    """A run folder, or a registered version: `models:/NAME@ALIAS` / `models:/NAME/VERSION` (registry at $MLFLOW_TRACKING_URI, default runs/mlflow.db)."""
    if str(path).startswith("models:/"):
        from .tracking.registry import resolve

        path = resolve(str(path))
    return Run(path)


def list_runs(output_dir: str | Path = "runs") -> list[Run]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir()) if (p / "run.json").is_file()]


def write_run_files(run_dir: Path, cfg, info: dict, metrics: dict, history: list[dict], splits, probs: np.ndarray) -> None:
    """metrics.json, history.jsonl, test_predictions.csv, plots and report.md (each written atomically)."""
    import pandas as pd

    from .evaluate.metrics import plot_confusion
    from .tracking.report import plot_history, write_report

    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    names = splits.label_names
    preds = pd.DataFrame({
        "text": splits.test.texts,
        "label": [names[i] for i in splits.test.labels],
        "predicted": [names[i] for i in probs.argmax(axis=1)],
        **{f"p_{n}": probs[:, k].round(5) for k, n in enumerate(names)},
    })
    # Quote every text: pandas leaves a field with a bare "\r" unquoted, and readers split the row there.
    atomic_write_text(run_dir / "test_predictions.csv", preds.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))
    plot_confusion(metrics["test"]["confusion_matrix"], names, run_dir / "confusion_matrix.png", f"{info['name']}: test")
    plot_history(history, cfg.train.metric, run_dir / "training_curves.png")
    write_report(run_dir, cfg, info, metrics)
    from .evaluate.markdown import add_to_report
    from .tracking.model_card import write_model_card

    add_to_report(run_dir, metrics)
    write_model_card(run_dir)


def export_run(run: Run, out: str | Path) -> Path:
    """A plain Hugging Face folder (adapters merged into the weights) that loads without tunesmith or PEFT."""
    from .strategies import build_strategy
    from .utils import atomic_dir

    run._load()
    cfg = run.config
    merged = build_strategy(cfg.strategy.name, cfg.strategy.options).merged(run._model)
    with atomic_dir(Path(out)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        run._tokenizer.save_pretrained(tmp)
    return Path(out)
