"""finetune(): config -> data -> model -> strategy -> train -> evaluate -> record.

Everything a user can get wrong (config, data, model availability) is checked before the run
folder exists, so a failed start leaves nothing behind.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

import torch

from . import __version__
from .config import Config, config_to_dict, flatten, load_config, save_config
from .data.batching import tokenize
from .data.splits import Splits, load_splits
from .errors import ConfigError, RunError
from .evaluate.metrics import headline
from .models.loading import load_classifier, load_tokenizer, resolve_model
from .run import Run, read_json, write_run_files
from .strategies import build_strategy, count_parameters
from .tracking import make_tracker
from .train.loop import Interrupted, Tokenized, fit, predict_probs
from .train.precision import choose_precision
from .utils import atomic_dir, atomic_write_json, folder_size

# Settings that may change when a run is resumed (everything else must match the saved run).
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.patience", "train.keep_checkpoints", "audit.block_on_leakage")


def finetune(config: Config | str | Path | dict | None = None, overrides: list[str] | None = None, resume: str | Path | None = None) -> Run:
    """Fine-tune as configured and return the finished Run. `resume` continues an interrupted run folder."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import broadcast_object_list, set_seed

    run_dir = Path(resume) if resume else None
    cfg = _resolve_config(config, overrides, run_dir)
    if cfg.task != "text-classification":
        from .generative.pipeline import finetune_generative

        return finetune_generative(cfg, run_dir, resume is not None)

    # ---- cheap checks first: data, its audit, and model availability
    splits = load_splits(cfg.data, cfg.seed)
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source, cfg.model.revision, cfg.model.trust_remote_code)
    report = _audit(cfg, splits, tokenizer)
    _check_slice_columns(cfg)
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
    precision, why = choose_precision(cfg.train.precision, "cuda" if torch.cuda.is_available() else "cpu")
    AcceleratorState._reset_state(reset_partial_state=False)  # a second finetune() in one process may pick another precision
    # cpu=True lets Accelerate see a torchrun launch on a machine without GPUs (gloo backend).
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no" if precision == "fp32" else precision)
    say = acc.print

    # ---- model + strategy
    set_seed(cfg.seed)  # the head's initialisation depends on it
    quantize = getattr(strategy.options, "quantize", "none")
    model = strategy.prepare(load_classifier(source, splits.label_names, tokenizer.pad_token_id, cfg.model.revision, cfg.model.trust_remote_code, quantize))
    trainable, total = count_parameters(model)

    # ---- the run folder (the main process names it; the others learn the name)
    if run_dir is None:
        name = [_new_run_dir(cfg)] if acc.is_main_process else [None]
        run_dir = Path(broadcast_object_list(name)[0]) if acc.num_processes > 1 else Path(name[0])
    info = read_json(run_dir / "run.json") if resume else {}
    say(f"tunesmith {__version__} | run {run_dir}")
    say(f"data: train {len(splits.train)} / validation {len(splits.validation)} / test {len(splits.test)} rows, labels {splits.label_names}")
    for note in splits.notes:
        say(f"data: {note}")
    if report is not None:
        say(f"audit: {_audit_line(report)}" + "".join(f"\naudit: {w}" for w in report.warnings[:5]))
    say(f"model: {cfg.model.name} ({source.kind}: {source.location})")
    say(f"strategy: {strategy.name} | trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    say(f"precision: {precision} ({why}) | device {acc.device} | processes {acc.num_processes}")

    tracker = make_tracker(cfg.tracking, cfg.output_dir, run_dir.name, acc.is_main_process, info.get("mlflow_run_id"))
    if acc.is_main_process:
        info.update(
            status="running", name=run_dir.name, path=str(run_dir), tunesmith_version=__version__, created=info.get("created", _now()),
            task=cfg.task, model={"name": cfg.model.name, "kind": source.kind, "location": source.location},
            strategy=strategy.name, precision=precision, processes=acc.num_processes,
            parameters={"trainable": trainable, "total": total}, data=_data_record(splits), mlflow_run_id=tracker.run_id,
            mlflow_uri=_tracking_uri(cfg),
        )
        if report is not None:
            report.save(run_dir, "audit")
            info["audit"] = report.counts()
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "labels.json", splits.label_names)
        atomic_write_json(run_dir / "run.json", info)
        if not resume:
            tracker.log_params({**flatten(config_to_dict(cfg)), "trainable_parameters": trainable, "total_parameters": total, "precision": precision})
            if report is not None:
                tracker.log_metrics({f"audit.{k}": v for k, v in report.counts().items() if isinstance(v, (int, float))})

    # ---- train
    data = {s.name: Tokenized(tokenize(tokenizer, s.texts, cfg.data.max_length), s.labels) for s in (splits.train, splits.validation, splits.test)}
    trained = model
    if strategy.features_only:  # linear probe: run the frozen backbone once, train the head on its features
        data = _features(cfg, strategy, model, source, splits, data, acc, tokenizer.pad_token_id, say)
        trained = strategy.head_model(model)
    try:
        result = fit(
            trained, strategy, data["train"], data["validation"], splits.label_names, cfg.train, cfg.seed, acc,
            tokenizer.pad_token_id, run_dir, cfg.eval.batch_size, resume=resume is not None, log=tracker.log_metrics,
            class_weights=_class_weights(cfg, splits),
        )
    except Interrupted:
        _finish(acc, run_dir, info, tracker, "interrupted", "KILLED")
        raise
    except BaseException:
        _finish(acc, run_dir, info, tracker, "failed", "FAILED")
        raise

    # ---- test with the best weights, the baseline beside it, and the record
    trained = acc.unwrap_model(trained)
    probs = predict_probs(trained, data["test"], tokenizer.pad_token_id, cfg.eval.batch_size, acc.autocast, acc.process_index, acc.num_processes)
    if acc.is_main_process:
        from .evaluate.baseline import tfidf_baseline
        from .evaluate.metrics import classification_metrics

        test = classification_metrics(splits.test.labels, probs, splits.label_names)
        baseline = None
        if cfg.eval.baseline:
            baseline = tfidf_baseline(splits.train.texts, splits.train.labels, splits.test.texts, splits.test.labels, splits.label_names, cfg.seed)
        peak_mb = save_model(run_dir, strategy, model, tokenizer, result, info)
        metrics = {
            "test": test, "validation_best": result.best_metrics, "best_step": result.best_step, "steps": result.steps,
            "stopped_early": result.stopped_early, "baseline": {"name": "tfidf-logreg", "test": baseline} if baseline else None,
        }
        from .evaluate.report import extended_evaluation, tracked_figures  # intervals, sets, slices, calibration, robustness, efficiency

        metrics.update(extended_evaluation(cfg, run_dir, model, trained, data, tokenizer, splits, probs, acc, say))
        write_run_files(run_dir, cfg, info, metrics, result.history, splits, probs)
        tracker.log_metrics(tracked_figures(metrics))
        tracker.log_metrics({f"test_{k}": v for k, v in headline(test).items()})
        if baseline:
            tracker.log_metrics({f"baseline_test_{k}": v for k, v in headline(baseline).items()})
        tracker.log_metrics({"samples_per_second": result.samples_per_second, "peak_rss_mb": peak_mb})
        complete_run(cfg, run_dir, info, tracker)
        _print_summary(say, test, baseline, info)
    acc.wait_for_everyone()
    return Run(run_dir)


def complete_run(cfg: Config, run_dir: Path, info: dict, tracker) -> None:
    """Drop the checkpoints (unless kept), mark the run complete, hand the folder to the tracker."""
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    info.update(status="complete", finished=_now())
    atomic_write_json(run_dir / "run.json", info)
    tracker.log_artifacts(run_dir)
    tracker.finish("FINISHED")


def save_model(run_dir: Path, strategy, model, tokenizer, result, info: dict) -> float:
    """The trained model (as the strategy saves it) + tokenizer into model/, and the run's timings into info; returns peak MB."""
    with atomic_dir(run_dir / "model") as tmp:
        strategy.save(model, tmp)
        tokenizer.save_pretrained(tmp)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["timings"] = {
        "train_seconds": round(result.train_seconds, 2), "samples_per_second": round(result.samples_per_second, 2),
        "tokens_per_second": round(result.tokens_per_second, 1), "peak_rss_mb": round(peak_mb, 1),
        **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if torch.cuda.is_available() else {}),
    }
    info["saved_bytes"] = folder_size(run_dir / "model")
    return peak_mb


def _resolve_config(config, overrides, run_dir: Path | None) -> Config:
    if run_dir is None:
        if config is None:
            raise ConfigError("no config given; pass a YAML file (or --resume RUN_DIR)")
        return config if isinstance(config, Config) else load_config(config, overrides)
    if not (run_dir / "run.json").is_file():
        raise RunError(f"{run_dir}: not a tunesmith run folder (no run.json); pass the folder printed when the run started")
    status = read_json(run_dir / "run.json").get("status")
    if status == "complete":
        raise RunError(f"{run_dir}: this run is already complete; start a new run instead of --resume")
    if not (run_dir / "checkpoints" / "last").is_dir():
        raise RunError(f"{run_dir}: no checkpoint to resume from (it stopped before its first checkpoint); start the run again")
    saved = load_config(run_dir / "config.yaml")
    if config is None:
        return load_config(run_dir / "config.yaml", overrides)
    given = config if isinstance(config, Config) else load_config(config, overrides)
    a, b = flatten(config_to_dict(saved)), flatten(config_to_dict(given))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:4])
        raise ConfigError(f"--resume {run_dir}: the config differs from the run's ({detail}); only {', '.join(RESUMABLE_CHANGES)} may change")
    return given


def _features(cfg: Config, strategy, model, source, splits: Splits, data: dict, acc, pad_id: int, say) -> dict:
    from .strategies.linear_probe import cache_key, cached_features
    from .train.loop import Features, map_batches

    model.to(acc.device).eval()
    folder = Path(cfg.output_dir) / ".cache" / "features"
    out = {}
    for split in (splits.train, splits.validation, splits.test):
        key = cache_key(source.location, cfg.model.revision, cfg.data.max_length, split.fingerprint())

        def compute(tok=data[split.name]):
            def fn(inputs):
                with acc.autocast():
                    return strategy.features(model, {k: v.to(acc.device) for k, v in inputs.items()})

            return torch.from_numpy(map_batches(tok, pad_id, cfg.eval.batch_size, fn, acc.process_index, acc.num_processes))

        t0 = time.perf_counter()
        use = cfg.strategy.options.cache
        x, hit = cached_features(folder, key, compute, read=use, write=use and acc.is_main_process)
        say(f"linear-probe: {split.name} features {tuple(x.shape)} {'from cache' if hit else f'computed in {time.perf_counter() - t0:.1f}s'}")
        out[split.name] = Features(x, split.labels)
    return out


def _audit(cfg: Config, splits: Splits, tokenizer):
    """Audit the splits; leakage between train and validation/test stops the run (unless allowed)."""
    if not cfg.audit.enabled:
        return None
    from .data.audit import audit_splits
    from .errors import DataError

    report = audit_splits(splits, cfg.audit, tokenizer=tokenizer, max_length=cfg.data.max_length)
    if report.blocking:
        raise DataError(f"{report.blocking[0]} (or pass --allow-leakage)")
    return report


def _check_slice_columns(cfg: Config) -> None:
    """eval.slice_by / eval.sensitive_column name columns of the test data: a typo stops the run before training."""
    columns = [*cfg.eval.slice_by, *([cfg.eval.sensitive_column] if cfg.eval.sensitive_column else [])]
    if columns:
        from .evaluate.slices import column_values

        column_values(cfg.data, [], columns)


def _audit_line(report) -> str:
    c = report.counts()
    near = c.get("train.near_duplicate_clusters", 0)
    return (f"{c.get('train.exact_duplicate_rows', 0)} duplicate rows, {near} near-duplicate clusters, "
            f"{c.get('label_issues', 0)} likely label errors in train; no leakage between splits (audit.md in the run folder)")


def _class_weights(cfg: Config, splits: Splits):
    if cfg.train.class_weights == "none":
        return None
    from .data.balance import class_weights

    names = splits.label_names
    return torch.tensor(class_weights([names[y] for y in splits.train.labels], names), dtype=torch.float32)


def _new_run_dir(cfg: Config) -> str:
    base = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return str(path)


def _data_record(splits: Splits) -> dict:
    return {"splits": splits.summary(), "labels": splits.label_names, "notes": splits.notes}


def _tracking_uri(cfg: Config) -> str | None:
    if cfg.tracking.backend != "mlflow":
        return None
    from .tracking.mlflow_tracker import default_uri

    return cfg.tracking.uri or default_uri(cfg.output_dir)


def _finish(acc, run_dir: Path, info: dict, tracker, status: str, mlflow_status: str) -> None:
    if acc.is_main_process:
        info.update(status=status, stopped=_now())
        atomic_write_json(run_dir / "run.json", info)
        tracker.finish(mlflow_status)


def _print_summary(say, test: dict, baseline: dict | None, info: dict) -> None:
    t = info["timings"]
    say("")
    say(f"{'':22}{'macro-F1':>10}{'accuracy':>10}")
    say(f"{'test (fine-tuned)':22}{test['macro_f1']:>10.4f}{test['accuracy']:>10.4f}")
    if baseline:
        say(f"{'test (TF-IDF + LR)':22}{baseline['macro_f1']:>10.4f}{baseline['accuracy']:>10.4f}")
        gap = 100 * (test["macro_f1"] - baseline["macro_f1"])
        say(f"fine-tuned model {'beats' if gap > 0 else 'trails'} the baseline by {abs(gap):.1f} macro-F1 points")
    say(f"train {t['train_seconds']:.0f}s, {t['samples_per_second']:.0f} samples/s, peak memory {t['peak_rss_mb']:.0f} MB")
    say(f"run folder: {info['path']}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
