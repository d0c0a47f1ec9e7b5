"""Every strategy on the same data, model, steps and seed: quality, speed, memory, size.

    .venv/bin/python benchmarks/strategies.py [--samples 4000] [--epochs 2] [--strategies full,lora,...]

Each strategy runs as its own `tunesmith train` process (so peak memory is its own) on the
quickstart corpus (stratified subset) with `minilm`. Prints JSON and a Markdown table and writes
both to benchmarks/results/strategies.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Learning rates the field uses for each method (full fine-tuning low, adapters and heads higher).
PLAN = {
    "full": ({}, 5e-5),
    "freeze": ({"layers": 2}, 1e-4),
    "discriminative-lr": ({"layer_lr_decay": 0.8}, 8e-5),
    "gradual-unfreeze": ({"every": 40}, 8e-5),
    "linear-probe": ({}, 5e-3),
    "lora": ({"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"]}, 1e-3),
    "qlora-nf4": (
        {"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"], "quantize": "nf4"},
        1e-3,
    ),
    "qlora-int8": (
        {"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"], "quantize": "int8"},
        1e-3,
    ),
    "ia3": ({}, 5e-3),
    "prompt-tuning": ({"virtual_tokens": 20}, 3e-2),
    "prefix-tuning": ({"virtual_tokens": 20}, 1e-2),
}


def run_one(name: str, options: dict, lr: float, args, workdir: Path) -> dict:
    strategy = "lora" if name.startswith("qlora") else name
    cfg = yaml.safe_load((ROOT / "configs/quickstart/sentiment-lora.yaml").read_text())
    cfg.update(name=f"bench-{name}", output_dir=str(workdir / "runs"), seed=0)
    cfg["data"]["max_samples"] = args.samples
    cfg["strategy"] = {"name": strategy, **options}
    cfg["train"] = {"epochs": args.epochs, "batch_size": 32, "lr": lr, "eval_every": 10_000, "patience": None}
    cfg["eval"] = {"baseline": name == "full"}
    cfg["tracking"] = {"backend": "none"}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {
            "strategy": name,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
        }
    run = next(p for p in (workdir / "runs").iterdir() if p.name.startswith(f"bench-{name}-"))
    info, metrics = json.loads((run / "run.json").read_text()), json.loads((run / "metrics.json").read_text())
    row = {
        "strategy": name,
        "macro_f1": round(metrics["test"]["macro_f1"], 4),
        "accuracy": round(metrics["test"]["accuracy"], 4),
        "train_samples_per_s": info["timings"]["samples_per_second"],
        "train_seconds": info["timings"]["train_seconds"],
        "peak_rss_mb": info["timings"]["peak_rss_mb"],
        "trainable_params": info["parameters"]["trainable"],
        "total_params": info["parameters"]["total"],
        "saved_mb": round(info["saved_bytes"] / 2**20, 3),
        "wall_seconds": round(wall, 1),
        "lr": lr,
    }
    if metrics.get("baseline"):
        row["baseline_tfidf_macro_f1"] = round(metrics["baseline"]["test"]["macro_f1"], 4)
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| strategy | test macro-F1 | train samples/s | train s | whole run s | peak RSS MB | trainable params (at start) | saved MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['strategy']} | error: {r['error'][:80]} | | | | | | |")
            continue
        share = 100 * r["trainable_params"] / r["total_params"]
        out.append(
            f"| {r['strategy']} | {r['macro_f1']:.4f} | {r['train_samples_per_s']:.0f} | {r['train_seconds']:.1f} | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['trainable_params']:,} ({share:.2f}%) | {r['saved_mb']:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4000, help="stratified subset of the corpus (70/10/20 split)")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--strategies", default=",".join(PLAN))
    p.add_argument("--tag", default="", help="suffix of the result files (strategies-<tag>.json/md)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.strategies.split(","):
            options, lr = PLAN[name]
            rows.append(run_one(name, options, lr, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"samples": args.samples, "epochs": args.epochs, "model": "minilm", "batch_size": 32, "seed": 0}
    stem = f"strategies-{args.tag}" if args.tag else "strategies"
    (out / f"{stem}.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")
    md = table(rows)
    (out / f"{stem}.md").write_text(f"Settings: {json.dumps(meta)}\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
