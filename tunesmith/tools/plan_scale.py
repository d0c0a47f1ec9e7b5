"""Plan a run on several GPUs: per-GPU memory, time and cost for each way of spreading it (`tunesmith plan --gpus N`).

The modes, as the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", sec. 5) counts them, for P parameters of which T train, on N GPUs:
    ddp     every GPU holds the weights, the gradients and the AdamW states (replicated)
    zero2   gradients and AdamW states sharded (/N), weights replicated          (DeepSpeed ZeRO-2)
    zero3   weights too (/N), plus the layers being gathered at a time           (DeepSpeed ZeRO-3)
    fsdp    the same as zero3: PyTorch FSDP2 `fully_shard` per transformer block (reshard after forward)
    +offload  the AdamW states (and their update) move to CPU memory (DeepSpeed); FSDP2's CPUOffloadPolicy moves
              the weight and gradient shards too: less GPU memory, a slower step
Bytes per parameter follow tunesmith's loop: trained weights, their gradients and AdamW's two moments in fp32
(4 + 4 + 8 = 16 B), frozen weights in the compute precision (2 B in bf16) or 4-bit for QLoRA (nf4 + one fp32 scale
per 64 weights = 0.5625 B). Activations per token and layer: Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", eq. 1) with fused attention (no s x s term): 34 x hidden bytes in
16-bit, scaled by the gated FFN's width; gradient checkpointing keeps one layer input (2 x hidden bytes) per layer
plus one layer's full activations, and costs a second forward pass.

Communication per optimizer step, bytes each GPU sends in a ring (NCCL's bus bandwidth model: a ring all-reduce of
S bytes moves 2 (N-1)/N x S, a reduce-scatter or an all-gather (N-1)/N x S):
    ddp     all-reduce of the trained gradients
    zero2   reduce-scatter of the gradients + all-gather of the updated trained weights
    zero3/fsdp  all-gather of every weight twice (forward, backward) + reduce-scatter of the gradients
The step time is compute + communication, not overlapped: an upper bound (NCCL overlaps a large part of it).
Nothing here is measured on a GPU yet: it is a model with its sources, not a fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .plan_devices import EFFICIENCY, GPU_BASE_MB, MB, Device

MODES = ("ddp", "zero2", "zero3", "fsdp")

# Interconnect bus bandwidth per GPU, bytes/s (what nccl-tests reports as busbw for large all-reduces).
INTERCONNECTS = {
    "nvlink": (360e9, "H100 SXM NVLink 4 (900 GB/s bidirectional; nccl-tests all_reduce busbw ~360 GB/s on 8 GPUs)"),
    "pcie": (25e9, "PCIe Gen5 x16 (64 GB/s per direction; ~25 GB/s bus bandwidth through the host without NVLink)"),
    "ib": (45e9, "one 400 Gb/s InfiniBand NDR link per GPU (50 GB/s; ~45 GB/s bus bandwidth between nodes)"),
}
GPUS_PER_NODE = 8
OFFLOAD_BANDWIDTH = 25e9  # bytes/s between GPU and CPU memory (PCIe Gen5 in practice) for offloaded AdamW states
CPU_ADAM_PARAMS_PER_S = 1.0e9
"""AdamW updates per second on the host for one GPU's offloaded shard: torch's fused CPU AdamW measured 1.0e9 fp32
parameters/s per core (2.1e9 on 2 cores of an AMD EPYC Zen 4, AVX512, 2026-12-04); one core's worth per GPU process
is the conservative figure (DeepSpeed's CPUAdam is of the same kind: vectorised, in place)."""


@dataclass
class LMShape:
    """A decoder (or encoder) transformer, read from its config.json; `gated`: SwiGLU FFN (3 matrices)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    gated: bool = True
    tied: bool = False

    @classmethod
    def from_config(cls, config) -> LMShape:
        get = lambda *names, default=None: next(  # noqa: E731
            (getattr(config, n) for n in names if getattr(config, n, None) is not None), default
        )
        hidden = get("hidden_size", "d_model", "n_embd")
        heads = get("num_attention_heads", "n_head")
        act = str(get("hidden_act", "activation_function", default="gelu"))
        return cls(
            layers=get("num_hidden_layers", "n_layer", "num_layers"),
            hidden=hidden,
            heads=heads,
            kv_heads=get("num_key_value_heads", default=heads),
            ffn=get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
            vocab=get("vocab_size"),
            gated=act in ("silu", "swish", "gelu_pytorch_tanh") and config.model_type not in ("bert", "gpt2"),
            tied=bool(get("tie_word_embeddings", default=False)),
        )

    def layer_linear(self) -> int:
        d, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        return 2 * d * d + 2 * d * kv + (3 if self.gated else 2) * d * self.ffn

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * (self.layer_linear() + 2 * self.hidden) + self.hidden

    def linear(self) -> int:
        """Parameters in matrix products: the layers and the output projection (the input embedding is a lookup)."""
        return self.layers * self.layer_linear() + self.vocab * self.hidden


def lora_params(shape: LMShape, r: int, targets: list[str] | str | None) -> int:
    """Adapter parameters: r x (in + out) per adapted matrix; Llama names (q/k/v/o_proj, gate/up/down_proj)."""
    d, kv, f = shape.hidden, shape.hidden * shape.kv_heads // shape.heads, shape.ffn
    sizes = {
        "q_proj": (d, d),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (d, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }
    if targets in (None, "all-linear", ["all-linear"]):
        targets = list(sizes) if targets else ["q_proj", "v_proj"]
    return shape.layers * sum(r * (i + o) for t in targets for i, o in [sizes.get(t, (0, 0))])


@dataclass
class ScaleRun:
    shape: LMShape
    family: str  # dense (every weight trains) | low-rank (LoRA adapters on a frozen base): the strategy's plan_family
    gpus: int
    micro_batch: int  # sequences per GPU per micro-batch
    seq_len: float
    grad_accum: int = 1
    steps: int = 1
    precision: str = "bf16"
    gradient_checkpointing: bool = False
    lora_r: int = 16
    lora_targets: list[str] | str | None = "all-linear"
    quantized: bool = False  # QLoRA: the frozen base in nf4


def plan_mode(run: ScaleRun, mode: str, device: Device, offload: bool = False, price: float | None = None) -> dict:
    if run.family not in ("dense", "low-rank"):
        raise ConfigError(f"plan --gpus models full fine-tuning and LoRA/QLoRA, not a '{run.family}' strategy")
    """Per-GPU memory (GB, by part), time per optimizer step (s, compute and communication), the run's hours and
    cost for one mode. `price`: $ per GPU-hour."""
    s, n = run.shape, run.gpus
    P = s.params()
    dense = run.family == "dense"
    T = P if dense else lora_params(s, run.lora_r, run.lora_targets)
    if T == 0:
        raise ConfigError(
            "plan --gpus counts LoRA on decoder (Llama-style) modules: q_proj, k_proj, v_proj, o_proj, gate_proj, "
            f"up_proj, down_proj or all-linear; strategy.target_modules {run.lora_targets} names none of them"
        )
    frozen = P - T
    low = 2 if run.precision in ("bf16", "fp16") else 4
    frozen_bytes = 0.5625 if run.quantized else low
    shard_w = n if mode in ("zero3", "fsdp") else 1
    shard_go = n if mode != "ddp" else 1
    if mode in (
        "ddp",
        "fsdp",
    ):  # fp32 trained weights (sharded by FSDP2), autocast / MixedPrecisionPolicy computes in 16-bit
        w_bytes, g_bytes, state_bytes = 4, 4, 8
    else:  # DeepSpeed: 16-bit weights and gradients, the fp32 master copy is an optimizer state (ZeRO's 2 + 2 + 12)
        w_bytes, g_bytes, state_bytes = low, low, 8 + (4 if low == 2 else 0)
    mem = {
        "weights": (w_bytes * T + frozen_bytes * frozen) / shard_w,
        "gradients": g_bytes * T / shard_go,
        "optimizer_states": state_bytes * T / shard_go,
    }
    # Offload: DeepSpeed moves the optimizer states to the host; FSDP2's CPUOffloadPolicy every sharded tensor.
    moved = [k for k in mem if offload and (mode == "fsdp" or k == "optimizer_states")]
    host = sum(mem[k] for k in moved) / 1e9
    mem.update({k: 0.0 for k in moved})
    if shard_w > 1:  # the blocks being gathered: the current one and the prefetched next one, unsharded
        mem["gathered_layers"] = 2 * s.layer_linear() * (low if dense else frozen_bytes)
    tokens = run.micro_batch * run.seq_len
    ffn_scale = (3 if s.gated else 2) * s.ffn / (8 * s.hidden)  # Korthikanti's 34 h assumes a 4h two-matrix FFN
    per_token_layer = (10 + 24 * ffn_scale) * s.hidden * low / 2
    if run.gradient_checkpointing:
        mem["activations"] = tokens * (s.layers * 2 * s.hidden + per_token_layer)
    else:
        mem["activations"] = tokens * s.layers * per_token_layer
    mem["logits"] = tokens * s.vocab * (4 + 4)  # fp32 logits and their gradient (the loss upcasts)
    mem = {k: v / 1e9 for k, v in mem.items()}
    mem["framework"] = GPU_BASE_MB * MB / 1e9 + 1.0  # CUDA context, NCCL buffers, allocator slack: ~1 GB

    # ---- time per optimizer step
    eff = EFFICIENCY[("cuda", run.family)]
    lin, trained_lin = s.linear(), (s.linear() if dense else T)
    flops = (6 * trained_lin + 4 * (lin - trained_lin) + (2 * lin if run.gradient_checkpointing else 0)) * tokens
    flops += 12 * s.layers * s.hidden * run.seq_len * tokens  # attention scores and mixing, fwd + bwd
    compute = run.grad_accum * flops / (device.peak_flops[run.precision] * eff)
    if run.quantized:
        compute *= 1.3  # dequantising nf4 weights for every matmul (bitsandbytes): ~30% slower than bf16 LoRA
    bus, bus_name = _bus(n)
    ring = (n - 1) / n
    weights = low * T + frozen_bytes * frozen  # what a gather moves: the 16-bit (or nf4) copies
    if mode == "ddp":
        sent = 2 * ring * 4 * T  # one all-reduce of the fp32 gradients per optimizer step (no_sync while accumulating)
    elif mode == "zero2":
        sent = run.grad_accum * ring * low * T + ring * low * T  # reduce-scatter every micro-batch; gather the update
    elif mode == "zero3":
        sent = run.grad_accum * (2 * ring * weights + ring * low * T)  # gather twice + reduce-scatter per micro-batch
    else:  # FSDP2: gathers every micro-batch; gradients reduce-scattered once (set_requires_gradient_sync(False))
        sent = run.grad_accum * 2 * ring * weights + ring * low * T
    comm = sent / bus if n > 1 else 0.0
    opt = 0.0
    if offload:  # gradients down, updated weights up (FSDP: the weight shards every micro-batch), AdamW on the host
        ups = run.grad_accum if mode == "fsdp" else 1
        opt = (1 + ups) * (low * T / shard_go) / OFFLOAD_BANDWIDTH + (T / shard_go) / CPU_ADAM_PARAMS_PER_S
    step = compute + comm + opt
    hours = step * run.steps / 3600
    total = sum(mem.values())
    fits = total <= device.memory_gb
    out = {
        "mode": ("single" if n == 1 and mode == "ddp" else mode) + ("+offload" if offload else ""),
        "gpus": n,
        "memory_gb": {k: round(v, 4) for k, v in mem.items()},
        "per_gpu_gb": round(total, 3),
        "host_gb": round(host, 1),
        "fits": fits,
        "step_s": round(step, 6),
        "time_s": {"compute": round(compute, 6), "communication": round(comm, 6), "offload": round(opt, 6)},
        "hours": round(hours, 4),
        "interconnect": bus_name if n > 1 else "none",
        "params": {"total": P, "trainable": T},
    }
    if price is not None:
        out["cost_usd"] = round(hours * n * price, 2)
    return out


def _bus(n: int) -> tuple[float, str]:
    if n <= GPUS_PER_NODE:
        return INTERCONNECTS["nvlink"][0], "nvlink"
    return INTERCONNECTS["ib"][0], "ib (between nodes)"


def plan_modes(run: ScaleRun, device: Device, price: float | None = None) -> list[dict]:
    """Every mode (with and without optimizer offload where it applies) for `run`; DDP alone on one GPU."""
    if run.gpus == 1:
        return [plan_mode(run, "ddp", device, price=price), plan_mode(run, "zero2", device, True, price)]
    rows = []
    for mode in MODES:
        rows.append(plan_mode(run, mode, device, price=price))
        if mode in ("zero2", "zero3", "fsdp"):
            rows.append(plan_mode(run, mode, device, True, price))
    return rows


def format_modes(run: ScaleRun, rows: list[dict], device: Device, chosen: str | None = None) -> str:
    """The table; `chosen`: the config's `train.distributed` (ddp | fsdp), whose row is marked and judged."""
    head = (
        f"plan on {run.gpus} x {device.name} ({device.memory_gb} GB): {_label(run)} | {rows[0]['params']['trainable']:,}"
        f" of {rows[0]['params']['total']:,} parameters train | {run.micro_batch} x {run.seq_len:.0f} tokens per GPU"
        f" x {run.grad_accum} accumulation | {run.steps} steps"
    )
    cost = "cost_usd" in rows[0]
    lines = [
        head,
        f"  {'mode':<14}{'GB/GPU':>8}  {'fits':<5}{'host GB':>8}{'s/step':>8}{'comm s':>8}{'hours':>8}"
        + (f"{'$':>10}" if cost else ""),
    ]
    mine = "single" if run.gpus == 1 and chosen else chosen
    for r in rows:
        line = (
            f"{'>' if r['mode'] == mine else ' '} {r['mode']:<14}{r['per_gpu_gb']:>8.1f}  {'yes' if r['fits'] else 'NO':<5}"
            f"{r['host_gb']:>8.0f}{r['step_s']:>8.2f}"
            f"{r['time_s']['communication']:>8.2f}{r['hours']:>8.1f}"
        )
        lines.append(line + (f"{r['cost_usd']:>10,.0f}" if cost else ""))
    fitting = [r for r in rows if r["fits"]]
    if fitting:
        best = min(fitting, key=lambda r: r["step_s"])
        lines.append(
            f"  fastest that fits: {best['mode']} ({best['per_gpu_gb']:.1f} GB per GPU, {best['step_s']:.2f} s/step)"
        )
    else:
        lines.append("  nothing fits: use more GPUs, lora/qlora, gradient checkpointing or a smaller micro-batch")
    row = next((r for r in rows if r["mode"] == mine), None)
    if row is not None:
        verdict = "fits" if row["fits"] else f"does NOT fit in {device.memory_gb} GB"
        lines.append(f"> your config (train.distributed: {chosen}): {row['per_gpu_gb']:.1f} GB per GPU, {verdict}")
    lines.append(
        "  from: ZeRO paper memory model; Korthikanti et al. 2022 activations; ring all-reduce over "
        f"{INTERCONNECTS['nvlink'][1] if run.gpus <= GPUS_PER_NODE else INTERCONNECTS['ib'][1]}; "
        "compute + communication not overlapped (an upper bound); not yet checked against GPU runs"
    )
    return "\n".join(lines)


def _label(run: ScaleRun) -> str:
    return {"dense": "full"}.get(run.family, "qlora" if run.quantized else "lora")


def steps_for(examples: int, epochs: float, micro_batch: int, gpus: int, grad_accum: int, max_steps=None) -> int:
    return max_steps or max(1, math.ceil(epochs * examples / (micro_batch * gpus * grad_accum)))
