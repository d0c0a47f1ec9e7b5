"""`tunesmith compare-tasks RUN`: did multi-task help? Each task of a multi-task run trained alone, then compared.

For each task (default: the primary ones) the run's config becomes a single-task config: the same model,
strategy, optimiser settings and seed, the task's own `data:` (so the same split and the same test rows), and by
default the same number of training examples the task got in the multi-task run (`budget="matched"`; `"config"`:
the run's own epochs/max_steps). Each is trained into RUN/alone/ and compared with the multi-task run's head on the
task's test rows (`compare_runs`: paired bootstrap CI of the delta, permutation p-value, McNemar). Finished
single-task runs are reused, so an interrupted command picks up where it stopped.

    RUN/alone/<name>-<task>-alone-<time>/   the single-task runs
    RUN/alone/compare-<task>/               compare.md / .html / .json per task
    RUN/alone/summary.md, summary.json      one table: alone vs multi-task per task, the delta and its p
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config.dump import config_to_dict
from ..errors import RunError
from ..runs.run import Run
from ..utils import atomic_write_json, atomic_write_text, read_json
from .compare import compare_runs


def compare_tasks(
    run: str | Path, tasks: list[str] | None = None, budget: str = "matched", resamples: int = 2000, say=print
) -> dict:
    from ..engine.pipeline import finetune
    from ..evaluate.compare_html import write_comparison

    run = Run(run)
    if not run.task.composite:
        raise RunError(f"{run.path}: compare-tasks takes a multi-task run; this one is {run.task.name}")
    if run.status != "complete":
        raise RunError(f"{run.path}: the run is {run.status}; compare-tasks needs a complete multi-task run")
    if budget not in ("matched", "config"):
        raise RunError(f"compare-tasks: --budget {budget}: give matched or config")
    cfg, metrics = run.config, run.metrics
    names = list(cfg.tasks)
    chosen = tasks or [n for n in names if not cfg.tasks[n].auxiliary]
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise RunError(f"{run.path}: no task {unknown[0]!r} in this run; its tasks: {', '.join(names)}")
    folder = run.path / "alone"
    record_file = folder / "runs.json"
    done = read_json(record_file) if record_file.is_file() else {}
    rows = []
    for task in chosen:
        single = done.get(task)
        if not single or Run(single).status != "complete":
            say(f"compare-tasks: training {task} alone ({budget} budget)")
            alone = single_config(cfg, metrics, task, budget, folder, int(run.info.get("processes") or 1))
            if run.info.get("mlflow_uri") and alone["tracking"]["backend"] == "mlflow":
                alone["tracking"]["uri"] = run.info["mlflow_uri"]  # tracked beside the multi-task run
            single = str(finetune(alone).path)
            done[task] = single
            atomic_write_json(record_file, done)
        result = compare_runs([single, run.path], task=task, resamples=resamples, seed=cfg.seed)
        write_comparison(result, folder / f"compare-{task}")
        rows.append(_row(task, cfg.tasks[task].auxiliary, result))
    summary = {"run": str(run.path), "budget": budget, "tasks": rows}
    atomic_write_json(folder / "summary.json", summary)
    text = summary_markdown(summary)
    atomic_write_text(folder / "summary.md", text)
    for line in text.splitlines()[4:]:
        say(line)
    say(f"wrote {folder / 'summary.md'}")
    return summary


def single_config(cfg, metrics: dict, task: str, budget: str, folder: Path, processes: int = 1) -> dict:
    """The run's config as task `task` alone (see the module docstring), trained in one process with the run's
    global batch."""
    out = config_to_dict(cfg)
    spec = out["tasks"][task]
    out.update(
        task=spec["task"],
        name=f"{cfg.name}-{task}-alone",
        output_dir=str(folder),
        data=spec["data"],
        tasks={},
    )
    out.pop("multitask", None)
    t = out["train"]
    t["batch_size"] *= processes
    if budget == "matched":  # as many examples as the task was trained on inside the multi-task run
        mix = metrics["mix"][task]
        t["max_steps"] = max(1, math.ceil(mix["examples"] / (t["batch_size"] * t["grad_accum"])))
        if t.get("eval_every"):
            t["eval_every"] = max(1, round(t["eval_every"] * mix["share"]))
    return out


def _row(task: str, auxiliary: bool, result: dict) -> dict:
    alone, multi = result["runs"]
    c = result["comparisons"][0]
    d = c["metrics"][result["metric"]]
    return {
        "task": task,
        "auxiliary": auxiliary,
        "metric": result["metric"],
        "alone": {"value": alone["metrics"][result["metric"]], "ci": (alone.get("ci") or {}).get(result["metric"])},
        "multi": {"value": multi["metrics"][result["metric"]], "ci": (multi.get("ci") or {}).get(result["metric"])},
        "delta": d.get("delta"),
        "delta_ci": [d.get("low"), d.get("high")],
        "p": d.get("p"),
        "verdict": c["verdict"],
        "alone_run": alone["path"],
    }


def summary_markdown(summary: dict) -> str:
    def ci(x: dict) -> str:
        c = x.get("ci") or {}
        return f"{x['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}]" if "low" in c else f"{x['value']:.4f}"

    lines = [
        "# Did multi-task help?",
        "",
        f"`{summary['run']}` against each task trained alone ({summary['budget']} budget), on the same test rows.",
        "",
        "| task | alone | multi-task | delta [95% CI] | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["tasks"]:
        low, high = r["delta_ci"]
        interval = f" [{low:+.4f}, {high:+.4f}]" if low is not None else ""
        p = f"{r['p']:.3f}" if r.get("p") is not None else "-"
        role = " (auxiliary)" if r["auxiliary"] else ""
        lines.append(
            f"| [{r['task']}](compare-{r['task']}/compare.md){role} | {ci(r['alone'])} | {ci(r['multi'])} | "
            f"{r['delta']:+.4f}{interval} | {p} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"
