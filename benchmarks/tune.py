"""What `tunesmith tune` gains and costs (issue #16), on the quickstart's MiniLM + LoRA.

    .venv/bin/python benchmarks/tune.py              # both parts (~35 min on 2 AMD EPYC AVX2 cores, measured)
    .venv/bin/python benchmarks/tune.py --part search
    .venv/bin/python benchmarks/tune.py --part workers
    .venv/bin/python benchmarks/tune.py --quick      # tiny sizes: a smoke test of both parts

Part `search`: `tunesmith tune configs/quickstart/sentiment-lora.yaml` on a subsample of its tweets (the overrides
below), with the default LoRA space (learning rate, warmup, weight decay, epochs, r, alpha, dropout, targets), TPE and
the median pruner. Reported: trials complete / pruned, the training time the pruner saved (the pruned trials' share
of a full trial's steps), the best trial's validation figure against the starting config's, and the figure that
matters: the starting and the best config each retrained once and tested once, with the paired comparison
(bootstrap CI of the difference and the permutation p-value on the same test rows).

Part `workers`: one small fixed study (random sampler, no pruning, learning rate only, no final runs) run with
`--workers 1` (one process, all cores) and `--workers 2` (two processes, cores / 2 threads each), from scratch each;
wall time and trials per minute.

Prints progress to stderr, then the JSON summary and the Markdown tables; writes benchmarks/results/tune.{json,md}
and the search's optimisation history as benchmarks/results/tune-history.png (tune-quick.* with --quick). Study
folders go to --work (default /tmp/tunesmith-tune-bench); an earlier search study there is resumed (its finished
trials and final runs are reused; `--fresh` starts again), the workers studies always start from scratch.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "quickstart" / "sentiment-lora.yaml"
OFF = ["eval.robustness=false", "eval.efficiency=false", "eval.baseline=false", "tracking.backend=none"]
SIZES = {  # quick: a smoke test of every path; full: the measured figures
    "full": {"samples": 2500, "length": 64, "trials": 16, "eval_every": 20, "workers_trials": 6},
    "quick": {"samples": 300, "length": 32, "trials": 4, "eval_every": 4, "workers_trials": 2},
}


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                kind = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags else "AVX2"
                return f"{line.split(':', 1)[1].strip()} ({kind})"
    except OSError:
        pass
    return platform.processor() or "unknown"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def overrides(size: dict, work: Path) -> list[str]:
    return [
        f"data.max_samples={size['samples']}",
        f"data.max_length={size['length']}",
        "train.epochs=1",
        f"train.eval_every={size['eval_every']}",
        f"output_dir={work}",
        *OFF,
    ]


def part_search(size: dict, work: Path) -> dict:
    from tunesmith.tools.tune import tune

    root = work / "search"
    t0, resumed = time.perf_counter(), (root / "tune.json").is_file()
    if resumed:  # an earlier invocation's study: resumed (finished trials and runs are reused)
        say(f"[bench] resuming the study in {root}")
        s = tune(resume=root, say=say)
    else:
        s = tune(
            str(CONFIG),
            [*overrides(size, work), "tune.startup_trials=4"],
            trials=size["trials"],
            study="search",
            say=say,
        )
    wall = time.perf_counter() - t0
    df = pd.read_csv(Path(s["path"]) / "trials.csv")
    # How much training the pruner saved: steps the pruned trials ran / steps they would have run (their epochs x
    # the steps per epoch of a trial that ran to its end).
    per_epoch, ran, planned = None, 0, 0
    for _, row in df.iterrows():
        run = Path(row["run"]) if isinstance(row["run"], str) else None
        if row["state"] == "complete" and run and not per_epoch:
            m = json.loads((run / "metrics.json").read_text())
            if not m.get("stopped_early"):
                per_epoch = m["steps"] / row["param:train.epochs"]
    for _, row in df[df["state"] == "pruned"].iterrows():
        ran += json.loads((Path(row["run"]) / "run.json").read_text())["pruned"]["step"]
        planned += row["param:train.epochs"] * (per_epoch or 0)
    final = s["final"]
    out = {
        "trials": {k: v for k, v in s["trials"].items()},
        "wall_s": None if resumed else round(wall, 1),  # the whole command: trials + final runs + report
        "trials_s": round(float(df["duration_s"].sum()), 1),  # the trials one after another (1 worker)
        "trial_train_seconds_median": float(df["train_seconds"].median()),
        "pruned_steps_share": round(ran / planned, 3) if planned else None,
        # Each final run's own validation figure (the starting config need not be a trial of the space).
        "validation": {
            which: json.loads((Path(r["path"]) / "metrics.json").read_text())["validation_best"].get(s["metric"])
            for which, r in final.get("runs", {}).items()
        },
        "best": s.get("best"),
        "final": {
            which: {"test": r["test"], "ci": r["ci"], "train_seconds": r["train_seconds"]}
            for which, r in final.get("runs", {}).items()
        },
        "comparison": {k: v for k, v in final.get("comparison", {}).items() if k != "report"},
        "best_is_start": final.get("best_is_start"),
        "metric": s["metric"],
    }
    history = Path(s["path"]) / "history.png"
    out["_history"] = str(history) if history.is_file() else None
    return out


def part_workers(size: dict, work: Path) -> dict:
    from tunesmith.tools.tune import tune

    out = {}
    for k in (1, 2):
        shutil.rmtree(work / f"workers-{k}", ignore_errors=True)  # timed from scratch
        t0 = time.perf_counter()
        s = tune(
            str(CONFIG),
            [
                *overrides(size, work),
                "tune.sampler=random",
                "tune.pruner=none",
                "tune.final=none",
                "tune.keep_models=all",
                "tune.space={train.lr: {float: [1.0e-4, 3.0e-3], log: true}}",
            ],
            trials=size["workers_trials"],
            workers=k,
            study=f"workers-{k}",
            say=say,
        )
        wall = time.perf_counter() - t0
        counts = s["trials"]
        out[str(k)] = {
            "wall_s": round(wall, 1),
            "trials": counts.get("complete", 0),
            "trials_per_min": round(60 * counts.get("complete", 0) / wall, 2),
        }
    out["speedup_2_vs_1"] = round(out["1"]["wall_s"] / out["2"]["wall_s"], 2)
    return out


def markdown(r: dict) -> str:
    lines = [f"# tunesmith tune: measured on {r['machine']}", "", f"Command: `{r['command']}`", ""]
    s = r.get("search")
    if s:
        m = s["metric"]
        t = s["trials"]
        lines += [
            f"## Search: {t.get('counted')} trials of MiniLM + LoRA ({r['sizes']['samples']} tweets, "
            f"max_length {r['sizes']['length']}), TPE + median pruner, default LoRA space",
            "",
            f"{t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, {t.get('fail', 0)} failed; the trials took "
            f"{s['trials_s'] / 60:.1f} min (median trial training {s['trial_train_seconds_median']:.0f} s)"
            + (f", the whole command {s['wall_s'] / 60:.1f} min" if s["wall_s"] else "")
            + (
                f"; the pruned trials ran {100 * s['pruned_steps_share']:.0f}% of the steps they would have run"
                if s["pruned_steps_share"] is not None
                else ""
            )
            + ".",
            "",
            f"| config | validation {m} (search) | test {m} (once) | 95% CI | train s |",
            "|---|---|---|---|---|",
        ]
        for which in ("start", "best"):
            f, val = s["final"].get(which), s["validation"].get(which)
            if f is None:
                continue
            ci = f"[{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]" if f.get("ci") else ""
            shown = f"{val:.4f}" if val is not None else ""
            lines.append(f"| {which} | {shown} | {f['test']:.4f} | {ci} | {f['train_seconds']:.0f} |")
        c = s.get("comparison")
        if c:
            ci = c.get("ci")
            ci = f"95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci and None not in ci else "no CI"
            p = f"p = {c['p']:.3g}" if c.get("p") is not None else "no p-value"
            delta = f"{c['delta']:+.4f}" if c.get("delta") is not None else "n/a"
            lines += ["", f"Best - start on test {c['metric']}: {delta} ({ci}, {p}): {c['verdict']}"]
        elif s.get("best_is_start"):
            lines += ["", "The best trial was the starting config: nothing to compare."]
        if s.get("best"):
            params = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["best"]["params"].items()
            )
            lines += ["", f"Best trial {s['best']['trial']}: {params}"]
    w = r.get("workers")
    if w:
        lines += [
            "",
            f"## Workers: {w['1']['trials']} fixed trials (random sampler, no pruning), from scratch each",
            "",
            "| workers | wall s | trials / min |",
            "|---|---|---|",
            *(f"| {k} | {w[k]['wall_s']:.0f} | {w[k]['trials_per_min']:.2f} |" for k in ("1", "2")),
            "",
            f"2 workers vs 1: {w['speedup_2_vs_1']:.2f}x the throughput (same machine, same run of this script).",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["search", "workers", "all"], default="all")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/tunesmith-tune-bench")
    ap.add_argument("--fresh", action="store_true", help="start the search study again (default: resume it if there)")
    a = ap.parse_args()
    size = SIZES["quick" if a.quick else "full"]
    work = Path(a.work) / ("quick" if a.quick else "full")
    if a.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    r = {
        "machine": f"{cpu()}, {__import__('os').cpu_count()} cores",
        "command": "python benchmarks/tune.py" + (" --quick" if a.quick else "") + f" --part {a.part}",
        "sizes": size,
    }
    if a.part in ("search", "all"):
        r["search"] = part_search(size, work)
    if a.part in ("workers", "all"):
        r["workers"] = part_workers(size, work)
    history = r.get("search", {}).pop("_history", None)
    stem = "tune-quick" if a.quick else "tune"
    out = ROOT / "benchmarks" / "results"
    if history:
        shutil.copyfile(history, out / f"{stem}-history.png")
    (out / f"{stem}.json").write_text(json.dumps(r, indent=2) + "\n")
    md = markdown(r)
    (out / f"{stem}.md").write_text(md)
    print(json.dumps(r, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
