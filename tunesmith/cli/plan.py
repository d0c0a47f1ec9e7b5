"""`tunesmith plan config.yaml`: predicted peak memory and time per optimizer step, before training.

tunesmith plan configs/quickstart/sentiment-lora.yaml                    # this machine (CPU matmul peak measured now)
tunesmith plan configs/quickstart/sentiment-lora.yaml --gpu h100         # a GPU by its published peak and memory
tunesmith plan config.yaml train.batch_size=64 --seq-len 128             # what-if: overrides, a fixed padded length
tunesmith plan configs/plan/llama-2-7b-lora.yaml --gpu h100 --gpus 8 --price 2.50 --seq-len 1024 --examples 50000
                                                   # every way to spread it (DDP, ZeRO-2/3, FSDP, offload): GB/GPU, time, $
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
    p.add_argument(
        "--gpus", type=int, help="plan the run on this many GPUs of --gpu: memory per GPU, time and cost per mode"
    )
    p.add_argument("--price", type=float, help="$ per GPU-hour: the run's cost (with --gpus)")
    p.add_argument("--examples", type=int, help="training examples (with --gpus; default: counted in the data)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from ..config.loader import load_config
    from ..models.loading import resolve_model
    from ..strategies.registry import get_strategy_class
    from ..tools.plan import Shape, Workload, cpu_device, format_prediction, gpu_device, predict

    cfg = load_config(args.config, list(args.overrides))
    if args.gpus is not None or args.price is not None:
        return _plan_scale(cfg, args)
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


def _plan_scale(cfg, args) -> int:
    """`--gpus N`: the run spread over N GPUs in every mode (tools/plan_scale.py), with hours and $."""
    from transformers import AutoConfig

    from ..errors import ConfigError
    from ..models.loading import resolve_model
    from ..strategies.registry import get_strategy_class
    from ..tools.plan import gpu_device
    from ..tools.plan_scale import LMShape, ScaleRun, format_modes, plan_modes, steps_for

    if not args.gpu:
        raise ConfigError("plan --gpus needs the GPU it plans for: add --gpu NAME (e.g. --gpu h100)")
    gpus = 1 if args.gpus is None else args.gpus
    if gpus < 1 or (args.price is not None and args.price <= 0):
        raise ConfigError("plan: --gpus must be at least 1 and --price a positive $ per GPU-hour")
    device = gpu_device(args.gpu)
    opts = vars(cfg.strategy.options)
    family = get_strategy_class(cfg.strategy.name).plan_family
    if family not in ("dense", "low-rank"):
        raise ConfigError(f"plan --gpus models full fine-tuning and LoRA/QLoRA, not strategy '{cfg.strategy.name}'")
    seq_len, examples = args.seq_len, args.examples
    if seq_len is None or (examples is None and cfg.train.max_steps is None):
        try:
            lens, n, _ = _lengths(cfg)
        except Exception as e:  # a planning-only model folder has no tokenizer; the data may not be here
            raise ConfigError(
                f"plan --gpus could not measure the training data ({type(e).__name__}: {str(e).splitlines()[0][:160]});"
                " pass --seq-len and --examples"
            ) from None
        seq_len = seq_len or sum(lens) / len(lens)
        examples = examples or int(n * (1 - cfg.data.validation_size - cfg.data.test_size))
    t = cfg.train
    run = ScaleRun(
        shape=LMShape.from_config(AutoConfig.from_pretrained(resolve_model(cfg.model.name).location)),
        family=family,
        quantized=opts.get("quantize") == "nf4",
        gpus=gpus,
        micro_batch=t.batch_size,
        seq_len=seq_len,
        grad_accum=t.grad_accum,
        steps=steps_for(examples or 0, t.epochs, t.batch_size, gpus, t.grad_accum, t.max_steps),
        precision=_precision(t.precision, device),
        gradient_checkpointing=t.gradient_checkpointing,
        lora_r=opts.get("r", 16),
        lora_targets=opts.get("target_modules"),
    )
    mode = t.distributed + ("+offload" if t.distributed == "fsdp" and t.fsdp.cpu_offload else "")
    print(format_modes(run, plan_modes(run, device, args.price), device, mode))
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
