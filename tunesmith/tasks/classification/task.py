"""Text classification: a label per text, a classification head on a pretrained encoder (or decoder).

data -> audit (duplicates, near duplicates, leakage, label errors) -> leak-proof stratified split ->
cross-entropy -> validation macro-F1 (or another metric) -> test metrics with intervals, the TF-IDF
baseline beside them, slices, calibration, robustness, efficiency -> report, model card, predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data.audit import audit_splits
from ...data.balance import class_weights
from ...data.label_noise import label_errors_line
from ...data.splits import Splits, load_splits
from ...engine.precision import choose_precision, compute_dtype
from ...errors import DataError
from ...evaluate.baseline import tfidf_baseline
from ...evaluate.metrics import METRIC_NAMES, classification_metrics, headline
from ...evaluate.slices import column_values
from ...models.features import text_embedder, text_features
from ...models.loading import load_classifier
from ...tracking.classification import classification_brief, classification_tracked, write_classification_outputs
from ..base import Findings, Prediction, Predictor, Task, TaskData
from .batches import Tokenized, cross_entropy_sum, predict_probs, tokenize
from .evaluation import extended_evaluation, load_labelled
from .forgetting import REFERENCE_HINT, load_references, measure_after, measure_before, summary


class ClassificationTask(Task):
    name = "text-classification"
    summary = "A label per text: sentiment, topic, intent, spam, ... (a classification head on a pretrained encoder)."
    metrics = ("macro_f1", *[m for m in METRIC_NAMES if m != "macro_f1"])
    uses = frozenset({"data.label_column", "data.labels", "data.normalize_labels", "train.class_weights", "eval.*"})
    supports_cv = True
    supports_compare = True
    serves = frozenset({"classify"})

    # ---- data
    def load_data(self) -> TaskData:
        splits = load_splits(self.cfg.data, self.cfg.seed, self.cfg.audit)  # near duplicates as the audit sees them
        self._check_slice_columns()
        return TaskData(splits, splits.summary(), splits.label_names, splits.notes)

    def _check_slice_columns(self) -> None:
        """eval.slice_by / eval.sensitive_column name columns of the test data: a typo stops the run before training."""
        ev = self.cfg.eval
        columns = [*ev.slice_by, *([ev.sensitive_column] if ev.sensitive_column else [])]
        if columns:
            column_values(self.cfg.data, [], columns)

    def check_data(self, data: TaskData, tokenizer, source=None) -> Findings:
        """The audit; leakage between train and validation/test stops the run (unless allowed).

        With `source` (the model about to be fine-tuned), the label-error model also reads its frozen features.
        """
        if not self.cfg.audit.enabled:
            return Findings()
        said: list[str] = []
        embed = None
        if source is not None and self.cfg.audit.label_errors and self.cfg.audit.label_error_model == "auto":
            m, device = self.cfg.model, "cuda" if torch.cuda.is_available() else "cpu"
            precision, _ = choose_precision(self.cfg.train.precision, device)
            embed = text_embedder(
                source,
                tokenizer,
                self.cfg.data.max_length,
                Path(self.cfg.output_dir) / ".cache" / "features",
                m.revision,
                m.trust_remote_code,
                compute_dtype(precision),
                log=said.append,
            )
        report = audit_splits(
            data.splits,
            self.cfg.audit,
            tokenizer=tokenizer,
            max_length=self.cfg.data.max_length,
            embed=embed,
            embed_name=f"{self.cfg.model.name} features",
            stop_at_leakage=True,
        )
        if report.blocking:
            raise DataError(f"{report.blocking[0]} (or pass --allow-leakage)")
        c, errors = report.counts(), label_errors_line(report.label_noise)
        line = (
            f"audit: {c.get('train.exact_duplicate_rows', 0)} duplicate rows, {c.get('train.near_duplicate_clusters', 0)} "
            f"near-duplicate clusters, {errors}; no leakage between splits (audit.md in the run folder)"
        )
        return Findings(
            lines=[*said, line, *[f"audit: {w}" for w in report.warnings[:5]]],
            record={"audit": c},
            metrics={f"audit.{k}": v for k, v in c.items() if isinstance(v, (int, float))},
            save=lambda run_dir: report.save(run_dir, "audit"),
        )

    # ---- model
    def load_model(self, source, tokenizer, strategy, labels: list[str]):
        m = self.cfg.model
        return load_classifier(
            source, labels, tokenizer.pad_token_id, m.revision, m.trust_remote_code, strategy.quantize
        )

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        s: Splits = data.splits
        self._tokenizer, self._label_names, self._weights = tokenizer, s.label_names, None
        if self.cfg.train.class_weights != "none":  # n_rows / (n_classes x rows of the class), against imbalance
            weights = class_weights([s.label_names[y] for y in s.train.labels], s.label_names)
            self._weights = torch.tensor(weights, dtype=torch.float32)
        return {
            split.name: Tokenized(
                tokenize(tokenizer, split.texts, self.cfg.data.max_length),
                split.labels,
                tokenizer.pad_token_id,
                split.fingerprint(),
            )
            for split in (s.train, s.validation, s.test)
        }

    @property
    def class_weights(self) -> torch.Tensor | None:
        """The loss's per-class weights (train.class_weights: balanced), known once the data is encoded."""
        return self._weights

    def loss(self, model, inputs: dict):
        return cross_entropy_sum(model, inputs, self._weights)

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        data = batches["validation"]
        probs = predict_probs(model, data, self.cfg.eval.batch_size, ctx.autocast, ctx.rank, ctx.world)
        return classification_metrics(data.targets, probs, self._label_names)

    # ---- after training
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        s, ev = data.splits, self.cfg.eval
        probs = predict_probs(trained, batches["test"], ev.batch_size, ctx.autocast, ctx.rank, ctx.world)
        if not ctx.is_main:
            return {}
        self._probs = probs
        test = classification_metrics(s.test.labels, probs, s.label_names)
        baseline = None
        if ev.baseline:
            baseline = tfidf_baseline(
                s.train.texts, s.train.labels, s.test.texts, s.test.labels, s.label_names, self.cfg.seed
            )
        metrics = {"test": test, "baseline": {"name": "tfidf-logreg", "test": baseline} if baseline else None}
        # intervals, extra sets, slices, calibration, robustness, efficiency
        metrics.update(
            extended_evaluation(
                self.cfg, ctx.run_dir, model, trained, batches, self._tokenizer, s, probs, ctx.acc, ctx.say
            )
        )
        return metrics

    def write_artifacts(self, run_dir, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx) -> None:
        """metrics.json, history.jsonl, labels.json, test_predictions.csv, plots, report.md, MODEL_CARD.md (each atomic)."""
        super().write_artifacts(run_dir, metrics, history, data, info, ctx)
        s = data.splits
        write_classification_outputs(
            run_dir, self.cfg, info, metrics, data.labels, "text", s.test.texts, s.test.labels, self._probs
        )

    def headline(self, metrics: dict) -> dict[str, float]:
        return headline(metrics.get("test") or {})

    def tracked(self, metrics: dict) -> dict[str, float]:
        return classification_tracked(metrics)

    def brief(self, metrics: dict) -> str:
        return classification_brief(metrics)

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        t, test, base = info["timings"], metrics["test"], (metrics.get("baseline") or {}).get("test")
        lines = [
            "",
            f"{'':22}{'macro-F1':>10}{'accuracy':>10}",
            f"{'test (fine-tuned)':22}{test['macro_f1']:>10.4f}{test['accuracy']:>10.4f}",
        ]
        if base:
            lines.append(f"{'test (TF-IDF + LR)':22}{base['macro_f1']:>10.4f}{base['accuracy']:>10.4f}")
            gap = 100 * (test["macro_f1"] - base["macro_f1"])
            lines.append(
                f"fine-tuned model {'beats' if gap > 0 else 'trails'} the baseline by {abs(gap):.1f} macro-F1 points"
            )
        lines.append(
            f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.0f} samples/s, peak memory {t['peak_rss_mb']:.0f} MB"
        )
        return lines

    def predictor(self, run) -> Predictor:
        return ClassificationPredictor(run)

    # ---- forgetting (forgetting.py): representation drift on reference texts, retention of an earlier task
    reference_hint = REFERENCE_HINT
    distill_flags = {"output_hidden_states": True}

    def references(self, model, tokenizer, ctx) -> dict:
        return load_references(self.cfg, model, tokenizer)

    def forgetting_before(self, model, references: dict, ctx) -> dict:
        return measure_before(model, self._tokenizer, references, ctx) if ctx.is_main and references else {}

    def forgetting_after(self, model, trained, references: dict, before: dict, ctx) -> dict:
        if not ctx.is_main or not references:
            return {}
        return measure_after(model, self._tokenizer, references, before, ctx)

    def forgetting_curve(self, model, references: dict, before: dict, ctx) -> dict:
        if not references or not ctx.is_main:
            return {}
        now = measure_after(model, self._tokenizer, references, before, ctx, intervals=False)
        out = {}
        for name, m in now.items():
            out.update({f"ref_{name}_cka": m["cka"]} if m["kind"] == "drift" else {f"ref_{name}_macro_f1": m["after"]})
        return out

    def forgetting_summary(self, metrics: dict) -> str:
        return summary(metrics.get("test") or {}, {k: v for k, v in metrics["forgetting"].items() if k != "summary"})

    def distill_forward(self, module, batch: dict):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return module(**inputs, output_hidden_states=True)

    def distill_outputs(self, output, batch: dict):
        """The mean-pooled last hidden state (the representation the drift measure compares), one row per example."""
        hidden, mask = output.hidden_states[-1].float(), batch["attention_mask"].unsqueeze(-1).float()
        hidden = hidden[:, -mask.shape[1] :]  # soft prompts prepend virtual positions
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1), "embedding"


class ClassificationPredictor(Predictor):
    def predict_probs(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, one row per text, columns in `run.label_names` order."""
        m = self.run.load()
        ids = tokenize(m.tokenizer, list(texts), self.run.config.data.max_length)
        return predict_probs(m.model, Tokenized(ids, [0] * len(ids), m.tokenizer.pad_token_id), batch_size, m.autocast)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """The fine-tuned encoder's representation of each text: its last hidden state, mean-pooled over the text's
        tokens and L2-normalised (what drift monitoring compares)."""
        m = self.run.load()
        return text_features(
            m.model,
            m.tokenizer,
            list(texts),
            self.run.config.data.max_length,
            batch_size,
            hidden=lambda enc: m.model(**enc, output_hidden_states=True).hidden_states[-1],
        ).numpy()

    def predict(self, texts: list[str], batch_size: int = 64):
        names = self.run.label_names
        out = []
        for row in self.predict_probs(texts, batch_size):
            k = int(row.argmax())
            out.append(Prediction(names[k], float(row[k]), {n: float(p) for n, p in zip(names, row)}))
        return out

    def evaluate(self, data: str, text_column: str | None = None, label_column: str | None = None, **_) -> dict:
        """Metrics of the run's model on another labelled file."""
        names = self.run.label_names
        texts, y = load_labelled(self.run.config.data, data, names, text_column, label_column)
        metrics = classification_metrics(y, self.predict_probs(texts), names)
        metrics["data"] = str(data)
        return metrics
