"""DDP against FSDP2 (`train.distributed: fsdp`) in 2 processes, and 1 process, on SmolLM2-135M (packaged, full
fine-tuning, `precision: auto`: bf16 where the CPU has AVX512-BF16, else fp32): peak memory per process, samples/s, and the test loss of each.

    .venv/bin/python benchmarks/scale.py [--steps 12] [--batch-size 4] [--modes single,ddp,fsdp]   (~6 min on 2 cores)

Every mode trains the same global batch (2 x batch_size per optimizer step; one process: batch 2 x batch_size) on the
same synthetic prompt -> completion pairs (arithmetic: "What is 37 + 5?" -> "42"), via `tunesmith train` under
torchrun (gloo on CPU, NCCL on a GPU). Peak memory: the largest resident set of each training process, sampled every
0.1 s with psutil (CPU), or torch.cuda.max_memory_allocated (GPU, from the run). The model states alone (fp32
weights + gradients + AdamW's two moments, 16 B a parameter) are what FSDP divides by the processes; `plan --gpus`
predicts that part, and the benchmark prints the prediction beside the measured difference.
Writes benchmarks/results/scale.{json,md}; run folders in --work (default /tmp/tunesmith-scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _data(path: Path, n: int = 600) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "completion": f" {a + b}"}) + "\n")
    return path


def _peak_rss(proc: subprocess.Popen) -> dict[int, float]:
    """Largest RSS (MB) of every process under `proc` while it runs."""
    peaks: dict[int, float] = {}
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            for p in [parent, *parent.children(recursive=True)]:
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    return peaks


def run_mode(mode: str, args, work: Path, data: Path) -> dict:
    world = 1 if mode == "single" else 2
    cfg = {
        "name": mode,
        "task": "causal-lm",
        "output_dir": str(work / "runs"),
        "data": {"path": str(data), "max_length": 48, "validation_size": 0.05, "test_size": 0.05},
        "model": {"name": "smollm2-135m-instruct"},
        "strategy": {"name": "full"},
        "tracking": {"backend": "none"},
        "train": {
            "max_steps": args.steps,
            "batch_size": args.batch_size * (2 if world == 1 else 1),
            "lr": 2e-5,
            "precision": "auto",
            "eval_every": args.steps,
            "patience": None,
            "distributed": "fsdp" if mode == "fsdp" else "ddp",
        },
        "generate": {"samples": 0},
    }
    path = work / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // world)), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "tunesmith", "train", str(path)]
    if world > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29571",
            *cmd[1:],
        ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peaks = _peak_rss(proc)
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out[-3000:]}")
    if world > 1:  # the torchrun agent is not a training process
        peaks.pop(proc.pid, None)
    run = sorted((work / "runs").glob(f"{mode}-*"))[-1]
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "run.json").read_text())
    ranks = sorted(peaks.values(), reverse=True)[:world]
    return {
        "mode": mode,
        "processes": world,
        "precision": info.get("precision"),
        "steps": metrics["steps"],
        "samples_per_s": info["timings"]["samples_per_second"],
        "tokens_per_s": info["timings"]["tokens_per_second"],
        "peak_gpu_mb_rank0": info["timings"].get("peak_gpu_mb"),
        "test_loss": metrics["test"]["loss"],
        "peak_rss_mb_per_process": [round(x) for x in ranks],
        "wall_s": round(time.perf_counter() - t0, 1),
        "parameters": info["parameters"]["total"],
    }


def planned_saving_mb(rows: list[dict]) -> float:
    """`plan --gpus 2`'s per-GPU difference between DDP and FSDP for this model (the activations cancel)."""
    from transformers import AutoConfig

    from tunesmith.models.loading import resolve_model
    from tunesmith.tools.plan_devices import GPUS
    from tunesmith.tools.plan_scale import LMShape, ScaleRun, plan_mode

    shape = LMShape.from_config(AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct").location))
    run = ScaleRun(shape, "dense", 2, micro_batch=4, seq_len=48, precision=rows[-1]["precision"] or "fp32")
    ddp, fsdp = (plan_mode(run, mode, GPUS["h100"]) for mode in ("ddp", "fsdp"))
    return (ddp["per_gpu_gb"] - fsdp["per_gpu_gb"]) * 1e9 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4, help="per process (one process trains 2x this)")
    ap.add_argument("--modes", default="single,ddp,fsdp")
    ap.add_argument("--work", default="/tmp/tunesmith-scale")
    ap.add_argument("--summarize", help="re-render a saved scale.json (no training)")
    args = ap.parse_args()
    if args.summarize:
        saved = json.loads(Path(args.summarize).read_text())
        return summarize(saved["rows"], saved["machine"], argparse.Namespace(**saved["args"]))
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    data = _data(work / "sums.jsonl")
    rows = [run_mode(m, args, work, data) for m in args.modes.split(",")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    summarize(
        rows, f"{cpu}, {os.cpu_count()} cores, " + ("AVX512-BF16" if "avx512_bf16" in flags else "AVX2 only"), args
    )


def summarize(rows: list[dict], kind: str, args) -> None:
    by = {r["mode"]: r for r in rows}
    summary = {"machine": kind, "platform": platform.platform(), "args": vars(args), "rows": rows}
    if "ddp" in by and "fsdp" in by:
        ddp, fsdp = by["ddp"]["peak_rss_mb_per_process"], by["fsdp"]["peak_rss_mb_per_process"]
        summary["fsdp_saves_mb"] = {"highest_process": max(ddp) - max(fsdp), "lowest_process": min(ddp) - min(fsdp)}
        summary["planned_saving_mb"] = round(planned_saving_mb(rows))
    lines = [
        f"SmolLM2-135M full fine-tuning, {args.steps} steps, global batch {2 * args.batch_size}; {kind}",
        "",
        "| mode | processes | precision | peak RSS per process (MB) | samples/s | test loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        peaks = " / ".join(str(x) for x in r["peak_rss_mb_per_process"])
        lines.append(
            f"| {r['mode']} | {r['processes']} | {r['precision']} | {peaks} | {r['samples_per_s']:.1f} | {r['test_loss']:.4f} |"
        )
    if "fsdp_saves_mb" in summary:
        got, plan = summary["fsdp_saves_mb"], summary["planned_saving_mb"]
        lines += [
            "",
            f"FSDP saves {got['lowest_process']} MB per process against DDP on rank 1 and {got['highest_process']} MB on"
            f" rank 0, which also gathers the best weights into host memory to save them (on a GPU that copy is in CPU"
            f" memory). `plan --gpus 2` predicts {plan} MB: {100 * (got['lowest_process'] / plan - 1):+.0f}% /"
            f" {100 * (got['highest_process'] / plan - 1):+.0f}%.",
        ]
    out = ROOT / "benchmarks/results"
    (out / "scale.json").write_text(json.dumps(summary, indent=1))
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
