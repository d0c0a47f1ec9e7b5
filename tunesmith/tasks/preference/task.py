"""Preference tuning (`task: preference`): DPO, IPO, KTO against a reference model; ORPO and SimPO without one.

pairs (prompt, chosen, rejected) -> both responses rendered like SFT samples (chat template, loss mask on the response
only, the prompt's tokens shared) -> one forward pass over [chosen; rejected] -> summed response log-probabilities ->
the loss per pair (losses.py) against the reference's log-probabilities (the policy with its adapters disabled, computed
once before training and cached in the run folder) -> validation: preference accuracy and reward margin on held-out
pairs -> test: the same, plus generations before/after scored like causal-lm (JSON validity, fields, faithfulness).
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ...engine.batches import map_batches, plan_eval, shard
from ...errors import ConfigError, DataError
from ...models.loading import load_generative, resolve_model
from ...tracking.report import write_basic_artifacts
from ...utils import atomic_write_text
from ..base import Findings, TaskData
from ..generative.generation import generate_for, generation_scores
from ..generative.lint import LintReport, lint
from ..generative.report import write_generative_report
from ..generative.task import CausalLMTask, lint_text
from .batches import SequenceGroups
from .cache import load_reference_cache, save_reference_cache
from .data import encode_pairs, encode_unpaired, load_pair_splits, to_pairs
from .losses import NEEDS_REFERENCE, PairLogps, kto_kl, kto_loss, pair_loss, sequence_logps

SCORES = ("preference_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "loss", "logp_accuracy")


class PreferenceTask(CausalLMTask):
    name = "preference"
    summary = "A causal LM taught which of two responses to prefer: DPO, IPO, KTO, ORPO, SimPO (chosen/rejected pairs)."
    metrics = ("preference_accuracy", "reward_margin", "loss")
    minimize = frozenset({"loss"})
    uses = (CausalLMTask.uses - {"data.packing", "data.mix"}) | {"preference.*", "data.label_column"}
    _ref_model = None  # reference: base / run:<path> without precomputation: a frozen copy

    @property
    def unpaired(self) -> bool:
        return self.cfg.preference.loss == "kto"

    # ---- data
    def load_data(self) -> TaskData:
        if self.cfg.data.mix:
            raise ConfigError("data.mix: preference data comes from one file (data.path) or train/validation/test")
        s = load_pair_splits(self.cfg, self.unpaired)
        return TaskData(s, s.summary(), [], s.notes, {"format": s.format, "loss": self.cfg.preference.loss})

    def eval_samples(self, df, source: str):
        """`tunesmith eval` on a pair file (or KTO rows): each prompt with its chosen (desirable) answer as the
        reference; SFT rows work as for causal-lm."""
        if not {"chosen", "rejected"} <= set(df.columns) and not (self.unpaired and "label" in df.columns):
            return super().eval_samples(df, source)
        return [p.chosen for p in to_pairs(df, self.cfg, source, self.unpaired) if p.desirable is not False]

    def lint(self, data: TaskData, tokenizer, show: int = 2, model=None) -> LintReport:
        """The causal-lm lint over every response (EOS, template, prompts), then the pair rules (encode)."""
        d, s = self.cfg.data, data.splits
        pairs = s.train.pairs + s.validation.pairs + s.test.pairs
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs if p.rejected is not None]
        report = lint(tokenizer, responses, "causal-lm", d.max_length, d.add_eos, model, show, "drop")
        encoded = self._encode_split(tokenizer, pairs, "error")
        report.errors += encoded.problems[:5]
        if len(encoded.problems) > 5:
            report.errors.append(f"... and {len(encoded.problems) - 5} more pair problems")
        report.stats["pairs"] = len(pairs)
        return report

    def check_strategy(self, strategy) -> None:
        super().check_strategy(strategy)
        p = self.cfg.preference
        if p.loss in NEEDS_REFERENCE and p.reference == "adapters-off" and strategy.saves_base:
            raise ConfigError(
                f"preference.reference: adapters-off needs an adapter strategy (lora, ia3, ...); strategy "
                f"{strategy.name} changes the base weights, so set preference.reference: base (a frozen copy)"
            )

    def references(self, model, tokenizer, ctx) -> dict:
        if self.cfg.regularize:
            raise ConfigError(
                "regularize: task preference does not take remedies against forgetting yet (the reference model "
                "already holds the policy back: raise preference.beta); eval.reference measures forgetting"
            )
        return super().references(model, tokenizer, ctx)

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        self._tokenizer, s = tokenizer, data.splits
        out = {}
        for split in (s.train, s.validation, s.test):
            e = self._encode_split(tokenizer, split.pairs, self.cfg.data.long_samples)
            if e.problems:
                raise DataError(f"{split.source}: {e.problems[0]} (`tunesmith data lint CONFIG` lists them)")
            if not e.kept:
                raise DataError(f"{split.source}: no {split.name} pair is left to train or evaluate on")
            desirable = [split.pairs[k].desirable for k in e.kept] if self.unpaired else None
            out[split.name] = SequenceGroups(e.ids, e.labels, tokenizer.pad_token_id or 0, desirable)
        return out

    def _encode_split(self, tokenizer, pairs, long_samples: str):
        d = self.cfg.data
        encode = encode_unpaired if self.unpaired else encode_pairs
        return encode(tokenizer, pairs, d.max_length, d.add_eos, long_samples)

    def before_training(self, model, data: TaskData, batches: dict, ctx) -> dict:
        """The starting model's generations, and whether it already gives the chosen response the higher likelihood."""
        if not ctx.is_main:
            return {}
        start = model.get_base_model() if hasattr(model, "get_base_model") else model
        out = {"logp_accuracy": None if self.unpaired else self._logp_accuracy(start, batches["test"], ctx)}
        samples = data.splits.test.samples[: self.cfg.generate.samples]
        if samples and self.cfg.generate.before:
            ctx.say(f"generate: {len(samples)} held-out prompts with the model before preference tuning")
            out["generations"] = generate_for(
                start, self._tokenizer, samples, self.cfg.generate, "causal-lm", ctx.autocast, progress=True
            )
        return out

    def train_batches(self, model, batches: dict, strategy, ctx):
        """The reference: its log-probabilities of every pair computed once (cached in the run folder), or a frozen
        copy consulted per step (preference.precompute_reference: false)."""
        p = self.cfg.preference
        if p.loss not in NEEDS_REFERENCE:
            return batches["train"]
        if p.reference.startswith("run:"):
            self._ref_model = self._load_reference_run(p.reference[4:], ctx)
        elif p.reference == "base" and not p.precompute_reference:
            self._ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        if p.precompute_reference:
            self._attach_reference(model, batches, ctx)
            self._ref_model = None
        return batches["train"]

    def _load_reference_run(self, where: str, ctx):
        folder = Path(where).expanduser()
        folder = folder / "model" if (folder / "model" / "config.json").is_file() else folder
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"preference.reference: run:{where} holds no full model (an adapter run saves only its adapter); export "
                "it merged (`tunesmith export RUN --format hf --out DIR`) and give that folder as run:<folder>"
            )
        m = load_generative(resolve_model(str(folder)), False, None, self.cfg.model.trust_remote_code, "none", False)
        return m.to(ctx.device).eval().requires_grad_(False)

    def _attach_reference(self, model, batches: dict, ctx) -> None:
        key = f"{self.cfg.preference.reference}|{self.cfg.data.max_length}|{self._data_key(batches)}"
        path = ctx.run_dir / "reference_logps.safetensors"
        cached = load_reference_cache(path, key)
        if cached is None:
            ctx.say(f"reference: log-probabilities of {sum(len(b) for b in batches.values())} rows, computed once")
            cached = {
                name: torch.from_numpy(
                    map_batches(
                        data, self.cfg.eval.batch_size, lambda x: self._reference_rows(model, x), ctx.rank, ctx.world
                    )
                )
                for name, data in batches.items()
            }
            if ctx.is_main:
                save_reference_cache(path, key, cached)
        for name, data in batches.items():
            data.reference = cached[name]

    @staticmethod
    def _data_key(batches: dict) -> str:
        return ",".join(f"{n}:{len(b)}:{sum(b.lengths)}" for n, b in batches.items())

    def _reference_rows(self, model, inputs: dict) -> torch.Tensor:
        """[rows, groups] reference log-probabilities of a batch (precomputation)."""
        device = next(model.parameters()).device
        x = {k: inputs[k].to(device) for k in ("input_ids", "attention_mask")}
        return _by_row(self._reference_logps(model, x, inputs["labels"].to(device)))

    @torch.no_grad()
    def _reference_logps(self, model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        with self._reference(model) as ref:
            logits = ref(**inputs, use_cache=False).logits
        return sequence_logps(logits, labels)[0]

    @contextmanager
    def _reference(self, model):
        """The reference model, in eval mode: a frozen copy, or the policy itself with its adapters disabled (for
        `base` + precomputation the policy before training IS the base)."""
        if self._ref_model is not None:
            yield self._ref_model
            return
        m = getattr(model, "module", model)  # DDP: the reference pass needs no gradient sync
        was = m.training
        m.eval()
        try:
            if self.cfg.preference.reference == "adapters-off":
                with m.disable_adapter():
                    yield m
            else:
                yield m
        finally:
            m.train(was)

    def loss(self, model, inputs: dict):
        return self._terms(model, dict(inputs))["loss"].sum()

    def _terms(self, model, inputs: dict) -> dict[str, torch.Tensor]:
        """Per row: the loss, the rewards of both sides (KTO: desirable / undesirable), and the log-likelihood verdict."""
        p = self.cfg.preference
        labels, ref = inputs.pop("labels"), inputs.pop("ref_logps", None)
        desirable = inputs.pop("desirable", None)
        logps, counts = sequence_logps(model(**inputs, use_cache=False).logits, labels)
        n = labels.shape[0] // 2
        if ref is None and p.loss in NEEDS_REFERENCE:
            ref = _by_row(self._reference_logps(model, inputs, labels))
        if desirable is not None:
            kl = kto_kl(logps[n:], ref[:, 1])
            losses, reward = kto_loss(
                logps[:n], ref[:, 0], desirable, kl, p.beta, p.desirable_weight, p.undesirable_weight
            )
            return {"loss": losses, "reward": reward, "desirable": desirable}
        lp = PairLogps(
            logps[:n], logps[n:], counts[:n], counts[n:], *((ref[:, 0], ref[:, 1]) if ref is not None else ())
        )
        losses, chosen, rejected = pair_loss(p.loss, lp, p.beta, p.label_smoothing, p.simpo_gamma)
        avg = (logps / counts.clamp(min=1)).detach()
        return {"loss": losses, "chosen": chosen, "rejected": rejected, "logp_right": (avg[:n] > avg[n:]).float()}

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        return self._scores(model, batches["validation"], ctx)

    @torch.no_grad()
    def _scores(self, model, data: SequenceGroups, ctx, alone: bool = False) -> dict[str, float]:
        """Mean loss, preference accuracy (the chosen side gets the higher reward; KTO: the reward's sign matches the
        label), reward margin and mean rewards over `data`, shared across processes."""
        world, rank = (1, 0) if alone else (ctx.world, ctx.rank)
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        sums = torch.zeros(7, dtype=torch.float64, device=device)
        for global_batch in plan_eval(data.lengths, self.cfg.eval.batch_size * world):
            rows = shard(global_batch, rank, world)
            if not rows:
                continue
            with ctx.autocast():
                t = self._terms(model, {k: v.to(device) for k, v in data.batch(rows).items()})
            if "desirable" in t:
                good, r = t["desirable"], t["reward"].double()
                right = ((r > 0) == good).double().sum()
                parts = [t["loss"].sum(), right, r[good].sum(), r[~good].sum(), good.sum(), (~good).sum(), 0.0]
            else:
                c, j = t["chosen"].double(), t["rejected"].double()
                parts = [
                    t["loss"].sum(),
                    (c > j).double().sum(),
                    c.sum(),
                    j.sum(),
                    len(rows),
                    len(rows),
                    t["logp_right"].sum(),
                ]
            sums += torch.tensor([float(x) for x in parts], dtype=torch.float64, device=device)
        if world > 1:
            sums = ctx.acc.reduce(sums, "sum")
        model.train(was)
        loss, right, good, bad, n_good, n_bad, logp_right = sums.tolist()
        n = len(data)
        out = {
            "loss": loss / n,
            "preference_accuracy": right / n,
            "chosen_reward": good / max(1.0, n_good),
            "rejected_reward": bad / max(1.0, n_bad),
        }
        out["reward_margin"] = out["chosen_reward"] - out["rejected_reward"]
        if not self.unpaired:
            out["logp_accuracy"] = logp_right / n
        return out

    def _logp_accuracy(self, model, data: SequenceGroups, ctx) -> float:
        """Share of pairs whose chosen response has the higher mean log-probability per token (no reference needed)."""
        right = 0.0
        with torch.no_grad():
            for rows in plan_eval(data.lengths, self.cfg.eval.batch_size):
                inputs = {
                    k: v.to(ctx.device)
                    for k, v in data.batch(rows).items()
                    if k in ("input_ids", "attention_mask", "labels")
                }
                labels = inputs.pop("labels")
                with ctx.autocast():
                    logps, counts = sequence_logps(model(**inputs, use_cache=False).logits, labels)
                avg = logps / counts.clamp(min=1)
                right += float((avg[: len(rows)] > avg[len(rows) :]).sum())
        return right / len(data)

    # ---- after training
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        scores = self._scores(model, batches["test"], ctx)
        if not ctx.is_main:
            return {}
        g, samples = self.cfg.generate, data.splits.test.samples[: self.cfg.generate.samples]
        after = []
        if samples:
            ctx.say(f"generate: {len(samples)} held-out prompts with the preference-tuned model")
            after = generate_for(model, self._tokenizer, samples, g, "causal-lm", ctx.autocast, progress=True)
        refs, sources = [s.reference for s in samples], [s.prompt_view() for s in samples]
        was = before.get("generations")
        self._rows = [
            {"prompt": s.prompt_view(), "reference": r, "before": b, "after": a}
            for s, r, b, a in zip(samples, refs, was or [None] * len(after), after)
        ]
        gen = lambda outs: generation_scores(outs, refs, g.json_keys, sources=sources)  # noqa: E731
        return {
            "test": {**scores, "n": len(batches["test"]), **({"generation": gen(after)} if samples else {})},
            "before": {"logp_accuracy": before.get("logp_accuracy")} | ({"generation": gen(was)} if was else {}),
        }

    def write_artifacts(self, run_dir: Path, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx):
        write_basic_artifacts(run_dir, metrics, history, self.cfg.train.metric)
        atomic_write_text(run_dir / "generations.jsonl", "".join(_jsonl(r) for r in self._rows))
        test, before = metrics["test"], metrics.get("before") or {}
        head = [
            (f"preference accuracy ({self.cfg.preference.loss} rewards)", None, test["preference_accuracy"]),
            ("reward margin (chosen - rejected)", None, test["reward_margin"]),
            ("chosen has the higher likelihood per token", before.get("logp_accuracy"), test.get("logp_accuracy")),
        ]
        write_generative_report(run_dir, self.cfg, info, metrics, self._rows, head=head)

    def headline(self, metrics: dict) -> dict[str, float]:
        test = metrics.get("test") or {}
        return {k: test[k] for k in SCORES if isinstance(test.get(k), float)}

    def brief(self, metrics: dict) -> str:
        test = metrics.get("test") or {}
        gen = test.get("generation") or {}
        extra = f"  json_valid {gen['json_valid']:.3f}" if "json_valid" in gen else ""
        return f"pref_acc {test.get('preference_accuracy', 0):.3f}  margin {test.get('reward_margin', 0):.3f}{extra}"

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        t, test, before = info["timings"], metrics["test"], metrics.get("before") or {}
        lines = ["", f"{'':34}{'before':>10}{'after':>10}"]
        lines.append(f"{'preference accuracy':34}{'-':>10}{test['preference_accuracy']:>10.4f}")
        lines.append(f"{'reward margin':34}{'-':>10}{test['reward_margin']:>10.4f}")
        if test.get("logp_accuracy") is not None:
            was = before.get("logp_accuracy")
            lines.append(f"{'chosen likelier (per token)':34}{_f(was):>10}{test['logp_accuracy']:>10.4f}")
        gb, ga = before.get("generation") or {}, test.get("generation") or {}
        for k in ("json_valid", "field_exact_match", "faithful_rate", "rougeL"):
            if k in ga:
                lines.append(f"{'generation ' + k:34}{_f(gb.get(k)):>10}{_f(ga.get(k)):>10}")
        lines.append(
            f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.2f} pairs/s, peak memory {t['peak_rss_mb']:.0f} MB"
        )
        return lines

    def check_data(self, data: TaskData, tokenizer, source=None) -> Findings:
        findings = super().check_data(data, tokenizer, source)
        findings.lines = [
            line.replace("EOS trained in every sample", "EOS trained in every response") for line in findings.lines
        ]
        return findings


def _by_row(logps: torch.Tensor) -> torch.Tensor:
    """[groups x rows] (group-major, as batched) -> [rows, groups]."""
    return logps.view(2, -1).T


def _jsonl(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


__all__ = ["PreferenceTask", "lint_text"]
