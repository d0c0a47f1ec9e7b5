"""`tunesmith plan config.yaml`: predicted peak memory and time per optimizer step, before training.

    tunesmith plan configs/quickstart/sentiment-lora.yaml                    # this machine (CPU matmul peak measured now)
    tunesmith plan configs/quickstart/sentiment-lora.yaml --gpu h100         # a GPU by its published peak and memory
    tunesmith plan config.yaml train.batch_size=64 --seq-len 128             # what-if: overrides, a fixed padded length
"""

from __future__ import annotations


def add_plan_command(subparsers) -> None:
    from .plan import GPUS

    p = subparsers.add_parser("plan", help="predict peak memory and time per step for a config (no training)")
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=64 strategy.name=full")
    p.add_argument("--gpu", help=f"plan for this GPU instead of this machine: {', '.join(GPUS)}")
    p.add_argument("--seq-len", type=float, help="mean padded length per batch (default: measured on a sample of the training data)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from .config import load_config
    from .models.loading import resolve_model
    from .plan import Shape, Workload, cpu_device, format_prediction, gpu_device, predict

    cfg = load_config(args.config, list(args.overrides))
    device = gpu_device(args.gpu) if args.gpu else None
    precision = _precision(cfg.train.precision, device)
    seq_len, n_examples, labels = args.seq_len, 0, 3
    if seq_len is None or cfg.strategy.name == "linear-probe":
        lens, n_examples, labels = _lengths(cfg)
        if seq_len is None:
            seq_len = (sum(lens) / len(lens) if cfg.strategy.name == "linear-probe"
                       else _mean_padded(lens, cfg.train.batch_size, cfg.seed, cfg.train.group_by_length))
    from transformers import AutoConfig

    shape = Shape.from_config(AutoConfig.from_pretrained(resolve_model(cfg.model.name).location, revision=cfg.model.revision), labels)
    strategy = {"name": cfg.strategy.name, **vars(cfg.strategy.options)}
    w = Workload(shape, strategy, cfg.train.batch_size, seq_len, precision, "cuda" if device else "cpu", cfg.data.max_length, n_examples)
    print(format_prediction(w, predict(w, device=device or cpu_device())))
    return 0


def _precision(requested: str, device) -> str:
    if requested != "auto":
        return requested
    if device is None:
        from .train.precision import fast_cpu_bf16

        return "bf16" if fast_cpu_bf16() else "fp32"
    return "bf16" if "bf16" in device.peak_flops else "fp16"


def _lengths(cfg, sample: int = 2000) -> tuple[list[int], int, int]:
    """Token lengths of (up to `sample`) training texts, the number of examples, the number of labels."""
    from .data.batching import tokenize
    from .data.splits import load_splits
    from .models.loading import load_tokenizer, resolve_model

    splits = load_splits(cfg.data, cfg.seed)
    tok = load_tokenizer(resolve_model(cfg.model.name), cfg.model.revision, cfg.model.trust_remote_code)
    texts = splits.train.texts[:sample]
    n = len(splits.train) + len(splits.validation) + len(splits.test)
    return [len(x) for x in tokenize(tok, texts, cfg.data.max_length)], n, len(splits.label_names)


def _mean_padded(lengths: list[int], batch: int, seed: int, group: bool) -> float:
    """Mean width of the batches the loop will build: each padded to its longest member, rounded up to 8."""
    from .data.batching import plan_epoch

    batches = plan_epoch(lengths, batch, seed, 0, group)
    widths = [-(-max(lengths[r] for r in b) // 8) * 8 for b in batches]
    return sum(widths) / len(widths)
