"""`tunesmith plan` against measurement: full / lora / freeze / linear-probe at two batch sizes (`speed.py --plan-grid`).

Each point is one short `tunesmith` training process (speed.py's worker); the plan is asked for the same model,
strategy, batch, precision and the measured mean padded length. Writes benchmarks/results/speed-plan.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from speed import CONFIGS, ROOT, run_worker

GRID = [
    ("ts-full", 16),
    ("ts-lora", 16),
    ("ts-freeze", 16),
    ("ts-probe", 16),
    ("ts-full", 64),
    ("ts-lora", 64),
    ("ts-freeze", 64),
    ("ts-probe", 64),
]


def main(args) -> None:
    from tunesmith.tools.plan import Workload, predict

    peak = run_worker("peak", {"device": args.device})["peak_flops"]
    rows = []
    for name, batch in GRID:
        settings = {
            "steps": 25,
            "warmup_steps": 5,
            "samples": args.samples,
            "batch_size": batch,
            "max_length": args.max_length,
            "seed": args.seed,
            "device": args.device,
            "warmup_ratio": 0.06,
        }
        m = run_worker(name, settings)
        if "error" in m:
            rows.append({"config": name, "batch": batch, "error": m["error"]})
            print(rows[-1], flush=True)
            continue
        strategy = CONFIGS[name]["strategy"]
        probe = strategy["name"] == "linear-probe"
        seq = m["probe_tokens"] / args.samples if probe else m["mean_padded_len"]
        wl = Workload.from_model_name(
            "minilm",
            strategy,
            batch_size=batch,
            seq_len=seq,
            precision=m["precision"],
            device=args.device,
            max_length=args.max_length,
            n_examples=args.samples,
        )
        p = predict(wl, peak_flops=peak)
        row = {
            "config": name,
            "batch": batch,
            "seq_len": round(seq, 1),
            "precision": m["precision"],
            "predicted_ms": p.ms_per_step,
            "measured_ms": None if probe else m["ms_per_step"],
            "predicted_mb": p.peak_mb,
            "measured_mb": m["peak_train_mb"],
            "memory_error": p.peak_mb / m["peak_train_mb"] - 1,
            "time_error": None if probe else p.ms_per_step / m["ms_per_step"] - 1,
        }
        if probe:
            row.update(predicted_feature_s=p.time.get("feature_pass_s"), measured_feature_s=m.get("features_s"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    ok = [r for r in rows if "error" not in r]
    summary = {
        "max_abs_memory_error": max(abs(r["memory_error"]) for r in ok),
        "median_abs_time_error": statistics.median(abs(r["time_error"]) for r in ok if r["time_error"] is not None),
        "max_abs_time_error": max(abs(r["time_error"]) for r in ok if r["time_error"] is not None),
    }
    out = ROOT / "benchmarks" / "results"
    (out / "speed-plan.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
                "peak_flops": peak,
                "rows": rows,
                "summary": summary,
                "when": time.strftime("%Y-%m-%d %H:%M"),
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"Command: `python benchmarks/speed.py {' '.join(sys.argv[1:])}` (25 steps each, timed over steps 6-25)",
        "",
        "| strategy | batch | seq len | predicted ms/step | measured | error | predicted peak MB | measured | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['batch']} | error: {r['error'][:80]} | | | | | | |")
            continue
        t = (
            f"{r['predicted_ms']:.0f} | {r['measured_ms']:.0f} | {100 * r['time_error']:+.0f}%"
            if r["measured_ms"]
            else f"feature pass {r['predicted_feature_s']:.1f} s | {r['measured_feature_s']:.1f} s | {100 * (r['predicted_feature_s'] / r['measured_feature_s'] - 1):+.0f}%"
        )
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['seq_len']} | {t} | {r['predicted_mb']:.0f} | {r['measured_mb']:.0f} | {100 * r['memory_error']:+.0f}% |"
        )
    lines += [
        "",
        f"Largest memory error {100 * summary['max_abs_memory_error']:.0f}%; time error median {100 * summary['median_abs_time_error']:.0f}%, "
        f"largest {100 * summary['max_abs_time_error']:.0f}%.",
    ]
    (out / "speed-plan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def refit_table(path=None) -> str:
    """The stored grid measurements against the current constants (fit residuals: these runs fitted the CPU constants)."""
    from tunesmith.tools.plan import Workload, predict

    path = path or ROOT / "benchmarks" / "results" / "speed-plan.json"
    data = json.loads(path.read_text())
    lines = [
        "| strategy | batch | seq len | predicted ms/step | measured | residual | predicted peak MB | measured | residual |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            continue
        strategy = CONFIGS[r["config"]]["strategy"]
        probe = strategy["name"] == "linear-probe"
        seq = data.get("probe_mean_len", 32.7) if probe else r["seq_len"]
        wl = Workload.from_model_name(
            "minilm",
            strategy,
            batch_size=r["batch"],
            seq_len=seq,
            precision=r["precision"],
            device="cpu",
            max_length=96,
            n_examples=4000,
        )
        p = predict(wl, peak_flops=data["peak_flops"])
        if probe:
            t = f"feature pass {p.time['feature_pass_s']:.1f} s | {r['measured_feature_s']:.1f} s | {100 * (p.time['feature_pass_s'] / r['measured_feature_s'] - 1):+.0f}%"
        else:
            t = f"{p.ms_per_step:.0f} | {r['measured_ms']:.0f} | {100 * (p.ms_per_step / r['measured_ms'] - 1):+.0f}%"
        lines.append(
            f"| {r['config']} | {r['batch']} | {seq:.1f} | {t} | {p.peak_mb:.0f} | {r['measured_mb']:.0f} | {100 * (p.peak_mb / r['measured_mb'] - 1):+.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(refit_table())
