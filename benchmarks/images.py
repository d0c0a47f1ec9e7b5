"""The image quickstart's table: linear-probe, freeze, full and LoRA on EfficientNet-Lite0, beside the pixel baseline.

    .venv/bin/python scripts/fashion_mnist.py --out data/fashion-mnist     # 3,000 train + 1,000 test pictures
    .venv/bin/python benchmarks/images.py                                  # ~12 min on 2 cores (AVX512-BF16)
    .venv/bin/python benchmarks/images.py --quick                          # 1 epoch each: a smoke test
    .venv/bin/python benchmarks/images.py --photos                         # decoding 640x480 JPEGs: workers 0 vs 1

Each variant is the quickstart config (configs/quickstart/images-efficientnet.yaml: 128 px, 3 epochs, random
resized crops + flips) with only the strategy (and its learning rate) changed, trained in its own process with
`tunesmith train` (peak memory is that process's). Reads each run's metrics.json / run.json: test macro-F1 and
its 95% bootstrap interval, the raw-pixel logistic regression's macro-F1, train seconds, images/s, peak RSS.
Also times the decoding: one epoch of full fine-tuning with images.workers 0 (decoding and augmenting in the
training process) vs 1 (a DataLoader worker decodes ahead). Prints JSON and a Markdown table; writes
benchmarks/results/images.{json,md}. Runs sequentially: never beside another benchmark or the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart" / "images-efficientnet.yaml"
VARIANTS = {
    "linear-probe": ["strategy.name=linear-probe", "train.lr=1e-2"],
    "freeze (top 4 blocks)": ["strategy.name=freeze", "strategy.layers=4", "train.lr=1e-3"],
    "full": ["strategy.name=full", "train.lr=1e-3"],
    "lora r=16": ["strategy.name=lora", "strategy.r=16", "strategy.alpha=32", "train.lr=2e-3"],
}


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        flags = "AMX" if "amx_bf16" in out else "AVX512-BF16" if "avx512_bf16" in out else "AVX2"
        return f"{name}, {flags}, {len(__import__('os').sched_getaffinity(0))} cores"
    except Exception:
        return platform.processor() or "unknown"


def train(name: str, overrides: list[str], work: Path) -> dict:
    out = work / name.split(" ")[0]
    cmd = [sys.executable, "-m", "tunesmith.cli", "train", str(CONFIG), f"output_dir={out}", "tracking.backend=none",
           *overrides]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: tunesmith train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = sorted(p for p in out.iterdir() if (p / "metrics.json").is_file())[-1]
    m, info = json.loads((run / "metrics.json").read_text()), json.loads((run / "run.json").read_text())
    ci = m["test_ci"]["macro_f1"]
    t = info["timings"]
    return {
        "variant": name,
        "macro_f1": round(m["test"]["macro_f1"], 4),
        "ci_low": round(ci["low"], 4),
        "ci_high": round(ci["high"], 4),
        "accuracy": round(m["test"]["accuracy"], 4),
        "baseline_macro_f1": round(m["baseline"]["test"]["macro_f1"], 4) if m.get("baseline") else None,
        "trainable": info["parameters"]["trainable"],
        "train_seconds": round(t["train_seconds"], 1),
        "images_per_second": round(t["samples_per_second"], 1),
        "peak_rss_mb": round(t["peak_rss_mb"]),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def render(result: dict) -> str:
    """The Markdown table of a result (also `--render`: from benchmarks/results/images.json, without training)."""
    rows, decode = result["rows"], result["decoding_images_per_second"]
    lines = [
        f"Measured on {result['machine']}; `{result['config']}` (128 px, 3 epochs, 2,700 training pictures, "
        "1,000 test pictures).",
        "",
        "| strategy | test macro-F1 [95% CI] | accuracy | trainable | train s | whole run s | train images/s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['macro_f1']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['accuracy']:.3f} "
            f"| {r['trainable']:,} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} "
            f"| {r['images_per_second']:.0f} | {r['peak_rss_mb']:,} |"
        )
    lines.append(f"| raw pixels 16x16 + logistic regression | {rows[0]['baseline_macro_f1']:.3f} | | | | | | |")
    lines += [
        "",
        "`train s`: the optimizer steps (a linear probe's backbone pass over the images is in `whole run s`, which also",
        "holds the audit, the evaluation and saving). Decoding ahead, full fine-tuning, 1 epoch: "
        f"{decode['workers_0']:.0f} images/s with images.workers 0, {decode['workers_1']:.0f} with 1.",
    ]
    if "photos_images_per_second" in result:
        p = result["photos_images_per_second"]
        lines.append(
            f"On 640x480 JPEG photos (the same pictures, upscaled): {p['workers_0']:.0f} images/s with 0 workers, "
            f"{p['workers_1']:.0f} with 1."
        )
    return "\n".join(lines) + "\n"


def make_photos(src: Path, out: Path, per_class: int = 100) -> Path:
    """640x480 JPEG (quality 90) versions of the training pictures, with mild noise: decoding costs what a photo's does."""
    import numpy as np
    from PIL import Image

    if (out / ".done").is_file():
        return out
    rng = np.random.default_rng(0)
    for label_dir in sorted((src / "train").iterdir()):
        (out / "train" / label_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(label_dir.glob("*.png"))[:per_class]:
            big = np.asarray(Image.open(f).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC), np.float32)
            big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
            Image.fromarray(big).save(out / "train" / label_dir.name / f"{f.stem}.jpg", quality=90)
    (out / ".done").write_text("")
    return out


def photos(work: Path) -> dict:
    """Full fine-tuning, 1 epoch over 1,000 640x480 JPEGs (validation/test split from them), workers 0 vs 1."""
    folder = make_photos(ROOT / "data" / "fashion-mnist", work / "photos-data")
    out = {}
    for workers in (0, 1):
        r = train(f"photos{workers}", [f"data.path={folder / 'train'}", "strategy.name=full", "train.epochs=1",
                                       f"images.workers={workers}", "eval.robustness=false", "eval.efficiency=false",
                                       "eval.baseline=false", "audit.enabled=false"], work)  # fmt: skip
        out[f"workers_{workers}"] = r["images_per_second"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", default="/tmp/tunesmith-images")
    p.add_argument("--render", action="store_true", help="rewrite results/images.md from results/images.json")
    p.add_argument("--photos", action="store_true", help="only: decoding 640x480 JPEGs in the loop vs a worker")
    a = p.parse_args()
    if a.render:
        result = json.loads((ROOT / "benchmarks" / "results" / "images.json").read_text())
        (ROOT / "benchmarks" / "results" / "images.md").write_text(render(result))
        print(render(result))
        return 0
    if a.photos:  # only the photo-decoding comparison, merged into the saved result
        path = ROOT / "benchmarks" / "results" / "images.json"
        result = json.loads(path.read_text())
        result["photos_images_per_second"] = photos(Path(a.work) / "photos")
        path.write_text(json.dumps(result, indent=2) + "\n")
        (path.with_suffix(".md")).write_text(render(result))
        print(render(result))
        return 0
    work = Path(a.work) / ("quick" if a.quick else "full")
    extra = ["train.epochs=1"] if a.quick else []
    rows = []
    for name, overrides in VARIANTS.items():
        print(f"images benchmark: {name} ...", file=sys.stderr, flush=True)
        rows.append(train(name, [*overrides, *extra], work))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    decode = {}
    for workers in (0, 1):
        r = train(f"workers{workers}", ["strategy.name=full", "train.epochs=1", f"images.workers={workers}",
                                        "eval.robustness=false", "eval.efficiency=false"], work)  # fmt: skip
        decode[workers] = r["images_per_second"]
    result = {"machine": cpu(), "config": str(CONFIG.relative_to(ROOT)), "rows": rows,
              "decoding_images_per_second": {"workers_0": decode[0], "workers_1": decode[1]}}  # fmt: skip
    md = render(result)
    print(json.dumps(result, indent=2))
    print(md)
    if not a.quick:
        out = ROOT / "benchmarks" / "results"
        (out / "images.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "images.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
