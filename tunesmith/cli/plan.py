"""`tunesmith plan config.yaml`: predicted peak memory and time per optimizer step, before training.

tunesmith plan configs/quickstart/sentiment-lora.yaml                    # this machine (CPU matmul peak measured now)
tunesmith plan configs/quickstart/sentiment-lora.yaml --gpu h100         # a GPU by its published peak and memory
tunesmith plan config.yaml train.batch_size=64 --seq-len 128             # what-if: overrides, a fixed padded length
"""

from __future__ import annotations


def add_plan_command(subparsers) -> None:
    from ..tools.plan import GPUS

    p = subparsers.add_parser("plan", help="predict peak memory and time per step for a config (no training)")
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=64 strategy.name=full")
    p.add_argument("--gpu", help=f"plan for this GPU instead of this machine: {', '.join(GPUS)}")
    p.add_argument(
        "--seq-len",
        type=float,
        help="mean padded length per batch (default: measured on a sample of the training data)",
    )
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from ..config.loader import load_config
    from ..models.loading import resolve_model
    from ..strategies.registry import get_strategy_class
    from ..tools.plan import Shape, Workload, cpu_device, format_prediction, gpu_device, predict

    cfg = load_config(args.config, list(args.overrides))
    device = gpu_device(args.gpu) if args.gpu else None
    precision = _precision(cfg.train.precision, device)
    seq_len, n_examples, labels = args.seq_len, 0, 3
    probe = get_strategy_class(cfg.strategy.name).plan_family == "head-only"  # its feature pass runs over every example
    if seq_len is None or probe:
        lens, n_examples, labels = _lengths(cfg)
        if seq_len is None:
            seq_len = (
                sum(lens) / len(lens)
                if probe
                else _mean_padded(lens, cfg.train.batch_size, cfg.seed, cfg.train.group_by_length)
            )
    from transformers import AutoConfig

    shape = Shape.from_config(
        AutoConfig.from_pretrained(resolve_model(cfg.model.name).location, revision=cfg.model.revision), labels
    )
    strategy = {"name": cfg.strategy.name, **vars(cfg.strategy.options)}
    w = Workload(
        shape,
        strategy,
        cfg.train.batch_size,
        seq_len,
        precision,
        "cuda" if device else "cpu",
        cfg.data.max_length,
        n_examples,
    )
    print(format_prediction(w, predict(w, device=device or cpu_device())))
    return 0


def _precision(requested: str, device) -> str:
    if requested != "auto":
        return requested
    if device is None:
        from ..engine.precision import fast_cpu_bf16

        return "bf16" if fast_cpu_bf16() else "fp32"
    return "bf16" if "bf16" in device.peak_flops else "fp16"


def _lengths(cfg, sample: int = 2000) -> tuple[list[int], int, int]:
    """Token lengths of (up to `sample`) training rows as the task encodes them, the number of rows, the number of labels."""
    from ..models.loading import resolve_model
    from ..tasks.registry import build_task

    task = build_task(cfg)
    data = task.load_data()
    train = task.encode(data, task.load_tokenizer(resolve_model(cfg.model.name)))["train"]
    n = sum(split["rows"] for split in data.summary.values())
    return train.lengths[:sample], n, max(2, len(data.labels))


def _mean_padded(lengths: list[int], batch: int, seed: int, group: bool) -> float:
    """Mean width of the batches the loop will build: each padded to its longest member, rounded up to 8."""
    from ..engine.batches import plan_epoch

    batches = plan_epoch(lengths, batch, seed, 0, group)
    widths = [-(-max(lengths[r] for r in b) // 8) * 8 for b in batches]
    return sum(widths) / len(widths)
