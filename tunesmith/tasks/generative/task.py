"""The generative tasks: causal-lm (chat / instruction SFT, prompt -> completion, continued pre-training) and seq2seq.

samples -> audit (duplicates, leakage on prompt + response) + lint (rendering, loss masks, EOS, truncation)
-> loss on trained tokens only -> validation loss/perplexity -> test loss + generations before and after,
scored (exact match, ROUGE-L, BLEU, chrF, JSON keys) -> report with a before/after table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from ...data.audit import audit
from ...engine.batches import mean_loss
from ...errors import ConfigError, DataError
from ...models.loading import load_generative
from ...utils import atomic_write_text
from ..base import Findings, Predictor, Task, TaskData
from .batches import LMData, PackedLMData, Seq2SeqData, causal_lm_loss, packing_is_exact, seq2seq_loss
from .forgetting import REFERENCE_HINT, compare, load_references, measure
from .forgetting import summary as forgetting_line
from .formats import (
    IGNORE,
    Sample,
    chat_template_for,
    detect_format,
    load_gen_splits,
    render,
    render_seq2seq,
    sample_text,
    to_samples,
)
from .generation import generate_for, generation_scores, perplexity
from .lint import LintReport, lint
from .mix import load_mix_splits, mix_by_source, mix_realised, source_losses, train_mixture
from .predictor import GenerativePredictor
from .report import mix_lines, write_generative_report

GENERATIVE_KEYS = frozenset(
    "data.sample_format data.prompt_column data.completion_column data.add_eos data.long_samples data.mix generate.*".split()
)


class GenerativeTask(Task):
    metrics = ("loss", "perplexity")
    encoder_decoder = False
    infer_in_compute_dtype = True
    cast_frozen_weights = True
    serves = frozenset({"generate"})
    _mixture = None  # data.mix: the training Mixture (train_batches), read again for the realised shares

    # ---- data
    def load_data(self) -> TaskData:
        splits = load_mix_splits(self.cfg) if self.cfg.data.mix else load_gen_splits(self.cfg)
        record = {"format": splits.format} | ({"mix": splits.mix} if splits.mix else {})
        return TaskData(splits, splits.summary(), [], splits.notes, record)

    def eval_samples(self, df: pd.DataFrame, source: str) -> list[Sample]:
        """Another file's rows as samples (`tunesmith eval`): the generations are scored against their references."""
        d = self.cfg.data
        return to_samples(df, d, detect_format(df.columns, d, self.name), self.name, source)

    def lint(self, data: TaskData, tokenizer, show: int = 2, model=None) -> LintReport:
        s, d = data.splits, self.cfg.data
        samples = s.train.samples + s.validation.samples + s.test.samples
        return lint(tokenizer, samples, self.name, d.max_length, d.add_eos, model, show, d.long_samples)

    def check_data(self, data: TaskData, tokenizer, source=None) -> Findings:
        report = self.lint(data, tokenizer)
        if not report.ok:
            raise DataError(f"{report.errors[0]} (`tunesmith data lint CONFIG` shows rendered samples)")
        data.record["lint"] = report.stats
        findings = Findings(
            lines=[f"data: {w}" for w in report.warnings]
            + [
                f"lint: ok ({report.stats['trained_tokens']:,} trained tokens, mean length {report.stats['mean_length']:.0f}, "
                f"EOS trained in every sample)"
            ],
        )
        audited = self._audit(data)

        def save(run_dir: Path) -> None:
            atomic_write_text(run_dir / "lint.txt", lint_text(report))
            if audited is not None:
                audited.save(run_dir, "audit")

        findings.save = save
        if audited is not None:
            c = audited.counts()
            findings.record["audit"] = c
            findings.metrics = {f"audit.{k}": v for k, v in c.items() if isinstance(v, (int, float))}
            findings.lines.append(
                f"audit: {c.get('train.exact_duplicate_rows', 0)} duplicate samples, {c.get('train.near_duplicate_clusters', 0)} "
                f"near-duplicate clusters in train (prompt + response); no leakage between splits (audit.md in the run folder)"
            )
        return findings

    def _audit(self, data: TaskData):
        """Duplicates, near duplicates and leakage on prompt + response text (label errors do not apply)."""
        if not self.cfg.audit.enabled:
            return None
        s = data.splits
        frames = {
            split.name: pd.DataFrame({"text": [sample_text(x) for x in split.samples], "label": "-"})
            for split in (s.train, s.validation, s.test)
        }
        sources = {split.name: split.source for split in (s.train, s.validation, s.test)}
        options = dataclasses.replace(self.cfg.audit, label_errors=False)
        report = audit(frames.pop("train"), frames, "text", "label", options, sources=sources)
        if report.blocking:
            raise DataError(f"{report.blocking[0]} (or pass --allow-leakage)")
        return report

    def check_strategy(self, strategy) -> None:
        if strategy.features_only:
            raise ConfigError(
                f"strategy {strategy.name} trains a classification head on cached features; for {self.name} use lora, freeze or full"
            )

    # ---- model
    def load_model(self, source, tokenizer, strategy, labels: list[str]):
        c = self.cfg
        return load_generative(
            source,
            self.encoder_decoder,
            c.model.revision,
            c.model.trust_remote_code,
            strategy.quantize,
            c.train.gradient_checkpointing,
        )

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        s = self._splits = data.splits  # train_batches maps a data mix's rows to their sources
        return {split.name: self.encode_samples(tokenizer, split.samples) for split in (s.train, s.validation, s.test)}

    def before_training(self, model, data: TaskData, batches: dict, ctx) -> dict:
        """Test loss and generations of the pretrained model (adapters start as the identity; soft prompts live
        outside the base model, so the base model inside the wrapper is exactly the pretrained one)."""
        if not ctx.is_main:
            return {}
        pretrained = model.get_base_model() if hasattr(model, "get_base_model") else model
        out = {"test_loss": self._loss_over(pretrained, batches["test"], ctx, alone=True)}
        if data.splits.mix:
            out["mix_test_loss"] = source_losses(
                lambda rows: self._loss_over(pretrained, rows, ctx, alone=True), data.splits, batches["test"]
            )
        samples = data.splits.test.samples[: self.cfg.generate.samples]
        if samples and self.cfg.generate.before:
            ctx.say(f"generate: {len(samples)} held-out prompts with the model before fine-tuning")
            out["generations"] = generate_for(
                pretrained, self._tokenizer, samples, self.cfg.generate, self.name, ctx.autocast, progress=True
            )
        return out

    def train_batches(self, model, batches: dict, strategy, ctx):
        """data.mix: the training rows drawn by weight, one source per step (mix.py); else the encoded split."""
        if not self._splits.mix:
            return batches["train"]
        self._mixture = train_mixture(batches["train"], self._splits, self.cfg, ctx)
        return self._mixture

    def loss(self, model, inputs: dict):
        return seq2seq_loss(model, inputs) if self.name == "seq2seq" else causal_lm_loss(model, inputs)

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        loss = self._loss_over(model, batches["validation"], ctx)
        return {"loss": loss, "perplexity": perplexity(loss)}

    # ---- after training
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        test_loss = self._loss_over(model, batches["test"], ctx)
        by_source = source_losses(lambda rows: self._loss_over(model, rows, ctx), data.splits, batches["test"])
        if not ctx.is_main:
            return {}
        g, samples = self.cfg.generate, data.splits.test.samples[: self.cfg.generate.samples]
        after = []
        if samples:
            ctx.say(f"generate: {len(samples)} held-out prompts with the fine-tuned model")
            after = generate_for(model, self._tokenizer, samples, g, self.name, ctx.autocast, progress=True)
        refs, sources = [s.reference for s in samples], [s.prompt_view() for s in samples]
        was = before.get("generations")
        self._rows = [
            {"prompt": s.prompt_view(), "reference": r, "before": b, "after": a}
            for s, r, b, a in zip(samples, refs, was or [None] * len(after), after)
        ]
        loss_before, mix = before.get("test_loss"), mix_by_source(by_source, before.get("mix_test_loss"))
        return ({"mix": mix} if mix else {}) | {
            "test": {
                "loss": test_loss,
                "perplexity": perplexity(test_loss),
                "n": len(data.splits.test),
                **({"generation": generation_scores(after, refs, g.json_keys, sources=sources)} if samples else {}),
            },
            "before": ({"loss": loss_before, "perplexity": perplexity(loss_before)} if loss_before is not None else {})
            | ({"generation": generation_scores(was, refs, g.json_keys, sources=sources)} if was else {}),
        }

    def write_artifacts(
        self, run_dir: Path, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx
    ) -> None:

        if self._mixture is not None:  # the shares of what the run trained on, beside the test losses per source
            metrics["mix"] = mix_realised(
                self._mixture, metrics["steps"], metrics.pop("mix", None), self.cfg, ctx.world
            )
        super().write_artifacts(run_dir, metrics, history, data, info, ctx)
        atomic_write_text(
            run_dir / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._rows)
        )
        write_generative_report(run_dir, self.cfg, info, metrics, self._rows)

    def headline(self, metrics: dict) -> dict[str, float]:
        test = metrics.get("test") or {}
        return {k: test[k] for k in ("loss", "perplexity") if isinstance(test.get(k), float)}

    def tracked(self, metrics: dict) -> dict[str, float]:
        out = {f"test_{k}": v for k, v in self.headline(metrics).items()}
        for when, block in (("before", metrics.get("before") or {}), ("test", metrics.get("test") or {})):
            out.update(
                {
                    f"{when}_gen_{k}": v
                    for k, v in (block.get("generation") or {}).items()
                    if isinstance(v, (int, float))
                }
            )
        return out

    def brief(self, metrics: dict) -> str:
        test = metrics.get("test") or {}
        gen = test.get("generation") or {}
        score = "json_valid" if "json_valid" in gen else "rougeL"
        was = ((metrics.get("before") or {}).get("generation") or {}).get(score)
        return f"ppl {_f(test.get('perplexity'))}  {score} {_f(was)} -> {_f(gen.get(score))}"

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        t, test, before = info["timings"], metrics["test"], metrics.get("before") or {}
        lines = [
            "",
            f"{'':24}{'before':>10}{'after':>10}",
            f"{'test loss':24}{_f(before.get('loss')):>10}{_f(test['loss']):>10}",
            f"{'test perplexity':24}{_f(before.get('perplexity')):>10}{_f(test['perplexity']):>10}",
        ]
        gb, ga = before.get("generation") or {}, test.get("generation") or {}
        for k in ["exact_match", "rougeL", "chrf"] + (
            ["json_valid", "field_exact_match"] if self.cfg.generate.json_keys else []
        ):
            if k in ga:
                lines.append(f"{'generation ' + k:24}{_f(gb.get(k)):>10}{_f(ga.get(k)):>10}")
        lines += mix_lines(metrics.get("mix"))
        lines.append(
            f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.1f} samples/s, {t['tokens_per_second']:.0f} tokens/s, "
            f"peak memory {t['peak_rss_mb']:.0f} MB"
        )
        return lines

    def predictor(self, run) -> Predictor:
        return GenerativePredictor(run)

    # ---- forgetting (forgetting.py): perplexity and answers on reference samples, before and after
    reference_hint = REFERENCE_HINT

    def references(self, model, tokenizer, ctx) -> dict:
        return load_references(self, tokenizer)

    def forgetting_before(self, model, references: dict, ctx) -> dict:
        if not ctx.is_main or not references:
            return {}
        pretrained = model.get_base_model() if hasattr(model, "get_base_model") else model  # adapters start as identity
        return measure(self, pretrained, references, ctx)

    def forgetting_after(self, model, trained, references: dict, before: dict, ctx) -> dict:
        if not ctx.is_main or not references:
            return {}
        return compare(before, measure(self, model, references, ctx), references)

    def forgetting_curve(self, model, references: dict, before: dict, ctx) -> dict:
        if not references:
            return {}
        return {
            f"ref_{name}_perplexity": m["perplexity"]
            for name, m in measure(self, model, references, ctx, alone=False, generate=False).items()
        }

    def forgetting_summary(self, metrics: dict) -> str:
        test, before = metrics.get("test") or {}, metrics.get("before") or {}
        gen, was = test.get("generation") or {}, before.get("generation") or {}
        key = "json_valid" if "json_valid" in gen else "rougeL" if "rougeL" in gen else None
        if key and key in was:
            gain = f"task {key} {was[key]:.2f} -> {gen[key]:.2f}"
        elif before.get("perplexity") is not None:
            gain = f"task perplexity {before['perplexity']:.2f} -> {test['perplexity']:.2f}"
        else:
            gain = ""
        return forgetting_line(gain, {k: v for k, v in metrics["forgetting"].items() if k != "summary"})

    def distill_forward(self, module, batch: dict):
        inputs = batch if self.encoder_decoder else {k: v for k, v in batch.items() if k != "labels"}
        return module(**inputs, use_cache=False)

    def distill_outputs(self, output, batch: dict):
        """The next-token logits at the trained positions (the loss's units), one row per trained token."""
        logits, labels = output.logits, batch["labels"]
        if self.encoder_decoder:
            return logits[labels != IGNORE], "logits"
        if logits.shape[1] != labels.shape[1]:  # soft prompts prepend virtual positions
            logits = logits[:, -labels.shape[1] :]
        targets = labels[:, 1:]
        return logits[:, :-1][targets != IGNORE], "logits"

    # ---- helpers
    def encode_samples(self, tokenizer, samples: list[Sample]):
        """Token ids and loss masks (samples cut by truncation are dropped when data.long_samples says so);
        `.kept` lists the samples kept, in order (a data mix maps rows back to their sources with it)."""
        self._tokenizer = tokenizer
        d = self.cfg.data
        keep = d.long_samples == "error"  # with "error" the lint has already refused truncated samples
        if self.name == "seq2seq":
            pairs = [render_seq2seq(tokenizer, s, d.max_length, d.add_eos) for s in samples]
            kept = [i for i, (_, r) in enumerate(pairs) if keep or not r.truncated_target]
            out = Seq2SeqData([pairs[i][0] for i in kept], [pairs[i][1].labels for i in kept], tokenizer.pad_token_id)
        else:
            rendered = [render(tokenizer, s, self.name, d.max_length, d.add_eos) for s in samples]
            kept = [i for i, r in enumerate(rendered) if keep or not r.truncated_target]
            out = LMData([rendered[i].ids for i in kept], [rendered[i].labels for i in kept], tokenizer.pad_token_id)
        out.kept = kept
        return out

    def _loss_over(self, model, data, ctx, alone: bool = False) -> float:
        """Mean loss per trained token, shared across processes (`alone`: this process does all of it)."""
        world, rank = (1, 0) if alone else (ctx.world, ctx.rank)
        return mean_loss(model, data, self.loss, self.cfg.eval.batch_size, ctx.autocast, ctx.acc.reduce, rank, world)


class CausalLMTask(GenerativeTask):
    name = "causal-lm"
    summary = (
        "A decoder-only model's continuation: chat / instruction SFT, prompt -> completion, continued pre-training."
    )
    uses = GENERATIVE_KEYS | {"data.messages_column", "data.packing", "model.chat_template"}
    supports_chat = True
    serves = frozenset({"generate", "chat"})

    def load_tokenizer(self, source):
        tokenizer = super().load_tokenizer(source)
        tokenizer.chat_template = chat_template_for(tokenizer, self.cfg.model.chat_template)
        return tokenizer

    def train_batches(self, model, batches: dict, strategy, ctx):
        """Packed rows when data.packing asks and the model really keeps packed samples apart; else padded rows."""
        train, max_length = batches["train"], self.cfg.data.max_length
        packed = self.cfg.data.packing
        if packed and strategy.virtual_tokens:
            ctx.say(
                f"packing: off ({strategy.name} prepends virtual tokens to every row); length-grouped padding instead"
            )
            packed = False
        if packed and not packing_is_exact(model, ctx.device):
            ctx.say(
                "packing: off (this model's attention does not keep packed samples apart); length-grouped padding instead"
            )
            packed = False
        ctx.record["packing"] = packed
        if not packed:
            return super().train_batches(model, batches, strategy, ctx)
        rows = PackedLMData(train.ids, train.labels_, max_length, train.pad_id)
        ctx.say(
            f"packing: {len(train)} samples in {len(rows)} rows of <= {max_length} tokens "
            f"({rows.samples_per_row:.1f} per row; positions restart per sample, no cross-sample attention)"
        )
        return rows


class Seq2SeqTask(GenerativeTask):
    name = "seq2seq"
    summary = "An encoder-decoder's target sequence for an input (T5, BART, Marian): summarise, translate, rewrite."
    uses = GENERATIVE_KEYS
    encoder_decoder = True


def lint_text(report: LintReport) -> str:
    out = [
        "# tunesmith data lint",
        "",
        *[f"error: {e}" for e in report.errors],
        *[f"warning: {w}" for w in report.warnings],
    ]
    out += ["", f"stats: {report.stats}", "", "trained tokens are in [[double brackets]]:"]
    for k, s in enumerate(report.shown, 1):
        out += ["", f"--- sample {k} ---", s]
    return "\n".join(out) + "\n"


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"
