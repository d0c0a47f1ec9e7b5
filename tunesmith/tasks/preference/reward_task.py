"""Reward-driven tuning (`task: reward-tuning`): GRPO on the rewards `reward:` defines.

training prompts -> per batch, K completions per prompt sampled from the current policy (the generation code of the
generative tasks, batched) -> each scored by the reward components (rewards.py) -> advantages relative to the prompt's
group -> the GRPO loss (grpo.py) on the completions' log-probabilities, with a KL penalty to the reference (the policy
with its adapters off, or a frozen copy of the starting weights) -> train_reward / train_<component> / train_kl logged
per log step -> validation: greedy answers to held-out prompts, their mean reward (the metric `reward`) and each
component -> test: generations before/after, scored like causal-lm (JSON validity, fields, faithfulness) and by the
rewards.

Rows are causal-lm rows (prompt + completion, or messages): the completion is the reference that exact/rouge rewards and
the test scores compare with.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ...engine.batches import shard
from ...errors import ConfigError
from ...tracking.report import write_basic_artifacts
from ...utils import atomic_write_text
from ..base import TaskData
from ..generative.batches import causal_lm_loss
from ..generative.formats import prompt_ids
from ..generative.generation import generate, generate_ids, perplexity
from ..generative.report import write_generative_report
from ..generative.task import CausalLMTask
from .grpo import PromptRows, completion_batch, grpo_loss
from .losses import token_logps
from .rewards import build_rewards, group_advantages


class RewardTuningTask(CausalLMTask):
    name = "reward-tuning"
    summary = "A causal LM tuned by GRPO to earn rewards: JSON validity, match, faithfulness, length, your functions."
    metrics = ("reward", "loss")
    minimize = frozenset({"loss"})
    uses = (CausalLMTask.uses - {"data.packing", "data.mix"}) | {"reward", "grpo.*"}
    _ref_model = None
    _adapters = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.rewards = build_rewards(cfg.reward) if cfg.reward else None
        self._sums: dict[str, float] = {}

    def load_data(self) -> TaskData:
        data = super().load_data()
        if data.record["format"] == "text":
            raise ConfigError(
                "data.sample_format: text has no prompts to answer; reward-tuning samples completions for prompts "
                "(rows: prompt + completion, or messages)"
            )
        return data

    def check_strategy(self, strategy) -> None:
        super().check_strategy(strategy)
        if strategy.virtual_tokens:
            raise ConfigError(
                f"strategy {strategy.name}: reward-tuning scores sampled completions with their prompts, which soft "
                "prompts shift; use lora (or ia3, full)"
            )

    def references(self, model, tokenizer, ctx) -> dict:
        if self.cfg.regularize:
            raise ConfigError(
                "regularize: task reward-tuning holds the policy near its reference with the KL term (raise "
                "grpo.beta); eval.reference measures forgetting"
            )
        return super().references(model, tokenizer, ctx)

    # ---- training
    def encode(self, data: TaskData, tokenizer) -> dict:
        """validation/test as causal-lm (their loss on the references); train: the prompts."""
        out = super().encode(data, tokenizer)
        s = data.splits
        self._train = s.train.samples
        self._val = s.validation.samples[: self.cfg.grpo.eval_prompts]
        out["train"] = PromptRows([prompt_ids(tokenizer, x) for x in self._train])
        self._prompts = out["train"].prompts
        return out

    def train_batches(self, model, batches: dict, strategy, ctx):
        """The reference: the policy with its adapters disabled, or (full fine-tuning) a frozen copy of the start."""
        self._ctx, g = ctx, self.cfg.grpo
        self._adapters = not strategy.saves_base
        if g.beta and not self._adapters:
            ctx.say("reference: a frozen copy of the starting weights (the KL term of grpo.beta)")
            self._ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self._sampling = dataclasses.replace(
            self.cfg.generate, do_sample=True, temperature=g.temperature, top_p=g.top_p
        )
        ctx.say(f"grpo: {g.samples} completions per prompt, beta {g.beta}, rewards {', '.join(self.rewards.names)}")
        return batches["train"]

    def loss(self, model, inputs: dict):
        """Training batches (prompt rows): the GRPO loss of freshly sampled completions. Encoded samples (validation,
        test, `tunesmith eval`): the causal-lm loss on their reference answers."""
        if "rows" not in inputs:
            return causal_lm_loss(model, inputs)
        g = self.cfg.grpo
        rows = [r for r in inputs["rows"].tolist() for _ in range(g.samples)]
        policy = getattr(model, "module", model)  # DDP: sampling needs no gradient sync
        prompts = [self._prompt(r) for r in rows]
        sampling = dataclasses.replace(self._sampling, batch_size=max(len(prompts), 1))
        completions = generate_ids(policy, self._tokenizer, prompts, sampling, "causal-lm")
        texts = [self._tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
        parts = self.rewards.score(texts, [self._train[r].prompt_view() for r in rows], [self._ref(r) for r in rows])
        device = next(policy.parameters()).device
        total = torch.tensor(self.rewards.total(parts), dtype=torch.float32, device=device)
        advantages = group_advantages(total, g.samples, scale=g.scale_rewards)

        batch = {k: v.to(device) for k, v in completion_batch(prompts, completions, self._pad()).items()}
        labels = batch.pop("labels")
        logps, mask = token_logps(model(**batch, use_cache=False).logits, labels)
        ref = self._reference_logps(policy, batch, labels) if g.beta else None
        losses, kl = grpo_loss(logps, mask, advantages, g.samples, g.beta, ref)

        flat = total.view(-1, g.samples)
        self._add("reward", total.sum().item(), len(rows))
        for name, values in parts.items():
            self._add(f"reward_{name}", sum(values), len(rows))
        self._add("kl", kl.sum().item(), len(rows))
        self._add("completion_tokens", mask.sum().item(), len(rows))
        self._add("flat_groups", float((flat.std(dim=1) == 0).sum()), flat.shape[0])
        return losses.sum()

    def _prompt(self, row: int) -> list[int]:
        return self._prompts[row]

    @torch.no_grad()
    def _reference_logps(self, policy, batch: dict, labels: torch.Tensor) -> torch.Tensor:
        with self._reference(policy) as ref:
            return token_logps(ref(**batch, use_cache=False).logits, labels)[0]

    @contextmanager
    def _reference(self, policy):
        if self._ref_model is not None:
            yield self._ref_model
            return
        was = policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                yield policy
        finally:
            policy.train(was)

    def _add(self, name: str, total: float, n: int) -> None:
        s, c = self._sums.get(name, (0.0, 0))
        self._sums[name] = (s + float(total), c + n)

    def train_figures(self) -> dict[str, float]:
        """Means since the last log over every process: reward (weighted) and per component, the KL to the reference,
        completion length in tokens, and the share of groups whose K rewards were all equal (no signal)."""
        if not self._sums:
            return {}
        names = sorted(self._sums)
        t = torch.tensor([v for n in names for v in self._sums[n]], dtype=torch.float64, device=self._ctx.device)
        if self._ctx.world > 1:
            t = self._ctx.acc.reduce(t, "sum")
        self._sums = {}
        return {n: s / max(c, 1.0) for n, (s, c) in zip(names, t.view(-1, 2).tolist())}

    def validate(self, model, batches: dict, ctx) -> dict[str, float]:
        loss = self._loss_over(model, batches["validation"], ctx)
        return {**self._reward_scores(model, self._val, ctx), "loss": loss, "perplexity": perplexity(loss)}

    def _reward_scores(self, model, samples, ctx) -> dict[str, float]:
        """Answers to `samples` as `generate:` says (greedy by default), scored: the mean weighted reward and each
        component's mean (each process answers its share)."""
        mine = shard(list(range(len(samples))), ctx.rank, ctx.world)
        policy = getattr(model, "module", model)
        chosen = [samples[i] for i in mine]
        texts = (
            generate(
                policy,
                self._tokenizer,
                [prompt_ids(self._tokenizer, s) for s in chosen],
                self.cfg.generate,
                "causal-lm",
                ctx.autocast,
            )
            if chosen
            else []
        )
        sums = self._sum_rewards(texts, chosen)
        t = torch.tensor(sums, dtype=torch.float64, device=ctx.device)
        if ctx.world > 1:
            t = ctx.acc.reduce(t, "sum")
        n = max(1, len(samples))
        return dict(zip(["reward", *(f"reward_{c}" for c in self.rewards.names)], (t / n).tolist()))

    def _sum_rewards(self, texts: list[str], samples) -> list[float]:
        if not texts:
            return [0.0] * (1 + len(self.rewards.names))
        parts = self.rewards.score(texts, [s.prompt_view() for s in samples], [s.reference for s in samples])
        return [sum(self.rewards.total(parts)), *(sum(parts[c]) for c in self.rewards.names)]

    def _ref(self, row: int):
        return self._train[row].reference

    def _pad(self) -> int:
        t = self._tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id

    # ---- after training
    def test(self, model, trained, data: TaskData, batches: dict, before: dict, ctx) -> dict:
        """causal-lm's test (loss on the references, generations before/after and their scores), plus the rewards of
        those generations per component."""
        out = super().test(model, trained, data, batches, before, ctx)
        if not ctx.is_main:
            return out
        samples = data.splits.test.samples[: len(self._rows)]
        for when, key in (("test", "after"), ("before", "before")):
            texts = [r[key] for r in self._rows]
            if samples and all(t is not None for t in texts):
                sums = self._sum_rewards(texts, samples)
                names = ["reward", *self.rewards.names]
                out[when]["rewards"] = {n: v / len(samples) for n, v in zip(names, sums)}
        return out

    def write_artifacts(self, run_dir: Path, metrics: dict, history: list[dict], data: TaskData, info: dict, ctx):
        write_basic_artifacts(run_dir, metrics, history, self.cfg.train.metric)
        atomic_write_text(
            run_dir / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._rows)
        )
        test, before = metrics["test"], metrics.get("before") or {}
        rb, ra = before.get("rewards") or {}, test.get("rewards") or {}
        head = [("reward (weighted sum)", rb.get("reward"), ra.get("reward"))]
        head += [(f"reward: {n}", rb.get(n), ra.get(n)) for n in self.rewards.names]
        head.append(("loss on the reference answers", before.get("loss"), test["loss"]))
        write_generative_report(run_dir, self.cfg, info, metrics, self._rows, head=head)

    def headline(self, metrics: dict) -> dict[str, float]:
        test = metrics.get("test") or {}
        out = {f"reward_{k}" if k != "reward" else k: v for k, v in (test.get("rewards") or {}).items()}
        return out | {k: test[k] for k in ("loss", "perplexity") if isinstance(test.get(k), float)}

    def brief(self, metrics: dict) -> str:
        rb = ((metrics.get("before") or {}).get("rewards") or {}).get("reward")
        ra = ((metrics.get("test") or {}).get("rewards") or {}).get("reward")
        return f"reward {_f(rb)} -> {_f(ra)}"

    def summary_lines(self, metrics: dict, info: dict) -> list[str]:
        t, test, before = info["timings"], metrics["test"], metrics.get("before") or {}
        rb, ra = before.get("rewards") or {}, test.get("rewards") or {}
        lines = ["", f"{'':34}{'before':>10}{'after':>10}"]
        for n in ["reward", *self.rewards.names]:
            label = "reward (weighted sum)" if n == "reward" else f"reward {n}"
            lines.append(f"{label:34}{_f(rb.get(n)):>10}{_f(ra.get(n)):>10}")
        gb, ga = before.get("generation") or {}, test.get("generation") or {}
        for k in ("json_valid", "field_exact_match", "faithful_rate", "rougeL"):
            if k in ga:
                lines.append(f"{'generation ' + k:34}{_f(gb.get(k)):>10}{_f(ga.get(k)):>10}")
        lines.append(
            f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.2f} prompts/s, peak memory {t['peak_rss_mb']:.0f} MB"
        )
        return lines


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"
