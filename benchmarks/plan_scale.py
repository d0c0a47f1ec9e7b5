"""`tunesmith plan --gpus`: full / LoRA / QLoRA of Llama-2-7B and -70B on 1 and 8 H100s (the README's table).

    python benchmarks/plan_scale.py [--price 2.50] [--seq-len 1024] [--examples 50000]

Planning only (no GPU, no weights: configs/plan/llama-2-*/config.json). For each case the fastest mode that fits,
its memory per GPU, time per optimizer step, wall time and cost. Writes benchmarks/results/plan_scale.{json,md}.
The figures are the model's (tunesmith/tools/plan_scale.py), not measured on a GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from transformers import AutoConfig

    from tunesmith.tools.plan_devices import GPUS
    from tunesmith.tools.plan_scale import LMShape, ScaleRun, plan_modes, steps_for

    ap = argparse.ArgumentParser()
    ap.add_argument("--price", type=float, default=2.50, help="$ per GPU-hour")
    ap.add_argument("--seq-len", type=float, default=1024)
    ap.add_argument("--examples", type=int, default=50_000)
    ap.add_argument("--gpu", default="h100")
    args = ap.parse_args()
    device, rows = GPUS[args.gpu], []
    for model in ("7b", "70b"):
        shape = LMShape.from_config(AutoConfig.from_pretrained(ROOT / "configs/plan" / f"llama-2-{model}"))
        for label, family, quantized in (
            ("full", "dense", False),
            ("lora", "low-rank", False),
            ("qlora", "low-rank", True),
        ):
            for gpus in (1, 8):
                run = ScaleRun(
                    shape, family, gpus, micro_batch=4, seq_len=args.seq_len, grad_accum=4,
                    steps=steps_for(args.examples, 1, 4, gpus, 4), gradient_checkpointing=True,
                    lora_targets="all-linear", quantized=quantized,
                )  # fmt: skip
                modes = plan_modes(run, device, args.price)
                fitting = [m for m in modes if m["fits"]]
                best = min(fitting, key=lambda m: m["step_s"]) if fitting else min(modes, key=lambda m: m["per_gpu_gb"])
                rows.append({"model": f"Llama-2-{model}", "strategy": label, "gpus": gpus, "fits": bool(fitting),
                             "best": best, "modes": modes})  # fmt: skip
    table = [
        f"Llama-2, {args.examples:,} examples x {args.seq_len:.0f} tokens, 1 epoch, micro-batch 4 x 4 accumulation,"
        f" gradient checkpointing, bf16, LoRA r=16 on all linear layers; {device.name}, ${args.price:.2f} per GPU-hour",
        "",
        "| model | strategy | GPUs | fastest mode that fits | GB per GPU | s/step | hours | $ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["best"]
        if r["fits"]:
            cells = [
                b["mode"],
                f"{b['per_gpu_gb']:.1f}",
                f"{b['step_s']:.1f}",
                f"{b['hours']:.1f}",
                f"{b['cost_usd']:,.0f}",
            ]
        else:
            cells = [f"nothing fits (least: {b['mode']})", f"{b['per_gpu_gb']:.0f}", "", "", ""]
        table.append(f"| {r['model']} | {r['strategy']} | {r['gpus']} | " + " | ".join(cells) + " |")
    out = ROOT / "benchmarks/results"
    (out / "plan_scale.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    (out / "plan_scale.md").write_text("\n".join(table) + "\n")
    print(
        json.dumps(
            [{k: r[k] for k in ("model", "strategy", "gpus", "fits")} | {"mode": r["best"]["mode"]} for r in rows]
        )
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
