"""Exports of real runs, each checked against its run: what each format keeps, weighs and costs.

    .venv/bin/python benchmarks/export.py                     # both parts (~8 min on 2 AMX cores)
    .venv/bin/python benchmarks/export.py --part classifier   # MiniLM + LoRA quickstart run -> ONNX fp32 / int8
    .venv/bin/python benchmarks/export.py --part lm           # SmolLM2-135M + LoRA -> HF, GGUF f16 / q8_0
    .venv/bin/python benchmarks/export.py --lm-run runs/debian-json-...  --gguf f16,q8_0,q4_0

Part `classifier`: the completed quickstart run (--cls-run, default runs/sentiment-lora-20261202-013004: MiniLM +
LoRA r=16 on 10k sentiment tweets) exported to ONNX fp32 and ONNX int8 (onnxruntime dynamic quantization,
per-channel QInt8 weights). Parity on the whole test split (2,001 tweets): macro-F1 of each against the gold
labels, label agreement with PyTorch (the run's model in fp32, adapters unmerged), size, and batch-1 / batch-32
latency (median of >= 5 calls, 2 threads) of PyTorch fp32 (merged) and the export.

Part `lm`: a SmolLM2-135M-Instruct + LoRA run (--lm-run; by default one trained here: r=16 on q/k/v/o, 40 steps
of 4 on 300 samples of data/debian-json.jsonl, max_length 320; ~2 min) exported to HF (merged, fp32 safetensors:
the dtype the weights train in; the run computes in bf16 autocast) and to GGUF (--gguf, default f16 and q8_0).
Parity on the run's 16 first test samples: test perplexity (every trained token), the share of greedy
continuations (<= 32 new tokens) identical to PyTorch's and the share whose first token agrees, max |logit
diff|, size.

Prints progress to stderr, then the JSON and the Markdown tables; writes benchmarks/results/export.{json,md}.
Exports and the trained run live in --work (default /tmp/tunesmith-export-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLS_RUN = ROOT / "runs" / "sentiment-lora-20261202-013004"
LM_DATA = ROOT / "data" / "debian-json.jsonl"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def export(run, out: Path, fmt: str, quantize: str | None, rows: int | None) -> dict:
    from tunesmith.export import ParityError, export_run

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    try:
        result = export_run(run, out, fmt, quantize, parity_rows=rows, say=say)
        report = result.report
    except ParityError:  # a miss is a result too: the folder and export.json are kept
        report = json.loads((out / "export.json").read_text())
    report["wall_seconds"] = round(time.time() - t0, 1)
    say(f"{fmt} {report['quantize']}: {report['status']} in {report['wall_seconds']:.0f}s")
    return report


def part_classifier(run_dir: Path, work: Path) -> dict:
    from tunesmith.runs.run import Run

    run = Run(run_dir)
    rows = run.info["data"]["splits"]["test"]["rows"]
    reports = {q: export(run, work / f"onnx-{q}", "onnx", q, rows) for q in ("none", "int8")}
    fp32 = reports["none"]["parity"]
    table = [
        {
            "variant": "PyTorch fp32",
            "macro_f1": fp32["metric"]["run"],
            "accuracy": fp32["other_metrics"][0]["run"],
            "label_agreement": 1.0,
            "size_mb": reports["none"]["pytorch_mb"],
            "latency_batch_1_ms": fp32["latency_ms"]["pytorch"]["batch_1"],
            "latency_batch_32_ms": fp32["latency_ms"]["pytorch"]["batch_32"],
            "status": "reference",
        }
    ]
    for q, name in (("none", "ONNX fp32"), ("int8", "ONNX int8")):
        r, p = reports[q], reports[q]["parity"]
        table.append(
            {
                "variant": name,
                "macro_f1": p["metric"]["export"],
                "accuracy": p["other_metrics"][0]["export"],
                "label_agreement": p["label_agreement"],
                "max_abs_logit_diff": p["max_abs_logit_diff"],
                "size_mb": r["size_mb"],
                "latency_batch_1_ms": p["latency_ms"]["export"]["batch_1"],
                "latency_batch_32_ms": p["latency_ms"]["export"]["batch_32"],
                "status": r["status"],
                "export_seconds": r["wall_seconds"],
            }
        )
    return {
        "run": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
        "run_test_macro_f1_bf16": run.metrics["test"]["macro_f1"],
        "rows": fp32["rows"],
        "exporter": reports["none"].get("exporter"),
        "table": table,
        "reports": reports,
    }


def train_lm(work: Path) -> tuple[Path, bool]:
    """A short SmolLM2 + LoRA run on the Debian JSON task (reused when --work already holds one); (run, trained now)."""
    import tunesmith

    runs = work / "lm-runs"
    done = [p for p in sorted(runs.glob("debian-json-*")) if (p / "metrics.json").is_file()]
    if done:
        say(f"lm: reusing {done[-1]}")
        return done[-1], False
    if not LM_DATA.is_file():
        raise SystemExit(f"{LM_DATA} is missing: run scripts/build_debian_json.py, or pass --lm-run RUN")
    say("lm: training SmolLM2-135M-Instruct + LoRA (40 steps of 4)")
    run = tunesmith.finetune(
        ROOT / "configs/quickstart/debian-json-smollm2.yaml",
        [
            f"output_dir={runs}",
            f"data.path={LM_DATA}",
            "data.max_samples=300",
            "train.epochs=1",
            "train.max_steps=40",
            "train.batch_size=4",
            "train.eval_every=40",
            "generate.samples=4",
            "generate.max_new_tokens=32",
            "generate.before=false",
            "tracking.backend=none",
        ],
    )
    return run.path, True


def part_lm(run_dir: Path, work: Path, types: list[str]) -> dict:
    from tunesmith.runs.run import Run

    run = Run(run_dir)
    reports = {"hf": export(run, work / "lm-hf", "hf", None, None)}
    for q in types:
        reports[q] = export(run, work / f"lm-gguf-{q}", "gguf", q, None)
    ref = reports["hf"]["parity"]
    table = [
        {
            "variant": "PyTorch (the run, fp32)",
            "size_mb": reports["hf"]["pytorch_mb"],
            "perplexity": ref["metric"]["run"],
            "greedy_exact_match": 1.0,
            "first_token_agreement": 1.0,
            "status": "reference",
        }
    ]
    for key, r in reports.items():
        p = r["parity"]
        table.append(
            {
                "variant": "HF (merged, fp32 safetensors)" if key == "hf" else f"GGUF {key}",
                "size_mb": r["size_mb"],
                "perplexity": p["metric"]["export"],
                "perplexity_rise": p["metric"]["drop"],
                "greedy_exact_match": p["greedy_exact_match"],
                "first_token_agreement": p["first_token_agreement"],
                "max_abs_logit_diff": p["max_abs_logit_diff"],
                "tokenizer_agreement": p.get("tokenizer_agreement"),
                "status": r["status"],
                "export_seconds": r["wall_seconds"],
            }
        )
    return {
        "run": str(run_dir),
        "run_test_perplexity_bf16": run.metrics["test"]["perplexity"],
        "rows": ref["rows"],
        "trained_tokens": ref["trained_tokens"],
        "max_new_tokens": ref["max_new_tokens"],
        "table": table,
        "reports": reports,
    }


def machine() -> dict:
    import torch

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in cpu.splitlines() if ln.startswith("Flags")), [])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    import gguf  # noqa: F401
    import onnxruntime

    from tunesmith import __version__

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(fl.startswith("amx") for fl in flags),
        "arch": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "gguf": _version("gguf"),
        "tunesmith": __version__,
        "commit": commit.stdout.strip() or None,
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _f(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def _wall(part: dict) -> str:
    if "wall_seconds" not in part:
        return ""
    return f"Wall time of the part: {part['wall_seconds'] / 60:.1f} min (measured {part.get('measured', '?')})"


def markdown(results: dict, command: str) -> str:
    mc = results["machine"]
    md = [
        "# Exports: what each format keeps, weighs and costs",
        "",
        f"Machine: {mc['cpu']}, {mc['cores']} cores, {'AVX512-BF16' if mc['avx512_bf16'] else 'no AVX512-BF16'}"
        f"{', AMX' if mc['amx'] else ''}; torch {mc['torch']}, onnxruntime {mc['onnxruntime']}, gguf {mc['gguf']}; "
        f"tunesmith {mc['tunesmith']} ({mc['commit']}).",
        "",
        f"    {command}",
        "",
    ]
    if "classifier" in results:
        c = results["classifier"]
        md += [
            f"### Classifier: {c['run']} (MiniLM + LoRA), the whole test split ({c['rows']} tweets)",
            "",
            "| variant | macro-F1 | accuracy | label agreement | max abs logit diff | size MB | batch-1 ms | batch-32 ms | parity |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in c["table"]:
            md.append(
                f"| {r['variant']} | {_f(r['macro_f1'])} | {_f(r['accuracy'])} | {r['label_agreement']:.1%} | "
                f"{_f(r.get('max_abs_logit_diff'), '.2g')} | {r['size_mb']:.1f} | {r['latency_batch_1_ms']:.1f} | "
                f"{r['latency_batch_32_ms']:.1f} | {r['status']} |"
            )
        md += [
            "",
            f"PyTorch is the run's model in fp32 (the run's own test macro-F1, computed in bf16 autocast: "
            f"{c['run_test_macro_f1_bf16']:.4f}); its size is the fp32 parameters in memory. ONNX exporter: "
            f"{c['exporter']}. Latency: median ms per call on the first test rows (batch 32: padded to the longest); "
            "int8 is onnxruntime's dynamic quantization, whose activation scales are computed per call, so its outputs "
            "depend a little on which rows share a batch.",
            "",
            _wall(c) + ".",
            "",
        ]
    if "lm" in results:
        m = results["lm"]
        md += [
            f"### Language model: SmolLM2-135M-Instruct + LoRA, {m['rows']} test samples ({m['trained_tokens']} trained "
            f"tokens; greedy continuations of <= {m['max_new_tokens']} tokens)",
            "",
            "| variant | size MB | test perplexity | perplexity rise | greedy exact match | first-token agreement | max abs logit diff | parity |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in m["table"]:
            md.append(
                f"| {r['variant']} | {r['size_mb']:.1f} | {r['perplexity']:.4f} | "
                f"{_f(r.get('perplexity_rise'), '+.2%')} | {r['greedy_exact_match']:.1%} | "
                f"{r['first_token_agreement']:.1%} | {_f(r.get('max_abs_logit_diff'), '.3g')} | {r['status']} |"
            )
        md += [
            "",
            f"Run: {m['run']} (its own test perplexity, in bf16 autocast over the whole test split: "
            f"{m['run_test_perplexity_bf16']:.4f}). GGUF files are read back by transformers' GGUF support (de-quantized "
            "to fp32) for the comparison; llama.cpp computes with the quantized blocks, so its numbers differ a little.",
            "",
            _wall(m) + ("; the SmolLM2 run was trained here" if m.get("trained_here") else "") + ".",
            "",
        ]
    md += [
        "How to read: every row is the export's own parity check (export.json in its folder); the reference is the run's "
        "model as trained (adapters unmerged) in fp32. Tolerances (docs/export.md): unquantized exports must match "
        "(fp32: max |logit diff| <= 1e-3, labels 100%; f16/bf16 looser), quantized ones may lose at most 0.02 "
        "macro-F1 (int8) or 2% perplexity (q8_0) and keep >= 95% labels / >= 80% first tokens.",
        "",
    ]
    return "\n".join(md)


def portable(text: str, work: Path) -> str:
    """Committed results name paths relative to the repo (and `$WORK` for --work), not this machine's."""
    return text.replace(f"{ROOT}/", "").replace(str(work.resolve()), "$WORK").replace(str(work), "$WORK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["classifier", "lm", "all"], default="all")
    ap.add_argument(
        "--cls-run", default=str(CLS_RUN), help="a complete classification run (default: the quickstart run)"
    )
    ap.add_argument("--lm-run", help="a complete SmolLM2 run (default: train a short one in --work)")
    ap.add_argument("--gguf", default="f16,q8_0", help="GGUF types to export (comma-separated)")
    ap.add_argument("--work", default="/tmp/tunesmith-export-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out = Path(args.out)
    previous = out / "export.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    if args.part in ("classifier", "all"):
        t1 = time.time()
        results["classifier"] = part_classifier(Path(args.cls_run).resolve(), work)
        results["classifier"].update(wall_seconds=round(time.time() - t1, 1), measured=time.strftime("%Y-%m-%d %H:%M"))
    if args.part in ("lm", "all"):
        t1 = time.time()
        run_dir, trained_here = (Path(args.lm_run).resolve(), False) if args.lm_run else train_lm(work)
        results["lm"] = part_lm(run_dir, work, [t for t in args.gguf.split(",") if t])
        results["lm"]["trained_here"] = trained_here
        results["lm"].update(wall_seconds=round(time.time() - t1, 1), measured=time.strftime("%Y-%m-%d %H:%M"))
    results["machine"] = machine()
    results["wall_seconds"] = round(time.time() - t0, 1)
    command = ".venv/bin/python benchmarks/export.py" + (f" --gguf {args.gguf}" if args.gguf != "f16,q8_0" else "")
    text = markdown(results, command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(portable(json.dumps(results, indent=2, default=float) + "\n", work))
    (out / "export.md").write_text(portable(text, work))
    print(json.dumps({p: results[p]["table"] for p in ("classifier", "lm") if p in results}, indent=1, default=float))
    print(text)
    say(f"done in {results['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
