"""Speed and memory of tunesmith against the usual Hugging Face recipes, on the same machine.

    .venv/bin/python benchmarks/speed.py                       # CPU, ~12 min on 2 cores
    .venv/bin/python benchmarks/speed.py --device cuda --steps 300 --samples 20000 --tag gpu
    .venv/bin/python benchmarks/speed.py --plan-grid           # `tunesmith plan` against measurement (8 short runs)

Same model (`minilm`), same data (the quickstart corpus, stratified subset, one split made by
tunesmith and handed to every recipe), same optimizer steps, batch size, max length, seed, AdamW
settings and linear warmup/decay schedule. Every configuration runs as its own process (peak memory
is its own), configurations are interleaved A/B/C/... and the order rotates each repetition, and
ratios to the baselines are taken pair by pair within a repetition (absolute times drift on a shared
machine; ratios hold). Throughput is timed by an optimizer-step hook over steps `warmup+1 .. steps`
(the first steps build kernels for new shapes), identically for every recipe.

Configurations:
  hf-plain      HF Trainer as the guides print it: padding="max_length", fp32, default settings
  hf-tuned      HF Trainer tuned by hand: bf16 (where fast), dynamic padding to a multiple of 8, group_by_length
  hf-tuned-lora the same + PEFT LoRA (r 16, alpha 32, dropout 0.1, query/key/value/dense: tunesmith's quickstart adapter)
  ts-full       tunesmith full fine-tuning, defaults
  ts-lora       tunesmith lora, defaults + the quickstart adapter
  ts-probe      tunesmith linear-probe (features computed once; the feature pass is counted in its time)

Writes benchmarks/results/speed[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUICKSTART = ROOT / "configs" / "quickstart" / "sentiment-lora.yaml"
LORA = {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
# Learning rates: full fine-tuning low, adapters and heads higher (as benchmarks/strategies.py); baselines use the same.
CONFIGS = {
    "hf-plain": {"kind": "hf", "tuned": False, "lora": False, "lr": 1e-4},
    "hf-tuned": {"kind": "hf", "tuned": True, "lora": False, "lr": 1e-4},
    "hf-tuned-lora": {"kind": "hf", "tuned": True, "lora": True, "lr": 1e-3},
    "ts-full": {"kind": "ts", "strategy": {"name": "full"}, "lr": 1e-4},
    "ts-lora": {"kind": "ts", "strategy": {"name": "lora", **LORA}, "lr": 1e-3},
    "ts-probe": {"kind": "ts", "strategy": {"name": "linear-probe"}, "lr": 5e-3},
    "ts-freeze": {"kind": "ts", "strategy": {"name": "freeze", "layers": 2}, "lr": 1e-4},  # --plan-grid only
}
DEFAULT = ["hf-plain", "hf-tuned", "hf-tuned-lora", "ts-full", "ts-lora", "ts-probe"]
PAIRS = [
    ("ts-full", "hf-plain"),
    ("ts-full", "hf-tuned"),
    ("ts-lora", "hf-plain"),
    ("ts-lora", "hf-tuned-lora"),
    ("ts-lora", "hf-tuned"),
    ("ts-full+fast-dropout", "ts-full"),
    ("ts-full+fast-dropout", "hf-tuned"),
]


# ============================================================================================
# measurement inside a worker process


class Recorder:
    """Times optimizer steps (a global post-step hook: the same for every recipe) and records the trained batches."""

    def __init__(self, steps: int, warmup: int, device: str):

        self.steps, self.warmup, self.device = steps, warmup, device
        self.times: dict[int, float] = {}
        self.cpu: dict[int, float] = {}  # process CPU time (all threads): less sensitive to other jobs on the machine
        self.n = 0
        self.batches: list[tuple[int, int, object]] = []  # (rows, padded tokens, real lengths per row: tensor)
        self.peak_train_mb = 0.0
        self.t_first_batch = None
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self._after_step)

    def _sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def _after_step(self, optimizer, args, kwargs):
        self.n += 1
        if self.n in (self.warmup, self.steps) or self.device == "cpu":
            self._sync()  # on GPUs only at the two ends of the window: no per-step host sync
            self.times[self.n] = time.perf_counter()
            self.cpu[self.n] = time.process_time()
        if self.n == self.steps:
            self.peak_train_mb = peak_memory_mb(self.device)

    def batch(self, input_ids, attention_mask=None) -> None:
        if self.t_first_batch is None:
            self.t_first_batch = time.perf_counter()
        if len(self.batches) < self.steps:
            lengths = attention_mask.sum(1) if attention_mask is not None else None
            self.batches.append((int(input_ids.shape[0]), int(input_ids.numel()), lengths))

    def summary(self) -> dict:
        w, s = self.warmup, self.steps
        window = self.times[s] - self.times[w]
        rows = self.batches[w:s]  # batch k is trained by optimizer step k+1
        samples = sum(b[0] for b in rows)
        padded = sum(b[1] for b in rows)
        lengths = [int(x) for b in rows if b[2] is not None for x in b[2].tolist()]
        return {
            "window_s": window,
            "window_steps": s - w,
            "samples": samples,
            "padded_tokens": padded,
            "tokens": sum(lengths) or padded,
            "sum_len_sq": sum(n * n for n in lengths),
            "padded_len_sq": sum(b[1] * b[1] / max(1, b[0]) for b in rows),
            "samples_per_s": samples / window,
            "tokens_per_s": (sum(lengths) or padded) / window,
            "ms_per_step": 1000 * window / (s - w),
            "mean_len": (sum(lengths) / len(lengths)) if lengths else None,
            "mean_padded_len": padded / max(1, samples),
            "samples_per_cpu_s": samples / max(1e-9, self.cpu[s] - self.cpu[w]),
        }


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_split(settings: dict):
    from tunesmith.config import load_config
    from tunesmith.data.splits import load_splits

    cfg = load_config(
        QUICKSTART,
        [
            f"data.max_samples={settings['samples']}",
            f"data.max_length={settings['max_length']}",
            f"seed={settings['seed']}",
        ],
    )
    return load_splits(cfg.data, settings["seed"])


def matmul_counts(model) -> dict:
    """Parameters that take part in matrix products (nn.Linear weights: embeddings are lookups), frozen and trained."""
    from torch import nn

    trained = frozen = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight
            if w.requires_grad:
                trained += w.numel()
            else:
                frozen += w.numel()
    cfg = getattr(model, "config", None) or model.base_model.model.config
    return {
        "linear_trained": trained,
        "linear_frozen": frozen,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
    }


def worker_hf(name: str, spec: dict, settings: dict) -> dict:
    """HF Trainer, as a guide prints it (`tuned` False) or as a strong user tunes it."""
    import numpy as np
    import torch
    from datasets import Dataset
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    from tunesmith.models.loading import resolve_model

    hf_logging.set_verbosity_error()
    device = settings["device"]
    splits = load_split(settings)
    path = resolve_model("minilm").location
    tok = AutoTokenizer.from_pretrained(path)
    tuned, ml = spec["tuned"], settings["max_length"]

    def encode(batch):
        if tuned:
            return tok(batch["text"], truncation=True, max_length=ml)
        return tok(batch["text"], padding="max_length", truncation=True, max_length=ml)

    def dataset(split):
        return Dataset.from_dict({"text": split.texts, "label": split.labels}).map(
            encode, batched=True, remove_columns=["text"]
        )

    train, test = dataset(splits.train), dataset(splits.test)
    set_seed(settings["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(splits.label_names))
    if spec["lora"]:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=LORA["r"],
                lora_alpha=LORA["alpha"],
                lora_dropout=LORA["dropout"],
                target_modules=LORA["target_modules"],
            ),
        )
    counts = matmul_counts(model)
    rec = Recorder(settings["steps"], settings["warmup_steps"], device)
    collator = DataCollatorWithPadding(tok, pad_to_multiple_of=8 if tuned else None)

    def collate(features):
        out = collator(features)
        rec.batch(out["input_ids"], out["attention_mask"])
        return out

    bf16 = tuned and (torch.cuda.is_bf16_supported() if device == "cuda" else _fast_cpu_bf16())
    bf16 = bf16 and os.environ.get("SPEED_HF_BF16", "1") == "1"  # for debugging the recipe
    args = TrainingArguments(
        output_dir=settings["workdir"],
        per_device_train_batch_size=settings["batch_size"],
        per_device_eval_batch_size=128,
        learning_rate=spec["lr"],
        max_steps=settings["steps"],
        warmup_steps=int(settings["warmup_ratio"] * settings["steps"]),
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=settings["seed"],
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=bf16,
        use_cpu=device == "cpu",
        # group_by_length=True before transformers 5
        train_sampling_strategy="group_by_length"
        if tuned and os.environ.get("SPEED_HF_GROUP", "1") == "1"
        else "random",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate, processing_class=tok)
    trainer.train()
    rec.handle.remove()
    if os.environ.get("SPEED_DEBUG"):
        print(
            "DEBUG dtypes",
            {str(p.dtype) for p in model.parameters()},
            "sampler",
            type(trainer._get_train_sampler()).__name__,
            file=sys.stderr,
        )
    out = trainer.predict(test)
    pred = np.argmax(out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions, axis=-1)
    f1 = f1_score(splits.test.labels, pred, average="macro")
    return {
        **rec.summary(),
        **counts,
        "macro_f1": float(f1),
        "precision": "bf16" if bf16 else "fp32",
        "peak_train_mb": rec.peak_train_mb,
        "peak_mb": peak_memory_mb(device),
    }


def worker_ts(name: str, spec: dict, settings: dict) -> dict:
    """tunesmith through its library API (what `tunesmith train` calls), audit/tracking/baseline off (not training)."""
    import yaml

    import tunesmith.engine.pipeline as pipeline
    from tunesmith.engine.batches import Features
    from tunesmith.strategies.linear_probe import LinearProbeStrategy
    from tunesmith.tasks.classification.batches import Tokenized

    device = settings["device"]
    rec = Recorder(settings["steps"], settings["warmup_steps"], device)
    counts: dict = {}
    features_s = [0.0]

    original_batch = Tokenized.batch

    def batch(self, rows, with_targets=True):
        out = original_batch(self, rows, with_targets)
        if with_targets:
            rec.batch(out["input_ids"], out["attention_mask"])
        return out

    Tokenized.batch = batch
    original_features_batch = Features.batch

    def features_batch(self, rows, with_targets=True):
        out = original_features_batch(self, rows, with_targets)
        if with_targets:
            import torch

            rec.batch(torch.empty(len(rows), 1), None)
        return out

    Features.batch = features_batch
    original_features = LinearProbeStrategy.training_view

    def timed_features(self, model, batches, ctx):
        counts.update(matmul_counts(model))
        lengths = [n for split in batches.values() for n in split.lengths]
        counts.update(probe_tokens=sum(lengths), probe_len_sq=sum(n * n for n in lengths))
        t0 = time.perf_counter()
        out = original_features(self, model, batches, ctx)
        features_s[0] = time.perf_counter() - t0
        return out

    LinearProbeStrategy.training_view = timed_features
    original_fit = pipeline.fit

    def fit(model, strategy, *args, **kwargs):
        if not strategy.features_only:
            counts.update(matmul_counts(model))
        return original_fit(model, strategy, *args, **kwargs)

    pipeline.fit = fit
    _prototype(settings.get("prototype", ""))

    cfg = yaml.safe_load(QUICKSTART.read_text())
    cfg.update(name=name, output_dir=str(Path(settings["workdir"]) / "runs"), seed=settings["seed"])
    cfg["data"].update(max_samples=settings["samples"], max_length=settings["max_length"])
    cfg["strategy"] = spec["strategy"]
    cfg["train"] = {
        "max_steps": settings["steps"],
        "batch_size": settings["batch_size"],
        "lr": spec["lr"],
        "eval_every": settings["steps"],
        "patience": None,
        "warmup_ratio": settings["warmup_ratio"],
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
    }
    cfg["eval"] = {"baseline": False}
    cfg["tracking"] = {"backend": "none"}
    cfg["audit"] = {"enabled": False}
    path = Path(settings["workdir"]) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = pipeline.finetune(str(path))
    rec.handle.remove()
    info, metrics = json.loads((run.path / "run.json").read_text()), json.loads((run.path / "metrics.json").read_text())
    row = {
        **rec.summary(),
        **counts,
        "macro_f1": metrics["test"]["macro_f1"],
        "precision": info["precision"],
        "peak_train_mb": rec.peak_train_mb,
        "peak_mb": peak_memory_mb(device),
    }
    if spec["strategy"]["name"] == "linear-probe":
        # The cheap end pays once for one forward pass over every example: count it in its throughput.
        head_s = rec.times[rec.steps] - rec.t_first_batch
        seconds = features_s[0] + head_s
        row.update(
            features_s=features_s[0],
            head_train_s=head_s,
            window_s=seconds,
            samples_per_s=settings["steps"] * settings["batch_size"] / seconds,
            tokens_per_s=None,
            ms_per_step=None,
            samples_per_cpu_s=None,
        )
    return row


def _fast_cpu_bf16() -> bool:
    from tunesmith.engine.precision import fast_cpu_bf16

    return fast_cpu_bf16()


def _prototype(what: str) -> None:
    """Prototypes of changes proposed for files this benchmark does not own (measured, not shipped)."""
    if "fast-dropout" in what:  # the model's own dropout layers as FastDropout, for every strategy
        import tunesmith.tasks.classification.task as classification
        from tunesmith.strategies.lora import use_fast_dropout

        load = classification.load_classifier

        def load_classifier(*args, **kwargs):
            model = load(*args, **kwargs)
            use_fast_dropout(model)
            return model

        classification.load_classifier = load_classifier


def worker_peak(settings: dict) -> dict:
    """Best dense matrix-product rate of this machine in fp32 and bf16 (the MFU denominator)."""
    import torch

    device = settings["device"]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        best = 0.0
        for n in (1024, 2048) if device == "cpu" else (4096, 8192):
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)
            for _ in range(2):
                a @ b
            for _ in range(3):
                k, t0 = 0, time.perf_counter()
                while True:
                    a @ b
                    k += 1
                    if device == "cuda":
                        torch.cuda.synchronize()
                    if time.perf_counter() - t0 > 0.5:
                        break
                best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
        out[str(dtype).replace("torch.", "")] = best
    return {"peak_flops": out, "threads": torch.get_num_threads()}


def worker_main(name: str, settings: dict) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    if name == "peak":
        row = worker_peak(settings)
    else:
        spec = {**CONFIGS[name.split("+")[0]], **settings.get("override", {})}
        row = (worker_hf if spec["kind"] == "hf" else worker_ts)(name, spec, settings)
    row["wall_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(row), flush=True)


# ============================================================================================
# the driver


def run_worker(name: str, settings: dict, timeout: int = 900) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        s = {**settings, "workdir": tmp}
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--settings", json.dumps(s)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
        )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return {"error": tail}


def training_flops(row: dict, name: str) -> dict:
    """Model FLOPs of the timed window.

    Full training: 6 x (matmul parameters) per token (forward 2, backward 4) + attention 12 x layers x hidden x n^2
    per sequence of n tokens. LoRA: frozen matmuls cost 4 per parameter per token (forward + input gradient, no weight
    gradient), trained ones (adapters, head) 6. `model` counts real tokens and lengths; `hardware` counts padded
    tokens (what the machine computed). Linear probe: the forward pass over every example (2 per parameter per token).
    """
    if "linear_trained" not in row:
        return {}
    if "probe_tokens" in row:  # forward only, over every example once
        n = (
            2 * (row["linear_trained"] + row["linear_frozen"]) * row["probe_tokens"]
            + 4 * row["layers"] * row["hidden"] * row["probe_len_sq"]
        )
        return {"model_flops": n, "hardware_flops": n}
    per_token = 6 * row["linear_trained"] + 4 * row["linear_frozen"]
    attn = 12 * row["layers"] * row["hidden"]
    model = per_token * row["tokens"] + attn * row["sum_len_sq"]
    hardware = per_token * row["padded_tokens"] + attn * row["padded_len_sq"]
    return {"model_flops": model, "hardware_flops": hardware}


def aggregate(runs: list[dict], names: list[str], peak: dict) -> dict:
    out = {}
    for name in names:
        rows = [r[name] for r in runs if name in r and "error" not in r[name]]
        if not rows:
            out[name] = {"error": next((r[name]["error"] for r in runs if name in r), "no runs")}
            continue
        agg = {"n": len(rows), "precision": rows[0].get("precision")}
        for key in (
            "samples_per_s",
            "samples_per_cpu_s",
            "tokens_per_s",
            "ms_per_step",
            "peak_train_mb",
            "peak_mb",
            "macro_f1",
            "wall_s",
            "features_s",
            "mean_len",
            "mean_padded_len",
        ):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                agg[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        mfus = []
        for r in rows:
            f = training_flops(r, name)
            if f and r.get("window_s"):
                p = peak.get(r.get("precision", "fp32").replace("fp32", "float32").replace("bf16", "bfloat16"))
                mfus.append((f["model_flops"] / r["window_s"], f["hardware_flops"] / r["window_s"], p))
        if mfus and all(m[2] for m in mfus):
            agg["achieved_tflops"] = statistics.median(m[0] for m in mfus) / 1e12
            agg["mfu"] = statistics.median(m[0] / m[2] for m in mfus)
            agg["hfu"] = statistics.median(m[1] / m[2] for m in mfus)
        out[name] = agg
    return out


def ratios(runs: list[dict]) -> dict:
    """tunesmith / baseline, pair by pair within each repetition (samples/s and peak training memory)."""
    out = {}
    for a, b in PAIRS:
        sp = [
            r[a]["samples_per_s"] / r[b]["samples_per_s"]
            for r in runs
            if a in r and b in r and "error" not in r[a] and "error" not in r[b]
        ]
        mem = [
            r[a]["peak_train_mb"] / r[b]["peak_train_mb"]
            for r in runs
            if a in r and b in r and "error" not in r[a] and "error" not in r[b]
        ]
        cpu = [
            r[a]["samples_per_cpu_s"] / r[b]["samples_per_cpu_s"]
            for r in runs
            if a in r and b in r and r[a].get("samples_per_cpu_s") and r[b].get("samples_per_cpu_s")
        ]
        if sp:
            out[f"{a} / {b}"] = {
                "samples_per_s": {"median": statistics.median(sp), "min": min(sp), "max": max(sp)},
                "peak_memory": {"median": statistics.median(mem), "min": min(mem), "max": max(mem)},
            }
            if cpu:
                out[f"{a} / {b}"]["samples_per_cpu_s"] = {
                    "median": statistics.median(cpu),
                    "min": min(cpu),
                    "max": max(cpu),
                }
    return out


def plan_rows(agg: dict, runs: list[dict], settings: dict, peak: dict) -> list[dict]:
    """`tunesmith plan` for each tunesmith row, at the measured mean sequence length, against the measurement."""
    from tunesmith.tools.plan import Workload, measured_gpu, predict

    device = measured_gpu(settings.get("device_name", "h100"), peak) if settings["device"] == "cuda" else None
    rows = []
    for name, spec in CONFIGS.items():
        if spec["kind"] != "ts" or name not in agg or "error" in agg[name]:
            continue
        measured = [r[name] for r in runs if name in r and "error" not in r[name]]
        seq = statistics.median(
            m["mean_padded_len"]
            if spec["strategy"]["name"] != "linear-probe"
            else m["probe_tokens"] / settings["samples"]
            for m in measured
        )
        wl = Workload.from_model_name(
            "minilm",
            spec["strategy"],
            batch_size=settings["batch_size"],
            seq_len=seq,
            precision=agg[name]["precision"],
            device=settings["device"],
            max_length=settings["max_length"],
            n_examples=settings["samples"],
        )
        p = predict(wl, peak_flops=peak, device=device)
        m_ms = agg[name]["ms_per_step"]["median"] if spec["strategy"]["name"] != "linear-probe" else None
        m_mb = agg[name]["peak_train_mb"]["median"]
        rows.append(
            {
                "config": name,
                "seq_len": round(seq, 1),
                "predicted_ms_per_step": p.ms_per_step,
                "measured_ms_per_step": m_ms,
                "predicted_peak_mb": p.peak_mb,
                "measured_peak_mb": m_mb,
                "time_error": (p.ms_per_step / m_ms - 1) if m_ms else None,
                "memory_error": p.peak_mb / m_mb - 1,
            }
        )
    return rows


def fmt(stat: dict | None, digits: int = 0) -> str:
    if not stat:
        return ""
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def markdown(result: dict) -> str:
    s, agg = result["settings"], result["configs"]
    peak = result["peak_flops"]
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}; {s['reps']} repetitions, interleaved; median (min-max). {s['steps']} optimizer steps of "
        f"{s['batch_size']} examples, max_length {s['max_length']}, {s['samples']} examples ({s['split']}), seed {s['seed']}; "
        f"throughput timed over steps {s['warmup_steps'] + 1}-{s['steps']}. Matmul peak measured here: fp32 "
        f"{peak.get('float32', 0) / 1e9:.0f} GFLOP/s, bf16 {peak.get('bfloat16', 0) / 1e9:.0f} GFLOP/s.",
        "",
        f"| configuration | precision | samples/s | samples per CPU-s | tokens/s | ms/step | peak {'GPU' if s['device'] == 'cuda' else 'RSS'} MB (training) | test macro-F1 | MFU (HFU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in agg.items():
        if "error" in a:
            lines.append(f"| {name} | error: {a['error'][:100]} | | | | | | | |")
            continue
        mfu = f"{100 * a['mfu']:.1f}% ({100 * a['hfu']:.1f}%)" if "mfu" in a else ""
        lines.append(
            f"| {name} | {a['precision']} | {fmt(a.get('samples_per_s'))} | {fmt(a.get('samples_per_cpu_s'), 1)} | {fmt(a.get('tokens_per_s'))} | {fmt(a.get('ms_per_step'))} | "
            f"{fmt(a.get('peak_train_mb'))} | {fmt(a.get('macro_f1'), 4)} | {mfu} |"
        )
    lines += [
        "",
        "Ratios, pair by pair within each repetition: median (min-max).",
        "",
        "| pair | samples/s | samples per CPU-second | peak memory |",
        "|---|---|---|---|",
    ]
    for pair, r in result["ratios"].items():
        lines.append(
            f"| {pair} | {fmt(r['samples_per_s'], 2)} | {fmt(r.get('samples_per_cpu_s'), 2)} | {fmt(r['peak_memory'], 2)} |"
        )
    if result.get("plan"):
        lines += [
            "",
            "`tunesmith plan` against the measurement (plan at the measured mean padded length).",
            "",
            "| configuration | seq len | predicted ms/step | measured | error | predicted peak MB | measured | error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in result["plan"]:
            t = (
                f"{p['measured_ms_per_step']:.0f} | {100 * p['time_error']:+.0f}%"
                if p["measured_ms_per_step"]
                else "(one-off feature pass) | "
            )
            lines.append(
                f"| {p['config']} | {p['seq_len']} | {p['predicted_ms_per_step']:.0f} | {t} | {p['predicted_peak_mb']:.0f} | "
                f"{p['measured_peak_mb']:.0f} | {100 * p['memory_error']:+.0f}% |"
            )
    lines += [
        "",
        "MFU: model FLOPs (real tokens) per second over the measured matmul peak of the precision used; HFU counts the padded "
        "tokens the machine actually computed. Full: 6 x matmul parameters per token + attention 12 x layers x hidden x n^2 per "
        "sequence; LoRA: 4 x frozen + 6 x trained matmul parameters per token (frozen weights need no weight gradient); "
        "linear probe: its samples/s includes the one forward pass over all examples that computes the features. "
        "Samples per CPU-second: samples over the process's CPU time (all threads) in the same window; other jobs on a shared "
        "machine inflate it much less than wall time.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup-steps", type=int, default=8, help="optimizer steps left out of the timing window")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=4000, help="stratified subset of the corpus (70/10/20 split)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT),
        help="comma-separated; NAME+fast-dropout runs a prototype of a proposed change",
    )
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument(
        "--plan-grid",
        action="store_true",
        help="validate `tunesmith plan` on full/lora/freeze/linear-probe at two sizes",
    )
    p.add_argument("--replan", metavar="RESULT_JSON", help="recompute the plan rows and the Markdown of a saved result")
    p.add_argument("--worker")
    p.add_argument("--settings")
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker, json.loads(args.settings))
    if args.replan:
        path = Path(args.replan)
        result = json.loads(path.read_text())
        result["settings"].setdefault("device_name", result["device"])
        names = list(result["configs"])
        result["configs"], result["ratios"] = (
            aggregate(result["runs"], names, result["peak_flops"]),
            ratios(result["runs"]),
        )
        result["plan"] = plan_rows(result["configs"], result["runs"], result["settings"], result["peak_flops"])
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        return print(markdown(result))
    if args.plan_grid:
        from plan_check import main as plan_check  # benchmarks/plan_check.py

        return plan_check(args)

    settings = {
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "reps": args.reps,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seed": args.seed,
        "device": args.device,
        "warmup_ratio": 0.06,
        "split": f"{round(0.7 * args.samples)} train / {round(0.2 * args.samples)} test, stratified, seed {args.seed}",
    }
    names = args.configs.split(",")
    for n in names:
        if n.split("+")[0] not in CONFIGS:
            p.error(f"unknown configuration {n}; known: {', '.join(CONFIGS)}")
    runs, peaks = [], []
    t0 = time.perf_counter()
    for rep in range(args.reps):
        peaks.append(run_worker("peak", settings))
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no configuration always runs first
        runs.append({})
        for name in order:
            s = dict(settings)
            if "+" in name:
                s["prototype"] = name.split("+", 1)[1]
            runs[-1][name] = run_worker(name, s)
            r = runs[-1][name]
            brief = {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in r.items()
                if k in ("samples_per_s", "peak_train_mb", "macro_f1", "wall_s", "error")
            }
            print(f"rep {rep + 1}/{args.reps} {name}: {json.dumps(brief)}", flush=True)
        write_results(
            args, settings, names, runs, peaks, t0, final=rep == args.reps - 1
        )  # partial results survive a kill


def write_results(
    args, settings: dict, names: list[str], runs: list[dict], peaks: list[dict], t0: float, final: bool
) -> None:
    peak = {k: max(pk["peak_flops"][k] for pk in peaks if "peak_flops" in pk) for k in ("float32", "bfloat16")}
    agg = aggregate(runs, names, peak)
    settings = {**settings, "reps": len(runs), "device_name": _device_name(args.device)}
    result = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
        "device": _device_name(args.device),
        "settings": settings,
        "peak_flops": peak,
        "configs": agg,
        "ratios": ratios(runs),
        "runs": runs,
        "total_s": time.perf_counter() - t0,
    }
    try:
        result["plan"] = plan_rows(agg, runs, settings, peak)
    except Exception as err:  # the plan must never cost the measurement
        result["plan_error"] = repr(err)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"speed-{args.tag}" if args.tag else "speed"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    if final:
        print(md)
        print(f"total {result['total_s'] / 60:.1f} min")


def _device_name(device: str) -> str:
    import platform

    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model or platform.processor()} ({os.cpu_count()} cores)"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
