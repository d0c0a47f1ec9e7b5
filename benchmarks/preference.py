"""Preference and reward tuning on the JSON-extraction demo (issue #19): SFT alone vs SFT + DPO vs SFT + GRPO.

    .venv/bin/python benchmarks/preference.py            # ~35 min on 2 AVX2-only cores (measured: see the results)
    .venv/bin/python benchmarks/preference.py --quick    # tiny sizes: a smoke test of every path (~8 min)

Needs data/debian-json.jsonl (scripts/build_debian_json.py, as scripts/demo_generative.sh does). Steps, each a tunesmith
command in its own process (its own peak memory), cached in --work so that a rerun resumes where it stopped:
1. SFT: smollm2-135m-instruct + LoRA (r=16, q/k/v/o) on `samples` rows of data/debian-json.jsonl (split 85/5/10,
   the quickstart's), `sft_steps` steps of 8.
2. Pairs: `tunesmith data pairs SFT --from generations --split train --check fields`: the SFT model answers its own
   training prompts; an answer that is not a JSON object with the four keys, or has a field unlike the reference's,
   is the rejected side, the reference the chosen one.
3. `tunesmith export SFT --format hf`: the SFT model merged, the start of both tuned variants.
4. DPO: LoRA on the merged SFT model, those pairs (beta 0.1, reference = adapters off, precomputed).
5. GRPO: LoRA on the merged SFT model, the same rows and split as SFT (so the same test prompts), K=4 completions per
   prompt, rewards json_schema (the 4 keys) + exact (fields equal to the reference's) + 0.5 x faithfulness
   (name and summary, the fields the text states, must occur in it), beta 0.04.
6. Every model answers the same held-out test prompts (SFT's test split; greedy, `new_tokens`): JSON validity (an
   object with the 4 keys), field exact match (share of the 4 fields equal to the reference's), faithfulness (the
   share of name/summary values that literally occur in the prompt; judged answers only). 95% bootstrap CIs over
   prompts, and paired bootstrap CIs of each variant minus SFT.

A finished step is not rerun (delete --work, or the step's <work>/done/<step>.json and what follows, after changing a
setting). Prints progress to stderr, then the JSON summary and the Markdown table; writes benchmarks/results/preference.{json,md}
(preference-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "debian-json.jsonl"
KEYS = ["name", "summary", "section", "kind"]
COPIED = ["name", "summary"]  # stated in the input text; section and kind are inferred, so not judged for faithfulness
SIZES = {
    "full": {"samples": 600, "sft_steps": 40, "pair_limit": 96, "dpo_epochs": 1, "grpo_steps": 12, "new_tokens": 96},
    "quick": {"samples": 120, "sft_steps": 4, "pair_limit": 16, "dpo_epochs": 1, "grpo_steps": 2, "new_tokens": 48},
}
LORA = {
    "name": "lora",
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_config(name: str, size: dict, work: Path) -> dict:
    return {
        "name": name,
        "output_dir": str(work / "runs"),
        "seed": 0,
        "data": {
            "path": str(DATA),
            "sample_format": "chat",
            "validation_size": 0.05,
            "test_size": 0.1,
            "max_length": 320,
            "max_samples": size["samples"],
        },
        "model": {"name": "smollm2-135m-instruct"},
        "strategy": LORA,
        "eval": {"batch_size": 16},
        "generate": {"samples": 0, "before": False, "max_new_tokens": size["new_tokens"], "batch_size": 16},
        "tracking": {"backend": "none"},
    }


def sft_config(size: dict, work: Path) -> dict:
    cfg = base_config("sft", size, work)
    cfg["task"] = "causal-lm"
    cfg["data"]["packing"] = False
    cfg["generate"]["json_keys"] = KEYS  # `data pairs --check fields` reads the keys from the run
    cfg["train"] = {
        "max_steps": size["sft_steps"],
        "batch_size": 8,
        "lr": 5e-4,
        "warmup_ratio": 0.05,
        "scheduler": "cosine",
        "patience": None,
        "log_every": 5,
    }
    return cfg


def dpo_config(size: dict, work: Path, merged: Path, pairs: Path) -> dict:
    cfg = base_config("dpo", size, work)
    cfg.update(task="preference", model={"name": str(merged)})
    cfg["data"] = {"path": str(pairs), "validation_size": 0.1, "test_size": 0.1, "max_length": 320}
    cfg["preference"] = {"loss": "dpo", "beta": 0.1, "reference": "adapters-off"}
    cfg["train"] = {"epochs": size["dpo_epochs"], "batch_size": 4, "lr": 2e-4, "patience": None, "log_every": 5}
    return cfg


def grpo_config(size: dict, work: Path, merged: Path) -> dict:
    cfg = base_config("grpo", size, work)
    cfg.update(task="reward-tuning", model={"name": str(merged)})
    cfg["reward"] = [
        {"kind": "json_schema", "keys": KEYS},
        {"kind": "exact"},
        {"kind": "faithfulness", "keys": COPIED, "weight": 0.5},
    ]
    cfg["grpo"] = {"samples": 4, "beta": 0.04, "eval_prompts": 8}
    cfg["train"] = {
        "max_steps": size["grpo_steps"],
        "batch_size": 2,
        "lr": 2e-4,
        "eval_every": max(1, size["grpo_steps"] // 2),
        "patience": None,
        "log_every": 2,
    }
    return cfg


def tunesmith(args: list[str], work: Path, key: str) -> float:
    """One tunesmith command, logged to <work>/logs/<key>.log; its wall seconds."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(work / "logs" / f"{key}.log", "w") as log:
        proc = subprocess.run([str(ROOT / ".venv/bin/tunesmith"), *args], cwd=ROOT, env=env, stdout=log, stderr=log)
    if proc.returncode != 0:
        tail = (work / "logs" / f"{key}.log").read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{key} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - t0


def step(key: str, work: Path, fn) -> dict:
    """A cached step: its record from <work>/done/<key>.json, or run it and keep what it returns."""
    done = work / "done" / f"{key}.json"
    if done.exists():
        say(f"{key}: cached")
        return json.loads(done.read_text())
    say(f"{key}: start")
    out = fn()
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out, indent=1))
    say(f"{key}: done")
    return out


def train(key: str, cfg: dict, work: Path) -> dict:
    """A run of this config: a complete one already in <work>/runs (this benchmark stopped while it trained), else a
    new one. wall_seconds is None for a run found complete."""
    path = work / "configs" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    run = _complete_run(cfg, work)
    wall = None
    if run is None:
        path.write_text(json.dumps(cfg, indent=1))
        wall = round(tunesmith(["train", str(path)], work, key), 1)
        run = max((work / "runs").glob(f"{cfg['name']}-*"), key=lambda p: p.stat().st_mtime)
    info = json.loads((run / "run.json").read_text())
    t = info["timings"]
    return {
        "run": str(run),
        "wall_seconds": wall,
        "train_seconds": round(t["train_seconds"], 1),
        "peak_rss_mb": round(t["peak_rss_mb"]),
        "steps": json.loads((run / "metrics.json").read_text())["steps"],
    }


def _complete_run(cfg: dict, work: Path) -> Path | None:
    import yaml

    for run in sorted((work / "runs").glob(f"{cfg['name']}-*")):
        info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        same = all(
            saved.get(k) == v or (isinstance(v, dict) and v.items() <= (saved.get(k) or {}).items())
            for k, v in cfg.items()
            if k != "output_dir"
        )
        if info.get("status") == "complete" and same:
            return run
    return None


# ---------------------------------------------------------------- evaluation


def scores(outputs: list[str], samples) -> dict[str, list]:
    """Per prompt: json_valid (0/1), field exact match (share of the 4 fields), faithfulness (None: not judged)."""
    from tunesmith.tasks.generative.generation import faithfulness, json_scores

    out = {"json_valid": [], "field_exact_match": [], "faithful": []}
    for text, s in zip(outputs, samples):
        one = json_scores([text], [s.reference], KEYS)
        out["json_valid"].append(one["json_valid"])
        out["field_exact_match"].append(one["field_exact_match"])
        out["faithful"].append(faithfulness(text, s.prompt_view(), COPIED))
    return out


def bootstrap(values: list, other: list | None = None, n: int = 4000, seed: int = 0) -> dict:
    """Mean (or paired mean difference values - other) with a 95% percentile-bootstrap CI over prompts; prompts whose
    value is None (faithfulness not judged) are left out of that figure (paired: unless both are judged)."""
    pairs = [(v, o) for v, o in zip(values, other or [0.0] * len(values)) if v is not None and o is not None]
    if not pairs:
        return {"mean": None, "low": None, "high": None, "n": 0}
    d = np.array([v - o for v, o in pairs], dtype=float)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": round(float(d.mean()), 4), "low": round(float(lo), 4), "high": round(float(hi), 4), "n": len(d)}


def evaluate(runs: dict[str, str], sft_run: str, new_tokens: int) -> dict:
    from tunesmith import load_run
    from tunesmith.tasks.generative.formats import load_gen_splits

    samples = load_gen_splits(load_run(sft_run).config).test.samples
    prompts = [s.messages[:-1] for s in samples]
    per = {}
    for name, path in runs.items():
        say(f"evaluate {name}: {len(prompts)} test prompts")
        t0 = time.perf_counter()
        per[name] = scores(load_run(path).generate(prompts, new_tokens, do_sample=False), samples)
        per[name]["seconds"] = round(time.perf_counter() - t0, 1)
    table = {}
    for name, s in per.items():
        row = {m: bootstrap(s[m]) for m in ("json_valid", "field_exact_match", "faithful")}
        if name != "sft":
            row["vs_sft"] = {m: bootstrap(s[m], per["sft"][m]) for m in ("json_valid", "field_exact_match", "faithful")}
        table[name] = row
    return {"n_prompts": len(prompts), "scores": table, "eval_seconds": {k: v["seconds"] for k, v in per.items()}}


# ---------------------------------------------------------------- output


def machine() -> dict:
    import torch

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in cpu.splitlines() if ln.startswith("Flags")), [])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "arch": platform.machine(),
        "torch": torch.__version__,
        "commit": commit.stdout.strip() or None,
    }


def ci(c: dict, signed: bool = False) -> str:
    if c["mean"] is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(c['mean'])} [{f.format(c['low'])}, {f.format(c['high'])}]"


def markdown(result: dict) -> str:
    ev, steps, m = result["evaluation"], result["steps"], result["machine"]
    cpu = f"{m['cpu']}, {m['cores']} cores, " + ("AVX512-BF16" if m["avx512_bf16"] else "AVX2 only, fp32")
    lines = [
        f"# SFT vs SFT + DPO vs SFT + GRPO (smollm2-135m-instruct, JSON extraction) on {cpu}",
        "",
        f"{ev['n_prompts']} held-out test prompts, greedy. 95% bootstrap CIs over prompts; the second line of each variant is "
        "its paired difference to SFT. Faithfulness: share of the name/summary values found in the prompt (answers "
        "that are JSON objects only).",
        "",
        "| model | JSON valid | field exact match | faithfulness | train s | peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("sft", "dpo", "grpo"):
        row, st = ev["scores"][name], steps[name]
        extra = " (+ SFT)" if name != "sft" else ""
        lines.append(
            f"| {name.upper()}{extra} | {ci(row['json_valid'])} | {ci(row['field_exact_match'])} | {ci(row['faithful'])} | "
            f"{st['train_seconds']:.0f} | {st['peak_rss_mb']} |"
        )
        if "vs_sft" in row:
            d = row["vs_sft"]
            lines.append(
                f"| ... minus SFT | {ci(d['json_valid'], True)} | {ci(d['field_exact_match'], True)} | "
                f"{ci(d['faithful'], True)} | | |"
            )
    p = steps["pairs"]
    lines += [
        "",
        f"DPO pairs: {p.get('pairs')} from {p.get('answered')} training prompts the SFT model answered "
        f"({p.get('failed')} failed the fields check). Settings: {json.dumps(result['settings'])}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/tunesmith-preference")
    a = ap.parse_args()
    size = SIZES["quick" if a.quick else "full"]
    work = Path(a.work) / ("quick" if a.quick else "full")
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is missing: run `python scripts/build_debian_json.py --out {DATA} --n 900` first")
    steps = {"sft": step("sft", work, lambda: train("sft", sft_config(size, work), work))}
    sft = steps["sft"]["run"]
    pairs_file, merged = work / "pairs.jsonl", work / "sft-merged"

    def build_pairs():
        args = ["data", "pairs", sft, "--from", "generations", "--split", "train", "--check", "fields"]
        wall = tunesmith([*args, "--limit", str(size["pair_limit"]), "--out", str(pairs_file)], work, "pairs")
        log = (work / "logs" / "pairs.log").read_text()
        rows = pairs_file.read_text().splitlines()
        return {"wall_seconds": round(wall, 1), "pairs": len(rows), "answered": size["pair_limit"], "log": log[-600:]}

    steps["pairs"] = step("pairs", work, build_pairs)
    steps["pairs"]["failed"] = steps["pairs"]["pairs"]
    step(
        "export",
        work,
        lambda: {
            "wall": tunesmith(
                ["export", sft, "--format", "hf", "--parity-rows", "4", "--out", str(merged)], work, "export"
            )
        },
    )
    steps["dpo"] = step("dpo", work, lambda: train("dpo", dpo_config(size, work, merged, pairs_file), work))
    steps["grpo"] = step("grpo", work, lambda: train("grpo", grpo_config(size, work, merged), work))
    runs = {k: steps[k]["run"] for k in ("sft", "dpo", "grpo")}
    evaluation = step("evaluate", work, lambda: evaluate(runs, sft, size["new_tokens"]))
    result = {
        "machine": machine(),
        "settings": {"size": "quick" if a.quick else "full", **size},
        "steps": steps,
        "evaluation": evaluation,
    }
    md = markdown(result)
    tag = "-quick" if a.quick else ""
    out = ROOT / "benchmarks" / "results"
    (out / f"preference{tag}.json").write_text(json.dumps(result, indent=1))
    (out / f"preference{tag}.md").write_text(md)
    print(json.dumps(result["evaluation"], indent=1))
    print(md)


if __name__ == "__main__":
    main()
