"""finetune(): the one path of every run, whatever the task and the strategy.

config -> task.load_data -> task.check_data (audit / lint) -> model -> strategy.prepare -> run folder
(running -> failed | interrupted | complete, for EVERY phase below) -> task.encode -> fit -> task.test
-> task.write_artifacts -> tracking -> complete.

Everything a user can get wrong (config, data, model availability) is checked before the run folder
exists, so a failed start leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config.dump import config_to_dict, flatten
from ..config.loader import load_config
from ..config.schema import Config
from ..errors import ConfigError, RunError
from ..forgetting import build_regularization, check_references
from ..forgetting import tracked as tracked_forgetting
from ..models.loading import resolve_model
from ..runs.folder import RunFolder
from ..runs.record import liveness, read_info
from ..runs.run import Run
from ..strategies import build_strategy, count_parameters
from ..tasks.registry import build_task
from ..tracking import make_tracker
from ..version import __version__
from .checkpoint import load_weights
from .context import Context
from .loop import fit
from .precision import cast_frozen_weights, choose_precision
from .sharding import check_shardable, wants_sharding

# Settings that may change when a run is resumed (everything else must match the saved run).
RESUMABLE_CHANGES = (
    "train.epochs",
    "train.max_steps",
    "train.patience",
    "train.keep_checkpoints",
    "audit.block_on_leakage",
)


def finetune(
    config: Config | str | Path | dict | None = None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    restart: str | Path | None = None,
    *,
    hold_out_test: bool = False,
    on_validation=None,
) -> Run:
    """Fine-tune as configured and return the finished Run. `resume` continues an interrupted run folder from its
    last checkpoint; `restart` trains a run folder that did not complete again from scratch, in place, with its
    saved config (+ `overrides`).

    For model selection (`tunesmith tune`): `hold_out_test` keeps the test split out of the run altogether (after
    the audit, the task's `hold_out_test` puts the validation split in its place, so "test" figures are validation
    figures); `on_validation(evaluation, step, metrics)` hears every validation and may raise errors.Pruned."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    if resume and restart:
        raise ConfigError("give --resume (continue from the last checkpoint) or --restart (from scratch), not both")
    resume_dir = Path(resume) if resume else None
    run_dir = resume_dir or (Path(restart) if restart else None)
    cfg = resolve_config(config, overrides, run_dir, restart=bool(restart))
    task = build_task(cfg)

    # ---- cheap checks first: data, its audit/lint, the strategy, model availability
    data = task.load_data()
    source = resolve_model(cfg.model.name)
    tokenizer = task.load_tokenizer(source)
    findings = task.check_data(data, tokenizer, source)
    if hold_out_test:  # audited with the test split (leakage), never evaluated on it
        data = task.hold_out_test(data)
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
    task.check_strategy(strategy)
    precision, why = choose_precision(cfg.train.precision, "cuda" if torch.cuda.is_available() else "cpu")
    # A second finetune() in one process may pick another precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True lets Accelerate see a torchrun launch on a machine without GPUs (gloo backend).
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no" if precision == "fp32" else precision)
    if resume_dir is not None:  # another number of processes: the same global batch, shared out anew
        cfg.train.batch_size = _rebatch(cfg.train.batch_size, read_info(resume_dir), acc)
    if wants_sharding(cfg.train, acc.num_processes):  # before the run folder exists: one line, nothing written
        check_shardable(strategy, precision, bool(cfg.regularize), cfg.train.fsdp, acc.device.type)
    model_key = f"{source.location}|{cfg.model.revision}|{task.encoding_key()}"
    ctx = Context(acc, cfg, precision, resume=resume_dir is not None, minimize=task.minimize, model_key=model_key)
    if on_validation is not None:
        ctx.on_validation = on_validation

    # ---- model + strategy
    def build_model():
        set_seed(cfg.seed)  # the head's initialisation depends on it
        model = task.load_model(source, tokenizer, strategy, data.labels)
        if strategy.quantize == "none":  # a quantized base is placed by bitsandbytes
            model.to(acc.device)
        return strategy.prepare(model)

    model = build_model()
    if cfg.regularize and strategy.features_only:
        raise ConfigError(
            f"regularize: strategy {strategy.name} trains a head on frozen features; the model cannot forget "
            "anything, so there is nothing to regularise (remove `regularize`, or use full/lora)"
        )
    references = task.references(model, tokenizer, ctx)  # eval.reference: files and earlier runs, read now
    check_references(cfg.regularize, references, task)
    trainable, total = count_parameters(model)
    frozen_cast = cast_frozen_weights(model, precision) if task.cast_frozen_weights and not strategy.saves_base else 0

    # ---- the run folder: from here on, whatever happens is recorded (failed / interrupted) in run.json and MLflow
    def tracker(name: str, run_id: str | None):
        return make_tracker(cfg.tracking, cfg.output_dir, name, acc.is_main_process, run_id)

    folder = RunFolder.open(cfg, acc, run_dir, tracker, restart=bool(restart))
    ctx.run_dir, ctx.log = folder.path, folder.tracker.log_metrics
    with folder.lifecycle():
        say = ctx.say
        say(f"tunesmith {__version__} | run {folder.path}")
        rows = " / ".join(f"{k} {v['rows']}" for k, v in data.summary.items())
        say(f"data: {cfg.task}, {rows} rows" + (f", labels {data.labels}" if data.labels else ""))
        for line in [*(f"data: {n}" for n in data.notes), *findings.lines]:
            say(line)
        say(f"model: {cfg.model.name} ({source.kind}: {source.location})")
        say(
            f"strategy: {strategy.name} | trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        )
        if frozen_cast:
            say(
                f"precision: frozen weights stored in {precision} ({frozen_cast / 2**20:.0f} MiB saved), trained ones in fp32"
            )
        checkpointing = " | gradient checkpointing" if cfg.train.gradient_checkpointing else ""
        if wants_sharding(cfg.train, acc.num_processes):
            checkpointing += (
                f" | fsdp ({cfg.train.fsdp.sharding} sharding{', cpu offload' if cfg.train.fsdp.cpu_offload else ''})"
            )
        say(f"precision: {precision} ({why}) | device {acc.device} | processes {acc.num_processes}{checkpointing}")
        folder.start(
            cfg,
            model={"name": cfg.model.name, "kind": source.kind, "location": source.location},
            strategy=strategy.name,
            precision=precision,
            processes=acc.num_processes,
            parameters={"trainable": trainable, "total": total},
            data={"splits": data.summary, "labels": data.labels, "notes": data.notes, **data.record},
            **findings.record,
        )
        if acc.is_main_process:
            if findings.save:
                findings.save(folder.path)
            if not ctx.resume:
                params = {"trainable_parameters": trainable, "total_parameters": total, "precision": precision}
                folder.tracker.log_params({**flatten(config_to_dict(cfg)), **params})
                folder.tracker.log_metrics(findings.metrics)

        # ---- encode, score the pretrained model (once: a resumed run keeps the first scores), train
        batches = task.encode(data, tokenizer)
        state = folder.info.get("task_state")
        if state is None:
            state = {"before": task.before_training(model, data, batches, ctx)}
            if references:
                say(f"forgetting: scoring {len(references)} reference set(s) with the original model")
                state["forgetting"] = task.forgetting_before(model, references, ctx)
            folder.update(task_state=state)  # kept until the run completes
        acc.wait_for_everyone()
        regularization = build_regularization(cfg.regularize, model, task, references, ctx)
        if regularization:
            say(f"regularize: {', '.join(regularization.names)} (each logged as train_<name>)")
        trained, batches = strategy.training_view(model, batches, ctx)
        curve = references if cfg.eval.reference_every_eval else {}

        def validate(m) -> dict:
            return {
                **task.validate(m, batches, ctx),
                **task.forgetting_curve(model, curve, state.get("forgetting"), ctx),
            }

        train = task.train_batches(trained, batches, strategy, ctx)
        folder.update(**ctx.record)
        result = fit(
            trained,
            strategy,
            train,
            task.loss,
            validate,
            cfg.train,
            ctx,
            folder.reached,
            regularization,
            task.train_figures,
        )

        # ---- with the best weights: save, test, write, track
        model, trained = acc.unwrap_model(model), acc.unwrap_model(trained)
        if result.sharded:  # FSDP trained shards: every process builds the plain model and loads the best weights
            model = trained = build_model()
            if task.cast_frozen_weights and not strategy.saves_base:
                cast_frozen_weights(model, precision)
            load_weights(folder.path / "checkpoints" / "best", model)
        task.after_fit(model, trained)
        if acc.is_main_process:
            peak_mb = folder.save_model(strategy, model, tokenizer, result)
        acc.wait_for_everyone()
        metrics = task.test(model, trained, data, batches, state["before"], ctx)
        forgetting = task.forgetting_after(model, trained, references, state.get("forgetting") or {}, ctx)
        if acc.is_main_process:
            fitted = {"best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early}
            metrics.update(validation_best=result.best_metrics, **fitted)
            if forgetting:
                metrics["forgetting"] = forgetting
                metrics["forgetting"]["summary"] = task.forgetting_summary(metrics)
                folder.tracker.log_metrics(tracked_forgetting(forgetting))
            task.write_artifacts(folder.path, metrics, result.history, data, folder.info, ctx)
            folder.tracker.log_metrics(task.tracked(metrics))
            folder.tracker.log_metrics({"samples_per_second": result.samples_per_second, "peak_rss_mb": peak_mb})
            folder.complete(cfg.train.keep_checkpoints)
            said = [f"forgetting: {metrics['forgetting']['summary']}"] if forgetting else []
            for line in [*task.summary_lines(metrics, folder.info), *said, f"run folder: {folder.path}"]:
                say(line)
    acc.wait_for_everyone()
    return Run(folder.path)


def resolve_config(config, overrides, run_dir: Path | None, restart: bool = False) -> Config:
    """The run's config: a new one; for --resume the saved one (only RESUMABLE_CHANGES may differ); for --restart
    the saved one + overrides. Refuses a run that is complete, or still running (two writers corrupt a folder)."""
    if run_dir is None:
        if config is None:
            raise ConfigError("no config given; pass a YAML file (or --resume RUN_DIR)")
        return config if isinstance(config, Config) else load_config(config, overrides)
    run_dir, flag = Path(run_dir), "--restart" if restart else "--resume"
    live = liveness(run_dir, read_info(run_dir))
    if live.status == "complete":
        raise RunError(
            f"{run_dir}: this run is already complete; start a new run instead of {flag}: tunesmith train {run_dir / 'config.yaml'}"
        )
    if live.status == "running" and live.process:
        pid, host = live.process.get("pid"), live.process.get("host")
        raise RunError(
            f"{run_dir}: this run is still running (pid {pid} on {host}, {live.last_seen()}); a second process would "
            f"corrupt its folder: wait for it, or stop it first (`kill {pid}` on {host}; in training it checkpoints first)"
        )
    if restart:
        if config is not None:
            raise ConfigError(f"--restart {run_dir} trains with the run's saved config (+ overrides); drop {config}")
        return load_config(run_dir / "config.yaml", overrides, strict=False)
    if not (run_dir / "checkpoints" / "last").is_dir():
        if live.status == "died":
            why = f"it died before its first checkpoint ({live.last_seen()}: {live.why})"
        else:
            why = f"it has no checkpoint (status {live.status}: it stopped before its first one)"
        raise RunError(
            f"{run_dir}: cannot be resumed: {why}. Train it again from scratch in the same folder: "
            f"tunesmith train --restart {run_dir}"
        )
    if config is None:
        return load_config(run_dir / "config.yaml", overrides, strict=False)
    saved = load_config(run_dir / "config.yaml", strict=False)
    given = config if isinstance(config, Config) else load_config(config, overrides)
    a, b = flatten(config_to_dict(saved)), flatten(config_to_dict(given))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:4])
        raise ConfigError(
            f"--resume {run_dir}: the config differs from the run's ({detail}); only {', '.join(RESUMABLE_CHANGES)} may change"
        )
    return given


def _rebatch(batch_size: int, info: dict, acc) -> int:
    was, now = info.get("processes") or 1, acc.num_processes
    if was == now:
        return batch_size
    if (batch_size * was) % now:
        raise ConfigError(
            f"--resume on {now} processes: the run's global micro-batch ({batch_size} x {was} processes) does not divide"
            f" by {now}; resume on a number of processes that divides {batch_size * was}"
        )
    acc.print(f"resuming on {now} processes (was {was}): train.batch_size {batch_size * was // now} keeps the batch")
    return batch_size * was // now
