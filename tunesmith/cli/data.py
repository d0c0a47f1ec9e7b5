"""`tunesmith data audit|prepare|lint`: thin calls of tunesmith.data.audit / tunesmith.data.prepare.

tunesmith data audit data.csv [--test test.csv] [--out reports/]   # a report, no changes
tunesmith data prepare config.yaml [--out datasets/]               # a versioned dataset folder
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError

AUDIT_EXIT_BLOCKING = 1  # `data audit` found a problem that would stop training


def add_data_commands(subparsers) -> None:
    """Register `data audit` and `data prepare` on the top-level subparsers of the tunesmith CLI."""
    d = subparsers.add_parser("data", help="audit or prepare a dataset")
    sub = d.add_subparsers(dest="data_command", required=True)

    a = sub.add_parser("audit", help="report duplicates, leakage, label errors, balance and lengths (changes nothing)")
    a.add_argument(
        "file",
        help="training data (CSV, JSONL, Parquet; pkg://package/file; or a folder of images, one folder per label)",
    )
    a.add_argument("--validation", help="validation file to check for leakage against the training data")
    a.add_argument("--test", help="test file to check for leakage against the training (and validation) data")
    a.add_argument("--text-column", default="text")
    a.add_argument("--label-column", default="label")
    a.add_argument("--out", help="folder for audit.md + audit.json (default: print the Markdown report)")
    a.add_argument("--delimiter", help="CSV field delimiter (default: comma, or what the file's head shows)")
    a.add_argument(
        "--near-threshold",
        type=float,
        help="similarity for near duplicates: shingle Jaccard, or word sequences for 4+ words (default 0.7)",
    )
    a.add_argument("--no-label-errors", action="store_true", help="skip the cross-validated label-error model")
    a.add_argument("--max-length", type=int, help="report the share of texts longer than this many tokens")
    a.add_argument("--tokenizer", help="count lengths in tokens of this model's tokenizer (alias, folder or hub id)")
    a.add_argument(
        "--model",
        help="the model you will fine-tune (alias, folder or hub id): its frozen features join TF-IDF in the "
        "label-error model (more precise), and its tokenizer counts lengths",
    )
    a.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of CSV/JSONL files (undecodable bytes are reported, not fatal)",
    )
    a.add_argument(
        "--image-column",
        help="audit images: the table's column of image paths/bytes (a folder of class folders needs none)",
    )
    a.set_defaults(func=cmd_audit)

    p = sub.add_parser("prepare", help="clean, deduplicate, split, balance and augment into a versioned dataset folder")
    p.add_argument("config", help="YAML with a data: section and an optional prepare: (and audit:) section")
    p.add_argument("--out", help="folder for the dataset folder (default: prepare.output_dir)")
    p.set_defaults(func=cmd_prepare)

    lt = sub.add_parser(
        "lint", help="generative tasks: render samples, show which tokens train, catch EOS/template/truncation mistakes"
    )
    lt.add_argument("config", help="the YAML config of the run to check (task: causal-lm or seq2seq)")
    lt.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    lt.add_argument(
        "--show", type=int, default=2, help="rendered samples to print (trained tokens in [[double brackets]])"
    )
    lt.set_defaults(func=cmd_lint)

    pr = sub.add_parser(
        "pairs", help="preference pairs (chosen, rejected) from a generative run's failing answers or corrections"
    )
    pr.add_argument("run", help="a generative run folder (or models:/NAME@ALIAS)")
    pr.add_argument(
        "--from",
        dest="source",
        required=True,
        help="`generations` (the run answers a split of its data) or a server's prediction log (file or folder) "
        "with corrections imported by `tunesmith feedback import`",
    )
    pr.add_argument("--split", help="generations: the split the run answers (train, validation, test; default train)")
    pr.add_argument("--limit", type=int, help="generations: at most this many samples (a seeded sample)")
    pr.add_argument(
        "--check",
        help="generations: json | fields | exact | reward (default fields with generate.json_keys, else exact)",
    )
    pr.add_argument("--reward", help="--check reward: module:function(completions, prompts, references) -> floats")
    pr.add_argument("--threshold", type=float, default=0.5, help="--check reward: answers scoring below fail")
    pr.add_argument("--out", help="the pairs JSONL (default: <run>/pairs-<split>.jsonl, or pairs-feedback.jsonl)")
    pr.add_argument(
        "--batch-size", type=int, help="prompts generated together (default: the run's generate.batch_size)"
    )
    pr.set_defaults(func=cmd_pairs)


def cmd_audit(args) -> int:
    from ..config.schema import AuditConfig
    from ..data.audit import audit
    from ..data.loaders import load_table

    if args.image_column or _is_image_folder(args.file):
        return _audit_images(args)
    cfg = AuditConfig()
    if args.near_threshold is not None:
        cfg.near_threshold = args.near_threshold
    cfg.label_errors = not args.no_label_errors
    frames = {}
    for name, spec in (("train", args.file), ("validation", args.validation), ("test", args.test)):
        if spec:
            table = load_table(spec, "auto", args.encoding, "replace", args.delimiter)
            if isinstance(table, dict):
                raise ConfigError(
                    f"{spec}: a saved DatasetDict folder; audit one split file at a time (export it to CSV/Parquet)"
                )
            frames[name] = table
    embed = None
    if args.model:
        from ..models.features import text_embedder
        from ..models.loading import load_tokenizer, resolve_model

        source = resolve_model(args.model)
        tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else load_tokenizer(source)
        import torch

        from ..engine.precision import choose_precision, compute_dtype

        dtype = compute_dtype(choose_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")[0])
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunesmith" / "features"
        embed = text_embedder(
            source, tokenizer, args.max_length or 256, cache, dtype=dtype, log=lambda s: print(s, file=sys.stderr)
        )
    else:
        tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    report = audit(
        frames.pop("train"),
        frames,
        args.text_column,
        args.label_column,
        cfg,
        sources={"train": args.file, "validation": args.validation, "test": args.test},
        tokenizer=tokenizer,
        max_length=args.max_length,
        embed=embed,
        embed_name=f"{args.model} features",
    )
    if args.out:
        md, js = report.save(Path(args.out))
        print(f"wrote {md} and {js}")
    else:
        print(report.to_markdown())
    for msg in report.blocking:
        print(f"blocking: {msg}", file=sys.stderr)
    return AUDIT_EXIT_BLOCKING if report.blocking else 0


def _is_image_folder(spec: str) -> bool:
    from ..utils import resolve_path

    path = resolve_path(spec)
    return path.is_dir() and not any(
        (path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")
    )


def _audit_images(args) -> int:
    """The image audit: exact and near-duplicate pictures, leakage, label errors (with --model), balance, sizes."""
    from ..config.loader import load_config
    from ..tasks.images.evaluation import audit_image_sources

    images = {"column": args.image_column} if args.image_column else {}
    cfg = load_config({"task": "image-classification", "data": {"path": args.file, "label_column": args.label_column},
                       "images": images, "audit": {"label_errors": not args.no_label_errors}})  # fmt: skip
    specs = {k: v for k, v in (("train", args.file), ("validation", args.validation), ("test", args.test)) if v}
    report = audit_image_sources(specs, cfg, args.model, say=lambda s: print(s, file=sys.stderr))
    if args.out:
        written = report.save(Path(args.out))
        print("wrote " + ", ".join(str(p) for p in written))
    else:
        print(report.to_markdown())
    for msg in report.blocking:
        print(f"blocking: {msg}", file=sys.stderr)
    return AUDIT_EXIT_BLOCKING if report.blocking else 0


def cmd_prepare(args) -> int:
    from ..data.prepare import prepare

    data, prep, aud, seed = load_prepare_config(args.config)
    result = prepare(data, prep, aud, seed=seed, out=args.out)
    m = result.manifest
    print(f"wrote {result.path}")
    print(
        "  "
        + ", ".join(f"{n} {info['rows']} rows" for n, info in m["splits"].items())
        + f"; fingerprint {m['fingerprint']}"
    )
    for step in m["cleaning"]:
        print(
            f"  {step['set']}: {step['rule']} {step['action']} {step['rows']} rows"
            + (f" ({step['detail']})" if step["detail"] else "")
        )
    if result.class_weights:
        print("  class weights: " + ", ".join(f"{k} {v:.3f}" for k, v in m["balance"]["class_weights"].items()))
    for msg in result.input_audit.blocking:
        print(f"  fixed: {msg.split(';')[0]}")
    return 0


def cmd_lint(args) -> int:
    """Exit 0 when the data renders correctly, 1 when the lint found problems (each printed with its fix)."""
    from ..config.loader import load_config
    from ..models.loading import resolve_model
    from ..tasks.registry import build_task

    cfg = load_config(args.config, args.overrides)
    task = build_task(cfg)
    data = task.load_data()
    tokenizer = task.load_tokenizer(resolve_model(cfg.model.name))
    try:
        report = task.lint(data, tokenizer, show=args.show)
    except ConfigError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    for k, text in enumerate(report.shown, 1):
        print(f"--- sample {k} (trained tokens in [[double brackets]]) ---\n{text}\n")
    st = report.stats
    print(
        f"{st['samples']} samples ({data.record.get('format', cfg.task)}), {st['trained_tokens']:,} trained tokens, mean length {st['mean_length']:.0f}, "
        f"longest {st['max_length']} (max_length {cfg.data.max_length})"
    )
    for w in report.warnings:
        print(f"warning: {w}")
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    if report.ok:
        print("lint: ok (EOS trained, training and inference prompts identical, nothing truncated inside a completion)")
    return 0 if report.ok else 1


def cmd_pairs(args) -> int:
    from ..tools.pairs import pairs_from_feedback, pairs_from_generations

    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.source == "generations":
        summary = pairs_from_generations(
            args.run,
            split=args.split or "train",
            limit=args.limit,
            check=args.check,
            reward=args.reward,
            threshold=args.threshold,
            out=args.out,
            batch_size=args.batch_size,
            say=say,
        )
    else:
        options = ("split", "limit", "check", "reward", "batch_size")
        given = [f"--{k.replace('_', '-')}" for k in options if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: for --from generations only; a log's pairs are its corrections")
        summary = pairs_from_feedback(args.run, args.source, args.out, say=say)
    print(summary["line"])
    return 0


def load_prepare_config(path: str | Path):
    """(data, prepare, audit, seed) from a tunesmith config; the audit uses the top-level seed."""
    import dataclasses

    from ..config.loader import load_config

    cfg = load_config(path)
    return cfg.data, cfg.prepare, dataclasses.replace(cfg.audit, seed=cfg.seed), cfg.seed


def _tokenizer(name: str):
    from ..models.loading import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(name))
