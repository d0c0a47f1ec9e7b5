"""Predict peak memory and time per optimizer step before training (`tunesmith plan config.yaml`).

Memory = framework baseline + weights + gradients + AdamW states + activations kept for backward
(per layer and token, by precision and strategy) + attention maps. Time = training FLOPs / (matmul
peak x efficiency) + optimizer traffic / memory bandwidth. Every constant below says where it comes
from; `benchmarks/speed.py` prints these predictions beside measurements (README: "Speed and memory").

Encoder models of the BERT family are modelled layer by layer (hidden size, FFN size, heads, layers
from the model's config.json); other architectures use the same per-layer terms, which is a guess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..models.loading import resolve_model
from ..strategies.registry import get_strategy_class

MB = 2**20

# ---- devices: dense (no sparsity) matmul peaks from the vendors' data sheets, memory in GB.
# GPU efficiency: share of the peak a small encoder's training step reaches; 0.35 for bf16 on Ampere/Hopper is
# the usual figure for BERT-base-sized models in PyTorch eager mode (MLPerf BERT reaches ~0.5 with fused kernels).


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cpu" | "cuda"
    peak_flops: dict  # precision -> dense matmul FLOP/s
    memory_gb: float | None
    bandwidth: float  # bytes/s of memory traffic the optimizer step sees
    source: str


GPUS: dict[str, Device] = {
    "h100": Device("NVIDIA H100 SXM", "cuda", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, 80, 3.35e12, "NVIDIA H100 data sheet (SXM5, dense)"),
    "h100-pcie": Device("NVIDIA H100 PCIe", "cuda", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}, 80, 2.0e12, "NVIDIA H100 data sheet (PCIe, dense)"),
    "h200": Device("NVIDIA H200", "cuda", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, 141, 4.8e12, "NVIDIA H200 data sheet (dense)"),
    "a100": Device("NVIDIA A100 80GB", "cuda", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}, 80, 2.0e12, "NVIDIA A100 data sheet (dense)"),
    "a100-40gb": Device("NVIDIA A100 40GB", "cuda", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}, 40, 1.56e12, "NVIDIA A100 data sheet (dense)"),
    "l40s": Device("NVIDIA L40S", "cuda", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}, 48, 0.864e12, "NVIDIA L40S data sheet (dense)"),
    "l4": Device("NVIDIA L4", "cuda", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}, 24, 0.3e12, "NVIDIA L4 data sheet (dense)"),
    "a10": Device("NVIDIA A10", "cuda", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}, 24, 0.6e12, "NVIDIA A10 data sheet (dense)"),
    "rtx4090": Device("NVIDIA RTX 4090", "cuda", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}, 24, 1.0e12, "Ada whitepaper (fp32 accumulate, dense)"),
    "t4": Device("NVIDIA T4", "cuda", {"fp16": 65e12, "fp32": 8.1e12}, 16, 0.32e12, "NVIDIA T4 data sheet (no bf16)"),
    "v100": Device("NVIDIA V100 SXM2", "cuda", {"fp16": 125e12, "fp32": 15.7e12}, 32, 0.9e12, "NVIDIA V100 data sheet (no bf16)"),
}

# ---- CPU constants, fitted on the 2-core AVX512-BF16 machine of benchmarks/speed.py from `--plan-grid` at batch 16
# and 64 (MiniLM, quickstart tweets, bf16); the benchmark's batch-32 rows and the GPU are predictions, not fits.
CPU_BANDWIDTH = 17e9
"""Bytes/s the per-step work on every trainable parameter sees (AdamW, clipping, fresh gradients): the fixed part of
a full fine-tuning step (83 ms for 22.7M parameters at 40 bytes each; the 29 ms fused AdamW alone in the profile)."""
STEP_OVERHEAD_MS = {"cpu": 30.0, "cuda": 5.0}
"""Per optimizer step whatever the batch: Python, the schedule, launching operators. CPU: the fixed part of freeze
and LoRA steps (36 ms). CUDA: + GPU_MS_PER_MODULE per linear layer and per adapter (below)."""
GPU_MS_PER_MODULE = 0.68
"""CUDA, eager PyTorch: a small model's step is bound by launching kernels, not by FLOPs. Fitted to one H100 run
(benchmarks/results/speed-gpu.json: MiniLM full 31 ms/step with 38 linear layers, LoRA 56 ms with 37 adapters more);
not validated on another GPU or model."""
CPU_BASE_MB = 690.0
"""Resident memory that is not the model: python + torch + transformers + accelerate + tunesmith imports (530 MB
measured), tokenizer, the quickstart corpus and its pandas copies (~115 MB), the allocator's arenas."""
PEFT_IMPORT_MB = 130.0
"""PEFT (and bitsandbytes, which it imports) when the strategy wraps the model with an adapter."""
GPU_BASE_MB = 0.0
"""GPU memory is reported as torch.cuda.max_memory_allocated: the CUDA context is not in it."""
EFFICIENCY = {
    ("cpu", "full"): 0.66, ("cpu", "freeze"): 0.56, ("cpu", "lora"): 0.36, ("cpu", "probe"): 0.55,
    ("cuda", "full"): 0.30, ("cuda", "freeze"): 0.30, ("cuda", "lora"): 0.20, ("cuda", "probe"): 0.30,
}
"""Share of the matmul peak (of the precision used) reached by the batch-proportional part of a step. CPU: fitted
(see above); dropout, layer norms, GELU and autocast casts run beside the products, and LoRA's many small adapter
operators cost it most. fp32 uses the same shares (not fitted). CUDA: typical eager PyTorch for a small encoder."""
OPTIMIZER_BYTES = 40
"""Memory traffic per trainable parameter and step: AdamW reads param, grad, 2 moments and writes 3 (28 bytes),
gradient clipping reads the grads (4), the new grads are zero-filled and written (8)."""

# ---- activations kept for backward, bytes per token per layer = a*hidden + b*ffn, + c per attention score
# (heads x length per token). Measured on MiniLM by summing the storages autograd saves (saved_tensors_hooks)
# at batch 16 and 32, lengths 40 and 80 (differences isolate the per-token and the per-score terms); b is
# counted from the tensors (GELU input and output; LoRA adds the adapter's copy of the FFN output), a is the rest.
# CPU attention (SDPA's math path, used with dropout) keeps fp32 scores, probabilities and the dropout mask: 12 bytes
# per score in both precisions. On CUDA, SDPA's fused kernels keep no score matrix: c = 0 (not measured here).
ACTIVATIONS = {
    ("full", "fp32"): (42.1, 8, 12),
    ("full", "bf16"): (35.4, 4, 12),
    ("lora", "fp32"): (39.3, 9, 12),
    ("lora", "bf16"): (33.1, 5, 12),
}
TRANSIENT = {"full": 2.1, "lora": 2.8}
"""Peak memory grows beyond the saved tensors: forward temporaries (fp32 scores before softmax, casts, PEFT's
adapter sums), gradients of activations in backward, and on CPU oneDNN scratch and glibc keeping freed blocks.
Multiplies the activation term; fitted on CPU (see the CPU constants above) and used unchanged on GPUs."""


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
        get = lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default)  # noqa: E731
        hidden = get("hidden_size", "d_model", "n_embd")
        return cls(
            layers=get("num_hidden_layers", "n_layer", "num_layers"), hidden=hidden, heads=get("num_attention_heads", "n_head"),
            ffn=get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden), vocab=get("vocab_size"),
            positions=get("max_position_embeddings", "n_positions", default=512), type_vocab=get("type_vocab_size", default=0) or 0, labels=labels,
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

    def __post_init__(self):
        # How to model the strategy comes from the strategy class (plan_family), never from its name.
        if "plan" not in self.strategy:
            family = get_strategy_class(self.strategy.get("name", "full")).plan_family
            self.strategy = {**self.strategy, "plan": family or "full", "plan_declared": family is not None}

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
    """full | freeze | gradual | probe | lora | adapter: how a strategy is modelled, as its class declares."""
    return strategy.get("plan") or get_strategy_class(strategy.get("name", "full")).plan_family or "full"


def trainable(shape: Shape, strategy: dict) -> tuple[int, int, int]:
    """(trainable parameters, trainable linear parameters, layers that need backward) for a strategy."""
    family = plan_family(strategy)
    d, f, L = shape.hidden, shape.ffn, shape.layers
    classifier = d * shape.labels + shape.labels
    if family == "full":
        return shape.params(), shape.linear(), L
    if family in ("freeze", "gradual"):
        k = strategy.get("layers", 2) if family == "freeze" else L
        return k * shape.layer_params() + shape.head_params(), k * shape.layer_linear() + d * d + d * shape.labels, k
    if family == "probe":
        return classifier, d * shape.labels, 0
    if family == "lora":
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
    if not w.strategy.get("plan_declared", True):
        sources.append(f"strategy {w.strategy.get('name')} declares no plan_family: planned as full fine-tuning")
    P, P_lin = s.params(), s.linear()
    P_t, P_t_lin, back_layers = trainable(s, w.strategy)
    tokens = w.batch_size * w.seq_len

    # ---- memory
    peft = family in ("lora", "adapter")
    mem = {"framework": (CPU_BASE_MB + (PEFT_IMPORT_MB if peft else 0)) if cpu else GPU_BASE_MB, "weights": 4 * P / MB, "gradients": 4 * P_t / MB, "adamw_states": 8 * P_t / MB}
    kind = "lora" if family == "lora" else "full"
    a, b, c = ACTIVATIONS[(kind, "fp32" if prec == "fp32" else "bf16")]
    per_token_layer = a * s.hidden + b * s.ffn + (c if cpu else 0) * s.heads * w.seq_len
    if family == "probe":
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
    fitted = {"gradual": "freeze", "adapter": "full"}.get(family, family)  # the families EFFICIENCY was fitted on
    eff = EFFICIENCY[("cpu" if cpu else "cuda", fitted)]
    attn = 12 * s.layers * s.hidden * w.seq_len * tokens  # per step, fwd+bwd (QK^T and AV)
    frozen_lin = P_lin - P_t_lin
    if family == "probe":
        flops = 6 * P_t_lin * w.batch_size
        # the feature pass: forward only, over every example, batches sorted by length (seq_len = mean text length)
        feature_flops = (2 * P_lin * w.seq_len + 4 * s.layers * s.hidden * w.seq_len**2) * w.n_examples
    elif family in ("freeze", "gradual"):
        top = back_layers * s.layer_linear()
        flops = 2 * P_lin * tokens + 4 * (top + s.hidden**2 + s.hidden * s.labels) * tokens + attn * back_layers / s.layers
        feature_flops = 0
    else:  # full, lora, other adapters: backward through everything; frozen weights need no weight gradient
        flops = 6 * P_t_lin * tokens + 4 * frozen_lin * tokens + attn
        feature_flops = 0
    t_matmul = flops / (dev.peak_flops[prec] * eff)
    overhead_ms = STEP_OVERHEAD_MS["cpu" if cpu else "cuda"]
    if not cpu:
        adapters = s.layers * len(_lora_targets(w.strategy)) if family == "lora" else 0
        overhead_ms += GPU_MS_PER_MODULE * (s.layers * 6 + 2 + adapters)
    t_opt = OPTIMIZER_BYTES * P_t / dev.bandwidth + overhead_ms / 1000
    tm = {"compute_ms": 1000 * t_matmul, "per_step_ms": 1000 * t_opt}
    if feature_flops:
        tm["feature_pass_s"] = feature_flops / (dev.peak_flops[prec] * eff)
    sources.append(f"efficiency {eff:.2f} of peak for {fitted} ({'fitted on a 2-core CPU, see EFFICIENCY' if cpu else 'typical eager PyTorch on GPUs'})")
    sources.append("activations: bytes per token and layer measured with autograd's saved-tensor hooks (ACTIVATIONS)")
    return Prediction(
        peak_mb=peak, ms_per_step=1000 * (t_matmul + t_opt), memory=mem, time=tm, device=dev.name,
        params={"total": P, "trainable": P_t, "matmul": P_lin, "training_flops_per_step": flops}, sources=sources,
    )


_MEASURED: dict = {}


def measure_cpu_peak(seconds: float = 0.3) -> dict:
    """Dense matmul FLOP/s of this machine in fp32 and bf16 (1024^3 products for `seconds` each; cached)."""
    if _MEASURED:
        return _MEASURED
    import torch

    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = 1024
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        _MEASURED[prec] = 2 * n**3 * k / (time.perf_counter() - t0)
    return _MEASURED


def cpu_device(peak_flops: dict | None = None) -> Device:
    """This CPU: matmul peak measured now (or given, e.g. by the benchmark), bandwidth from CPU_BANDWIDTH."""
    import os

    if peak_flops:
        peaks = {"fp32": peak_flops.get("fp32", peak_flops.get("float32")), "bf16": peak_flops.get("bf16", peak_flops.get("bfloat16"))}
        source = "measured by the caller"
    else:
        peaks, source = dict(measure_cpu_peak()), "measured now (1024^3 matrix products)"
    return Device(f"this CPU ({os.cpu_count()} cores)", "cpu", peaks, None, CPU_BANDWIDTH, source)


def measured_gpu(name: str, peak_flops: dict) -> Device:
    """A known GPU (memory, bandwidth) with matmul peaks measured on it (e.g. by benchmarks/speed.py)."""
    base = next((d for key, d in GPUS.items() if key.split("-")[0] in name.lower().replace(" ", "")), GPUS["h100"])
    peaks = {"fp32": peak_flops.get("fp32", peak_flops.get("float32")), "bf16": peak_flops.get("bf16", peak_flops.get("bfloat16"))}
    return Device(name, "cuda", peaks, base.memory_gb, base.bandwidth, f"measured on the {name}")


def gpu_device(name: str) -> Device:
    key = name.lower().replace("nvidia", "").replace(" ", "").replace("_", "-")
    if key not in GPUS:
        raise ConfigError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}")
    return GPUS[key]


def format_prediction(w: Workload, p: Prediction) -> str:
    lines = [f"plan: {w.strategy.get('name')} | batch {w.batch_size} x {w.seq_len:.0f} tokens | {w.precision} | {p.device}",
             f"  parameters {p.params['total']:,} ({p.params['trainable']:,} trainable); {p.params['training_flops_per_step'] / 1e9:.1f} GFLOP per step",
             f"  peak memory  {p.peak_mb:8.0f} MB  = " + " + ".join(f"{k} {v:.0f}" for k, v in p.memory.items()),
             f"  time / step  {p.ms_per_step:8.0f} ms  = " + " + ".join(f"{k.replace('_ms', '')} {v:.0f}" for k, v in p.time.items() if k.endswith("_ms"))]
    if "feature_pass_s" in p.time:
        lines.append(f"  once: feature pass over {w.n_examples:,} examples {p.time['feature_pass_s']:.1f} s")
    lines += [f"  from: {s}" for s in p.sources]
    return "\n".join(lines)
