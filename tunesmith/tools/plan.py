"""Predict peak memory and time per optimizer step before training (`tunesmith plan config.yaml`).

Memory = framework baseline + weights + gradients + AdamW states + activations kept for backward
(per layer and token, by precision and strategy) + attention maps. Time = training FLOPs / (matmul
peak x efficiency) + optimizer traffic / memory bandwidth. Every constant below says where it comes
from; `benchmarks/speed.py` prints these predictions beside measurements (README: "Speed and memory").

Encoder models of the BERT family are modelled layer by layer (hidden size, FFN size, heads, layers
from the model's config.json); other architectures use the same per-layer terms, which is a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models.loading import resolve_model
from ..strategies.registry import get_strategy_class
from .plan_devices import (
    ACTIVATIONS,
    CPU_BASE_MB,
    EFFICIENCY,
    GPU_BASE_MB,
    GPU_MS_PER_MODULE,
    GPUS,
    MB,
    OPTIMIZER_BYTES,
    PEFT_IMPORT_MB,
    STEP_OVERHEAD_MS,
    TRANSIENT,
    Device,
    cpu_device,
    gpu_device,
    measure_cpu_peak,
    measured_gpu,
)


@dataclass
class Shape:
    """What the prediction needs to know about the model (read from its config.json)."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    positions: int = 512
    type_vocab: int = 2
    labels: int = 3

    @classmethod
    def from_config(cls, config, labels: int = 3) -> Shape:
        get = lambda *names, default=None: next(
            (getattr(config, n) for n in names if getattr(config, n, None) is not None), default
        )  # noqa: E731
        hidden = get("hidden_size", "d_model", "n_embd")
        return cls(
            layers=get("num_hidden_layers", "n_layer", "num_layers"),
            hidden=hidden,
            heads=get("num_attention_heads", "n_head"),
            ffn=get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
            vocab=get("vocab_size"),
            positions=get("max_position_embeddings", "n_positions", default=512),
            type_vocab=get("type_vocab_size", default=0) or 0,
            labels=labels,
        )

    def layer_linear(self) -> int:
        return 4 * self.hidden**2 + 2 * self.hidden * self.ffn

    def layer_params(self) -> int:
        d, f = self.hidden, self.ffn
        return self.layer_linear() + 4 * d + f + d + 4 * d  # + biases of q/k/v/o, ffn in, ffn out + 2 norms

    def embedding_params(self) -> int:
        return (self.vocab + self.positions + self.type_vocab) * self.hidden + 2 * self.hidden

    def head_params(self) -> int:
        d = self.hidden
        return d * d + d + d * self.labels + self.labels  # pooler + classifier

    def params(self) -> int:
        return self.embedding_params() + self.layers * self.layer_params() + self.head_params()

    def linear(self) -> int:
        """Parameters that take part in matrix products (embeddings are lookups)."""
        return self.layers * self.layer_linear() + self.hidden**2 + self.hidden * self.labels


@dataclass
class Workload:
    shape: Shape
    strategy: dict
    batch_size: int
    seq_len: float
    """Mean padded length of a batch (length-grouped dynamic padding: about the mean text length, rounded up to 8);
    linear-probe: the mean text length (its feature pass sorts examples by length)."""
    precision: str = "bf16"
    device: str = "cpu"
    max_length: int = 128
    n_examples: int = 0
    """Examples in the data set (linear-probe: the feature pass runs over all of them once)."""

    @classmethod
    def from_model_name(cls, model: str, strategy: dict, **kw) -> Workload:
        from transformers import AutoConfig

        labels = kw.pop("labels", 3)
        return cls(Shape.from_config(AutoConfig.from_pretrained(resolve_model(model).location), labels), strategy, **kw)


@dataclass
class Prediction:
    peak_mb: float
    ms_per_step: float
    memory: dict = field(default_factory=dict)
    """Parts of peak_mb, MB."""
    time: dict = field(default_factory=dict)
    """Parts of ms_per_step, and the one-off feature pass of linear-probe."""
    params: dict = field(default_factory=dict)
    device: str = ""
    sources: list = field(default_factory=list)


def _lora_targets(strategy: dict) -> list[tuple[int, int]]:
    """(in, out) multipliers of the hidden size per adapted module of one layer (BERT names)."""
    targets = strategy.get("target_modules") or ["query", "value"]
    sizes = {"query": [(1, 1)], "key": [(1, 1)], "value": [(1, 1)], "dense": [(1, 1), (1, 4), (4, 1)]}
    if targets in (["all-linear"], "all-linear"):
        targets = list(sizes)
    return [x for t in targets for x in sizes.get(t, [])]


def plan_family(strategy: dict) -> str:
    """dense | top-layers | growing | head-only | low-rank | adapter: how a strategy is modelled, as its class declares."""
    return strategy.get("plan") or get_strategy_class(strategy.get("name", "full")).plan_family or "dense"


def trainable(shape: Shape, strategy: dict) -> tuple[int, int, int]:
    """(trainable parameters, trainable linear parameters, layers that need backward) for a strategy."""
    family = plan_family(strategy)
    d, f, L = shape.hidden, shape.ffn, shape.layers
    classifier = d * shape.labels + shape.labels
    if family == "dense":
        return shape.params(), shape.linear(), L
    if family in ("top-layers", "growing"):
        k = strategy.get("layers", 2) if family == "top-layers" else L
        return k * shape.layer_params() + shape.head_params(), k * shape.layer_linear() + d * d + d * shape.labels, k
    if family == "head-only":
        return classifier, d * shape.labels, 0
    if family == "low-rank":
        r = strategy.get("r", 8)
        targets = strategy.get("target_modules") or ["query", "value"]
        sizes = {"query": [(d, d)], "key": [(d, d)], "value": [(d, d)], "dense": [(d, d), (d, f), (f, d)]}
        if targets in (["all-linear"], "all-linear"):
            targets = list(sizes)
        adapters = L * sum(r * (i + o) for t in targets for i, o in sizes.get(t, []))
        adapters += 2 * r * d if "dense" in targets else 0  # BERT's pooler is named `dense` too
        return adapters + classifier, adapters + d * shape.labels, L
    # other adapters (ia3, prompt/prefix tuning): few parameters, backward through every layer
    return classifier, d * shape.labels, L


def predict(w: Workload, peak_flops: dict | None = None, device: Device | None = None) -> Prediction:
    """Peak memory (CPU: resident set; GPU: max allocated) and time per optimizer step for a workload."""
    s, family = w.shape, plan_family(w.strategy)
    cpu = w.device == "cpu"
    dev = device or cpu_device(peak_flops)
    prec = w.precision if w.precision in dev.peak_flops else "fp32"
    sources = [f"peak {prec} {dev.peak_flops[prec] / 1e12:.3g} TFLOP/s: {dev.source}"]
    declared = get_strategy_class(w.strategy.get("name", "full")).plan_family
    if "plan" not in w.strategy and declared is None:
        sources.append(f"strategy {w.strategy.get('name')} declares no plan_family: planned as full fine-tuning")
    P, P_lin = s.params(), s.linear()
    P_t, P_t_lin, back_layers = trainable(s, w.strategy)
    tokens = w.batch_size * w.seq_len

    # ---- memory
    peft = family in ("low-rank", "adapter")
    mem = {
        "framework": (CPU_BASE_MB + (PEFT_IMPORT_MB if peft else 0)) if cpu else GPU_BASE_MB,
        "weights": 4 * P / MB,
        "gradients": 4 * P_t / MB,
        "adamw_states": 8 * P_t / MB,
    }
    kind = "low-rank" if family == "low-rank" else "dense"
    a, b, c = ACTIVATIONS[(kind, "fp32" if prec == "fp32" else "bf16")]
    per_token_layer = a * s.hidden + b * s.ffn + (c if cpu else 0) * s.heads * w.seq_len
    if family == "head-only":
        # No graph: the feature pass holds one evaluation batch (128 x max_length) of one layer at a time, and the features.
        mem["activations"] = (128 * w.max_length * (4 * s.hidden + 4 * s.ffn + 4 * s.heads * w.max_length)) / MB
        mem["features"] = 4 * s.hidden * max(w.n_examples, 0) / MB
    else:
        act = back_layers * tokens * per_token_layer + tokens * 12 * s.hidden  # + the embeddings' output and norm
        mem["activations"] = act * TRANSIENT[kind] / MB
        if prec != "fp32":
            # autocast keeps a low-precision copy of each trained weight it casts until the forward+backward ends
            mem["autocast_weight_copies"] = 2 * P_t_lin / MB
    peak = sum(mem.values())
    if not cpu and dev.memory_gb and peak > dev.memory_gb * 1000:
        sources.append(f"does not fit: {peak:.0f} MB > {dev.memory_gb} GB")

    # ---- time
    fitted = {"growing": "top-layers", "adapter": "dense"}.get(family, family)  # the families EFFICIENCY was fitted on
    eff = EFFICIENCY[("cpu" if cpu else "cuda", fitted)]
    attn = 12 * s.layers * s.hidden * w.seq_len * tokens  # per step, fwd+bwd (QK^T and AV)
    frozen_lin = P_lin - P_t_lin
    if family == "head-only":
        flops = 6 * P_t_lin * w.batch_size
        # the feature pass: forward only, over every example, batches sorted by length (seq_len = mean text length)
        feature_flops = (2 * P_lin * w.seq_len + 4 * s.layers * s.hidden * w.seq_len**2) * w.n_examples
    elif family in ("top-layers", "growing"):
        top = back_layers * s.layer_linear()
        flops = (
            2 * P_lin * tokens + 4 * (top + s.hidden**2 + s.hidden * s.labels) * tokens + attn * back_layers / s.layers
        )
        feature_flops = 0
    else:  # full, lora, other adapters: backward through everything; frozen weights need no weight gradient
        flops = 6 * P_t_lin * tokens + 4 * frozen_lin * tokens + attn
        feature_flops = 0
    t_matmul = flops / (dev.peak_flops[prec] * eff)
    overhead_ms = STEP_OVERHEAD_MS["cpu" if cpu else "cuda"]
    if not cpu:
        adapters = s.layers * len(_lora_targets(w.strategy)) if family == "low-rank" else 0
        overhead_ms += GPU_MS_PER_MODULE * (s.layers * 6 + 2 + adapters)
    t_opt = OPTIMIZER_BYTES * P_t / dev.bandwidth + overhead_ms / 1000
    tm = {"compute_ms": 1000 * t_matmul, "per_step_ms": 1000 * t_opt}
    if feature_flops:
        tm["feature_pass_s"] = feature_flops / (dev.peak_flops[prec] * eff)
    sources.append(
        f"efficiency {eff:.2f} of peak for {fitted} ({'fitted on a 2-core CPU, see EFFICIENCY' if cpu else 'typical eager PyTorch on GPUs'})"
    )
    sources.append("activations: bytes per token and layer measured with autograd's saved-tensor hooks (ACTIVATIONS)")
    return Prediction(
        peak_mb=peak,
        ms_per_step=1000 * (t_matmul + t_opt),
        memory=mem,
        time=tm,
        device=dev.name,
        params={"total": P, "trainable": P_t, "matmul": P_lin, "training_flops_per_step": flops},
        sources=sources,
    )


def format_prediction(w: Workload, p: Prediction) -> str:
    lines = [
        f"plan: {w.strategy.get('name')} | batch {w.batch_size} x {w.seq_len:.0f} tokens | {w.precision} | {p.device}",
        f"  parameters {p.params['total']:,} ({p.params['trainable']:,} trainable); {p.params['training_flops_per_step'] / 1e9:.1f} GFLOP per step",
        f"  peak memory  {p.peak_mb:8.0f} MB  = " + " + ".join(f"{k} {v:.0f}" for k, v in p.memory.items()),
        f"  time / step  {p.ms_per_step:8.0f} ms  = "
        + " + ".join(f"{k.replace('_ms', '')} {v:.0f}" for k, v in p.time.items() if k.endswith("_ms")),
    ]
    if "feature_pass_s" in p.time:
        lines.append(f"  once: feature pass over {w.n_examples:,} examples {p.time['feature_pass_s']:.1f} s")
    lines += [f"  from: {s}" for s in p.sources]
    return "\n".join(lines)


__all__ = [
    "GPUS",
    "Device",
    "Prediction",
    "Shape",
    "Workload",
    "cpu_device",
    "format_prediction",
    "gpu_device",
    "measure_cpu_peak",
    "measured_gpu",
    "plan_family",
    "predict",
    "trainable",
]
