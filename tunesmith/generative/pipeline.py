"""finetune() for generative tasks (causal-lm, seq2seq): the same path and loop as classification.

config -> samples -> lint -> model (+ GGUF conversion) -> strategy -> generations before training
-> train (loss on trained tokens only, validation loss/perplexity) -> test loss + generations after
-> scores, report with a before/after table, run folder, MLflow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import __version__
from ..config import Config, config_to_dict, flatten, save_config
from ..errors import ConfigError, DataError
from ..models.loading import load_generative, load_tokenizer, resolve_model
from ..run import Run, read_json
from ..strategies import build_strategy, count_parameters
from ..tracking import make_tracker
from ..train.loop import Interrupted, fit
from ..train.precision import choose_precision
from ..utils import atomic_write_json, atomic_write_text
from .batches import LMData, PackedLMData, Seq2SeqData, causal_lm_loss, packing_is_exact, seq2seq_loss
from .formats import GenSplits, chat_template_for, load_gen_splits, render, render_seq2seq
from .generation import generate_for, generation_scores
from .lint import lint


def prepare_tokenizer(cfg: Config, source):
    tokenizer = load_tokenizer(source, cfg.model.revision, cfg.model.trust_remote_code)
    if cfg.task == "causal-lm":
        tokenizer.chat_template = chat_template_for(tokenizer, cfg.model.chat_template)
    return tokenizer


def lint_config(cfg: Config, splits: GenSplits, tokenizer, show: int = 2, model=None):
    samples = splits.train.samples + splits.validation.samples + splits.test.samples
    return lint(tokenizer, samples, cfg.task, cfg.data.max_length, cfg.data.add_eos, model, show, cfg.data.long_samples)


def finetune_generative(cfg: Config, run_dir: Path | None, resume: bool) -> Run:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import broadcast_object_list, set_seed

    from ..pipeline import _finish, _new_run_dir, _now, _tracking_uri, complete_run, save_model

    # ---- cheap checks first: data, the lint of its rendering, model availability
    splits = load_gen_splits(cfg)
    source = resolve_model(cfg.model.name)
    tokenizer = prepare_tokenizer(cfg, source)
    report = lint_config(cfg, splits, tokenizer)
    if not report.ok:
        raise DataError(f"{report.errors[0]} (`tunesmith data lint CONFIG` shows rendered samples)")
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
    if strategy.features_only:
        raise ConfigError(f"strategy {strategy.name} trains a classification head on cached features; for {cfg.task} use lora, freeze or full")
    precision, why = choose_precision(cfg.train.precision, "cuda" if torch.cuda.is_available() else "cpu")
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no" if precision == "fp32" else precision)
    say = acc.print

    set_seed(cfg.seed)
    quantize = getattr(strategy.options, "quantize", "none")
    base = load_generative(source, cfg.task, cfg.model.revision, cfg.model.trust_remote_code, quantize, cfg.train.gradient_checkpointing)
    base.to(acc.device)
    if run_dir is None:
        name = [_new_run_dir(cfg)] if acc.is_main_process else [None]
        run_dir = Path(broadcast_object_list(name)[0]) if acc.num_processes > 1 else Path(name[0])
    info = read_json(run_dir / "run.json") if resume else {}
    say(f"tunesmith {__version__} | run {run_dir}")
    say(f"data: {splits.format} samples, train {len(splits.train)} / validation {len(splits.validation)} / test {len(splits.test)}")
    for note in splits.notes + report.warnings:
        say(f"data: {note}")
    say(f"lint: ok ({report.stats['trained_tokens']:,} trained tokens, mean length {report.stats['mean_length']:.0f}, "
        f"EOS trained in every sample)")
    say(f"model: {cfg.model.name} ({source.kind}: {source.location})")

    # ---- token ids (samples cut by truncation are dropped when data.long_samples says so)
    data = {s.name: _encode(cfg, tokenizer, s.samples) for s in (splits.train, splits.validation, splits.test)}
    model = strategy.prepare(base)
    trainable, total = count_parameters(model)
    frozen_cast = _frozen_to_compute_dtype(model, strategy, precision)
    # "Before fine-tuning" is the pretrained model: adapters start as the identity (LoRA B=0, IA3 ones),
    # and soft prompts live outside the base model, so the base model inside the wrapper is exactly it.
    pretrained = model.get_base_model() if hasattr(model, "get_base_model") else model
    test_loss_before = None
    before: list[str] | None = info.get("_before") if resume else None
    gen_samples = splits.test.samples[: cfg.generate.samples]
    if acc.is_main_process and not resume:
        test_loss_before = _lm_loss(pretrained, data["test"], cfg, acc, tokenizer.pad_token_id, loss_fn(cfg.task), alone=True)
        if gen_samples and cfg.generate.before:
            say(f"generate: {len(gen_samples)} held-out prompts with the model before fine-tuning")
            before = generate_for(pretrained, tokenizer, gen_samples, cfg.generate, cfg.task, acc.autocast, progress=True)
    packed = cfg.task == "causal-lm" and cfg.data.packing
    if packed and strategy.name in ("prompt-tuning", "prefix-tuning"):
        say(f"packing: off ({strategy.name} prepends virtual tokens to every row); length-grouped padding instead")
        packed = False
    if packed and not packing_is_exact(model, acc.device):
        say("packing: off (this model's attention does not keep packed samples apart); length-grouped padding instead")
        packed = False
    train_data = data["train"]
    if packed:
        train_data = PackedLMData(train_data.ids, train_data.labels_, cfg.data.max_length)
        say(f"packing: {len(data['train'])} samples in {len(train_data)} rows of <= {cfg.data.max_length} tokens "
            f"({train_data.samples_per_row:.1f} per row; positions restart per sample, no cross-sample attention)")
    say(f"strategy: {strategy.name} | trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    if frozen_cast:
        say(f"precision: frozen weights stored in {precision} ({frozen_cast / 2**20:.0f} MiB saved; no per-step casts), trained ones in fp32")
    say(f"precision: {precision} ({why}) | device {acc.device} | processes {acc.num_processes}"
        f"{' | gradient checkpointing' if cfg.train.gradient_checkpointing else ''}")

    tracker = make_tracker(cfg.tracking, cfg.output_dir, run_dir.name, acc.is_main_process, info.get("mlflow_run_id"))
    if acc.is_main_process:
        info.update(
            status="running", name=run_dir.name, path=str(run_dir), tunesmith_version=__version__, created=info.get("created", _now()),
            task=cfg.task, model={"name": cfg.model.name, "kind": source.kind, "location": source.location},
            strategy=strategy.name, precision=precision, processes=acc.num_processes, packing=packed,
            parameters={"trainable": trainable, "total": total}, mlflow_run_id=tracker.run_id, mlflow_uri=_tracking_uri(cfg),
            data={"splits": splits.summary(), "format": splits.format, "notes": splits.notes, "lint": report.stats},
        )
        if before is not None:
            info["_before"] = before  # kept until the run completes, so a resumed run still has its "before"
        if test_loss_before is not None:
            info["_test_loss_before"] = test_loss_before
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / "lint.txt", _lint_text(report))
        atomic_write_json(run_dir / "run.json", info)
        if not resume:
            tracker.log_params({**flatten(config_to_dict(cfg)), "trainable_parameters": trainable, "total_parameters": total, "precision": precision})

    # ---- train
    lossf = loss_fn(cfg.task)

    def evaluate_fn(m) -> dict:
        loss = _lm_loss(m, data["validation"], cfg, acc, tokenizer.pad_token_id, lossf)
        return {"loss": loss, "perplexity": _ppl(loss)}

    try:
        result = fit(model, strategy, train_data, data["validation"], [], cfg.train, cfg.seed, acc, tokenizer.pad_token_id, run_dir,
                     cfg.eval.batch_size, resume=resume, log=tracker.log_metrics, loss_fn=lossf, evaluate_fn=evaluate_fn)
    except Interrupted:
        _finish(acc, run_dir, info, tracker, "interrupted", "KILLED")
        raise
    except BaseException:
        _finish(acc, run_dir, info, tracker, "failed", "FAILED")
        raise

    # ---- test: loss with the best weights, generations after, scores, record
    model = acc.unwrap_model(model)
    test_loss = _lm_loss(model, data["test"], cfg, acc, tokenizer.pad_token_id, lossf)
    if acc.is_main_process:
        after = []
        if gen_samples:
            say(f"generate: {len(gen_samples)} held-out prompts with the fine-tuned model")
            after = generate_for(model, tokenizer, gen_samples, cfg.generate, cfg.task, acc.autocast, progress=True)
        refs = [s.reference for s in gen_samples]
        before = info.pop("_before", None)
        loss_before = info.pop("_test_loss_before", None)
        peak_mb = save_model(run_dir, strategy, model, tokenizer, result, info)
        keys = cfg.generate.json_keys
        metrics = {
            "test": {"loss": test_loss, "perplexity": _ppl(test_loss), "n": len(splits.test),
                     **({"generation": generation_scores(after, refs, keys)} if gen_samples else {})},
            "before": ({"loss": loss_before, "perplexity": _ppl(loss_before)} if loss_before is not None else {})
            | ({"generation": generation_scores(before, refs, keys)} if before else {}),
            "validation_best": result.best_metrics, "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
        }
        rows = [{"prompt": s.prompt_view(), "reference": r, "before": b, "after": a}
                for s, r, b, a in zip(gen_samples, refs, before or [None] * len(after), after)]
        from ..tracking.report import plot_history
        from .report import write_generative_report

        atomic_write_json(run_dir / "metrics.json", metrics)
        atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in result.history))
        atomic_write_text(run_dir / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        plot_history(result.history, cfg.train.metric, run_dir / "training_curves.png")
        write_generative_report(run_dir, cfg, info, metrics, rows)
        tracker.log_metrics({"test_loss": test_loss, "test_perplexity": _ppl(test_loss)})
        for when, block in (("before", metrics["before"]), ("test", metrics["test"])):
            tracker.log_metrics({f"{when}_gen_{k}": v for k, v in (block.get("generation") or {}).items() if isinstance(v, (int, float))})
        tracker.log_metrics({"samples_per_second": result.samples_per_second, "peak_rss_mb": peak_mb})
        complete_run(cfg, run_dir, info, tracker)
        _print_summary(say, metrics, info, keys)
    acc.wait_for_everyone()
    return Run(run_dir)


def _frozen_to_compute_dtype(model, strategy, precision: str) -> int:
    """Store frozen float weights in the autocast dtype: autocast would cast them at every forward anyway.

    Saves memory and the per-step casts (generation, with one forward per token, gains most). Trained
    weights stay fp32 (the optimizer's master copy). Only for adapter strategies, which save the adapter
    alone: a full/freeze run saves every weight, and those must stay as pretrained.
    Returns the bytes saved.
    """
    from ..strategies.peft_base import PeftStrategy

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None or not isinstance(strategy, PeftStrategy):  # full/freeze save the frozen weights too: keep them exact
        return 0
    saved = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(dtype)
            saved += p.numel() * 2
    return saved


def loss_fn(task: str):
    return seq2seq_loss if task == "seq2seq" else causal_lm_loss


def _encode(cfg: Config, tokenizer, samples) -> LMData | Seq2SeqData:
    keep = cfg.data.long_samples == "error"  # with "error" the lint has already refused truncated samples
    if cfg.task == "seq2seq":
        pairs = [render_seq2seq(tokenizer, s, cfg.data.max_length, cfg.data.add_eos) for s in samples]
        pairs = [(a, r) for a, r in pairs if keep or not r.truncated_target]
        return Seq2SeqData([a for a, _ in pairs], [r.labels for _, r in pairs])
    rendered = [render(tokenizer, s, cfg.task, cfg.data.max_length, cfg.data.add_eos) for s in samples]
    rendered = [r for r in rendered if keep or not r.truncated_target]
    return LMData([r.ids for r in rendered], [r.labels for r in rendered])


@torch.no_grad()
def _lm_loss(model, data, cfg: Config, acc, pad_id: int, lossf, alone: bool = False) -> float:
    """Mean loss per trained token over `data`, shared across processes (`alone`: this process does all of it)."""
    from ..data.batching import plan_eval, shard

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    world, rank = (1, 0) if alone else (acc.num_processes, acc.process_index)
    for global_batch in plan_eval(data.lengths, cfg.eval.batch_size * world):
        rows = shard(global_batch, rank, world)
        if not rows:
            continue
        inputs = {k: v.to(device) for k, v in data.batch(rows, pad_id).items()}
        with acc.autocast():
            total[0] += lossf(model, inputs).double()
        total[1] += data.units(rows)
    if world > 1:
        total = acc.reduce(total, "sum")
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else float(math.exp(min(loss, 50.0)))


def _lint_text(report) -> str:
    out = ["# tunesmith data lint", "", *[f"error: {e}" for e in report.errors], *[f"warning: {w}" for w in report.warnings]]
    out += ["", f"stats: {report.stats}", "", "trained tokens are in [[double brackets]]:"]
    for k, s in enumerate(report.shown, 1):
        out += ["", f"--- sample {k} ---", s]
    return "\n".join(out) + "\n"


def _print_summary(say, metrics: dict, info: dict, keys) -> None:
    t, test, before = info["timings"], metrics["test"], metrics.get("before") or {}
    say("")
    say(f"{'':24}{'before':>10}{'after':>10}")
    say(f"{'test loss':24}{_f(before.get('loss')):>10}{_f(test['loss']):>10}")
    say(f"{'test perplexity':24}{_f(before.get('perplexity')):>10}{_f(test['perplexity']):>10}")
    gb, ga = before.get("generation") or {}, test.get("generation") or {}
    shown = ["exact_match", "rougeL", "chrf"] + (["json_valid", "field_exact_match"] if keys else [])
    for k in shown:
        if k in ga:
            say(f"{'generation ' + k:24}{_f(gb.get(k)):>10}{_f(ga.get(k)):>10}")
    say(f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.1f} samples/s, {t['tokens_per_second']:.0f} tokens/s, peak memory {t['peak_rss_mb']:.0f} MB")
    say(f"run folder: {info['path']}")


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def evaluate_generative(run, data: str, samples: int | None = None) -> dict:
    """Loss/perplexity and generation scores of a saved generative run on another file (`tunesmith eval`)."""
    from ..data.loaders import load_table
    from .formats import detect_format, to_samples
    from .generation import generation_scores

    cfg = run.config
    df = load_table(data, "auto", cfg.data.encoding, cfg.data.encoding_errors)
    if isinstance(df, dict):
        df = df.get("test", next(iter(df.values())))
    fmt = detect_format(df.columns, cfg.data, cfg.task)
    items = to_samples(df, cfg.data, fmt, cfg.task, data)
    run._load()
    encoded = _encode(cfg, run._tokenizer, items)

    class _Solo:  # one process, the run's autocast
        num_processes, process_index = 1, 0
        autocast = staticmethod(run._autocast)

    loss = _lm_loss(run._model, encoded, cfg, _Solo, run._tokenizer.pad_token_id, loss_fn(cfg.task), alone=True)
    chosen = items[: samples if samples is not None else cfg.generate.samples]
    out = generate_for(run._model, run._tokenizer, chosen, cfg.generate, cfg.task, run._autocast, progress=True)
    return {"data": str(data), "n": len(items), "loss": loss, "perplexity": _ppl(loss),
            "generation": generation_scores(out, [s.reference for s in chosen], cfg.generate.json_keys)}
