"""Did multi-task help? (issue #17) A small primary task trained alone, with related tasks, and with them as auxiliaries.

    apt-get update -o Acquire::Languages=en              # once, as root: the English package descriptions
    .venv/bin/python benchmarks/multitask.py             # 3 seeds (~15 min on 2 AVX512-BF16 cores: ~5 min a seed)
    .venv/bin/python benchmarks/multitask.py --quick     # tiny sizes, 1 seed: a smoke test of every path

Data: Debian package descriptions (the summary line and the first paragraph of the long description, without the
package's name) from apt's Translation-en and Packages indexes. Two related tasks on the same kind of text:
  section (primary)  the archive section, 10 most common sections: deliberately small, 300 training rows
  kind               library / development files / documentation / data / program (from the section and the name),
                     3,000 rows from a pool of packages disjoint from `section`'s
(`arch`, all / any, is built too; add it to TASKS for a three-task benchmark.)

Arms, per seed (MiniLM, full fine-tuning, max_length 48, the same optimiser settings everywhere):
  single     each task alone, 100 steps of 16 (1,600 examples)
  multi      both tasks primary (selection on their mean macro-F1), round-robin: 200 steps, so each task
             sees the same 1,600 examples as alone
  aux        section primary, kind auxiliary (weight 0.5; selection on section only), the same 200 steps
Per arm: test macro-F1 with its 95% bootstrap interval, per task; and `tunesmith compare` of each multi-task run
against the task's single-task run on the same test rows (paired bootstrap CI of the delta, permutation p-value).

Prints the JSON summary and the Markdown table; writes benchmarks/results/multitask.{json,md}
(multitask-quick.* with --quick). Run folders are kept in --work (default /tmp/tunesmith-multitask).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("section", "kind")  # `arch` (all / any) is built too: add it here for a three-task benchmark
SIZES = {
    "full": {"pool": 1600, "val": 300, "test": 1000, "aux": 3000, "steps": 100, "sections": 10},
    "quick": {"pool": 200, "val": 40, "test": 100, "aux": 300, "steps": 12, "sections": 4},
}


def debian_tables(work: Path, size: dict, seed: int = 0) -> dict[str, Path]:
    """section.csv (primary pool) and aux.csv (kind, arch; disjoint packages): scripts/build_debian_tasks.py."""
    spec = importlib.util.spec_from_file_location("build_debian_tasks", ROOT / "scripts" / "build_debian_tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    return tasks.build(work, size["pool"], size["aux"], size["sections"], seed)


def base_config(work: Path, seed: int, steps: int, name: str) -> dict:
    return {
        "name": name,
        "seed": seed,
        "output_dir": str(work / "runs"),
        "model": {"name": "minilm"},
        "strategy": {"name": "full"},
        "train": {
            "max_steps": steps,
            "batch_size": 16,
            "lr": 1e-4,
            "eval_every": max(1, steps // 3),
            "patience": None,
            "log_every": 25,
        },
        "eval": {"robustness": False, "efficiency": False, "length_buckets": 0, "calibration": False},
        "audit": {"label_errors": False},
        "tracking": {"backend": "none"},
    }


def task_data(tables: dict, size: dict, name: str) -> dict:
    if name == "section":
        pool = size["pool"]
        return {
            "path": str(tables["section"]),
            "label_column": "section",
            "validation_size": size["val"] / pool,
            "test_size": size["test"] / pool,
            "max_length": 48,
        }
    return {"path": str(tables["aux"]), "label_column": name, "max_length": 48}


def train(cfg: dict, work: Path) -> Path:
    """One run in its own process (a clean accelerate state), cached by config: a rerun skips finished runs."""
    key = json.dumps(cfg, sort_keys=True)
    cache = work / "cache.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in done and (Path(done[key]) / "metrics.json").is_file():
        return Path(done[key])
    cfg_file = work / f"{cfg['name']}.json"
    cfg_file.write_text(json.dumps(cfg, indent=1))
    code = (
        "import json, sys; from tunesmith import finetune; "
        "run = finetune(json.load(open(sys.argv[1]))); print('RUN', run.path)"
    )
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(cfg_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg['name']} failed:\n{proc.stderr[-3000:]}")
    path = Path([line for line in proc.stdout.splitlines() if line.startswith("RUN ")][-1][4:])
    print(f"  {cfg['name']}: {time.time() - t0:.0f}s", file=sys.stderr)
    done[key] = str(path)
    cache.write_text(json.dumps(done, indent=1))
    return path


def figures(path: Path, task: str | None) -> dict:
    m = json.loads((path / "metrics.json").read_text())
    m = m["tasks"][task] if task and "tasks" in m else m
    ci = m["test_ci"]["macro_f1"]
    base = ((m.get("baseline") or {}).get("test") or {}).get("macro_f1")
    return {
        "macro_f1": m["test"]["macro_f1"],
        "low": ci["low"],
        "high": ci["high"],
        "n": m["test"]["n"],
        "baseline": base,
    }


def paired(single: Path, multi: Path, task: str) -> dict:
    from tunesmith.tools.compare import compare_runs

    c = compare_runs([single, multi], task=task, resamples=2000)
    assert c["paired"], "the runs were not tested on the same rows"
    d = c["comparisons"][0]["metrics"]["macro_f1"]
    return {k: d[k] for k in ("delta", "low", "high", "p") if k in d}


def run_seed(seed: int, tables: dict, size: dict, work: Path) -> dict:
    steps, tasks = size["steps"], list(TASKS)
    out: dict = {"single": {}, "multi": {}, "aux": {}, "paired": {"multi": {}, "aux": {}}}
    singles = {}
    for t in tasks:
        cfg = base_config(work, seed, steps, f"single-{t}-s{seed}")
        cfg["data"] = task_data(tables, size, t)
        singles[t] = train(cfg, work)
        out["single"][t] = figures(singles[t], None)
    for arm in ("multi", "aux"):
        cfg = base_config(work, seed, steps * len(tasks), f"{arm}-s{seed}")
        cfg["task"] = "multi-task"
        cfg["data"] = {"max_length": 48}
        cfg["tasks"] = {
            t: {
                "data": task_data(tables, size, t),
                **({"auxiliary": True, "weight": 0.5} if arm == "aux" and t != "section" else {}),
            }
            for t in tasks
        }
        cfg["multitask"] = {"sampling": "round-robin"}
        path = train(cfg, work)
        for t in tasks:
            out[arm][t] = figures(path, t)
            out["paired"][arm][t] = paired(singles[t], path, t)
        out[arm]["mix"] = json.loads((path / "metrics.json").read_text())["mix"]
        out[arm]["train_seconds"] = json.loads((path / "run.json").read_text())["timings"]["train_seconds"]
    out["single"]["train_seconds"] = sum(
        json.loads((p / "run.json").read_text())["timings"]["train_seconds"] for p in singles.values()
    )
    return out


def machine() -> dict:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in cpu.splitlines() if line.startswith("Flags")), "")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "python": platform.python_version(),
    }


def render(results: dict) -> str:
    mc, seeds = results["machine"], results["seeds"]
    lines = [
        "# Multi-task: did the extra tasks help? (issue #17)",
        "",
        f"Machine: {mc['cpu']}, {mc['cores']} cores, {'AVX512-BF16' if mc['avx512_bf16'] else 'no AVX512-BF16'}. "
        f"{len(seeds)} seed(s); sizes: " + ", ".join(f"{k} {v}" for k, v in results["sizes"].items()) + ".",
        "",
        "    " + results["command"],
        "",
        "Test macro-F1 per task, mean ± std over seeds. Delta: the multi-task run minus the task's single-task run on the",
        "same test rows, per seed (paired bootstrap 95% CI, permutation p). Each multi-task run trains each task on as",
        "many examples as its single-task run, so it takes twice the optimizer steps.",
        "",
        "| task | single | multi (all primary) | delta multi | primary + auxiliary | delta aux |",
        "|---|---|---|---|---|---|",
    ]
    for t in TASKS:
        cells = [t + (" (primary, 300 train rows)" if t == "section" else " (3,000 train rows)")]
        for arm in ("single", "multi", "aux"):
            values = [s[arm][t]["macro_f1"] for s in seeds]
            cells.append(f"{np.mean(values):.4f}" + (f" ± {np.std(values):.4f}" if len(values) > 1 else ""))
            if arm != "single":
                ds = [s["paired"][arm][t] for s in seeds]
                cells.append(
                    "; ".join(f"{d['delta']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p']:.3f}" for d in ds)
                )
        lines.append("| " + " | ".join(cells) + " |")
    secs = {arm: np.mean([s[arm]["train_seconds"] for s in seeds]) for arm in ("single", "multi", "aux")}
    lines += [
        "",
        f"Training seconds per seed (noisy: other work shared the cores at times): the single-task runs "
        f"{secs['single']:.0f} s together, multi {secs['multi']:.0f} s, primary + auxiliary {secs['aux']:.0f} s.",
        "",
        results["verdict"],
        "",
    ]
    return "\n".join(lines)


def verdict(seeds: list[dict]) -> str:
    out = []
    for arm, name in (("multi", "Multi-task (all primary)"), ("aux", "Primary + auxiliary")):
        for t in TASKS:
            ds = [s["paired"][arm][t] for s in seeds]
            better = sum(d["low"] > 0 for d in ds)
            worse = sum(d["high"] < 0 for d in ds)
            mean = np.mean([d["delta"] for d in ds])
            out.append(
                f"- {name}, {t}: mean delta {mean:+.4f} macro-F1; the 95% CI of the delta is above 0 in {better} of "
                f"{len(ds)} seed(s), below 0 in {worse}."
            )
    return "What it shows:\n\n" + "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/tunesmith-multitask")
    args = ap.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    tables = debian_tables(work, size)
    seeds = []
    for seed in range(1 if args.quick else args.seeds):
        print(f"seed {seed}", file=sys.stderr)
        random.seed(seed)
        seeds.append(run_seed(seed, tables, size, work))
    results = {
        "machine": machine(),
        "command": "python benchmarks/multitask.py" + (" --quick" if args.quick else f" --seeds {args.seeds}"),
        "sizes": {k: v for k, v in size.items()},
        "seeds": seeds,
        "verdict": verdict(seeds),
    }
    text = render(results)
    stem = "multitask-quick" if args.quick else "multitask"
    out = ROOT / "benchmarks" / "results"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(json.dumps({k: results[k] for k in ("machine", "verdict")}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
