"""What a study leaves for people: trials.csv, best.yaml (a runnable config), study.md and study.html with plots.

The top-trials table shows validation figures (with their bootstrap intervals): the trials held the test split
out. The only test figures are the final runs': the starting and the best config, each retrained once and tested
once, compared item by item (`tunesmith compare`'s paired bootstrap and McNemar test) where the task supports it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import yaml

from ..config.loader import load_config
from ..evaluate.compare_html import write_comparison
from ..evaluate.pages import html_page, markdown_page
from ..runs.record import read_info, read_metrics
from ..tasks.registry import get_task_class
from ..utils import atomic_write_figure, atomic_write_json, atomic_write_text, read_json
from .compare import compare_runs
from .tune_space import best_config
from .tune_trial import STUDY_FILE, best_trial, counted, open_study, trial_metrics

PLOTS = {
    "history.png": "Optimisation history: each trial's validation metric and the best so far",
    "importances.png": "Parameter importances (fANOVA over the completed trials)",
    "parallel.png": "Parallel coordinates: the values of each trial, coloured by its validation metric",
    "slice.png": "Slice plots: the validation metric against each parameter",
    "pareto.png": "Pareto front: validation metric against the second objective",
}
TOP = 10


def write_report(root: Path, final: dict | None = None) -> dict:
    """Write the study's files; return the summary (also in tune.json's `summary`)."""
    import optuna

    meta = read_json(root / STUDY_FILE)
    cfg = load_config(root / "config.yaml")
    study = open_study(meta, cfg)
    trials = study.get_trials(deepcopy=False)
    metric, maximize = meta["metric"], meta["directions"][0] == "maximize"
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    frame = trials_frame(trials, meta)
    atomic_write_text(root / "trials.csv", frame.to_csv(index=False))
    summary = {
        "study": meta["study"],
        "path": str(root),
        "metric": metric,
        "trials": {"target": meta["trials"], "counted": counted(trials), **frame["state"].value_counts().to_dict()},
    }
    ranked = sorted(complete, key=lambda t: t.values[0], reverse=maximize)
    if ranked:
        best = best_trial(study, meta)
        d = best_config(cfg, best.params)
        d.pop("tune", None)
        d["name"] = f"{cfg.name}-best"
        head = (
            f"# Best config of study {meta['study']}: trial {best.number}, validation {metric} {best.values[0]:.4f}\n"
            f"# (scored on validation only; the test split was not evaluated by the search). Run it:\n"
            f"#   tunesmith train {root / 'best.yaml'}\n"
        )
        atomic_write_text(root / "best.yaml", head + yaml.safe_dump(d, sort_keys=False))
        summary["best"] = {"trial": best.number, "validation": best.values[0], "params": best.params}
    final = final if final is not None else meta.get("final") or {}
    gain = _final_gain(root, cfg, final, metric) if final.get("runs") else {}
    summary["final"] = gain
    summary["tracked"] = _tracked(summary, gain, metric)
    pngs = plots(study, root, len(meta["directions"]), metric)
    sections = _sections(meta, frame, ranked, gain, metric, len(meta["directions"]))
    title = f"Study {meta['study']}: {metric} over {len(trials)} trials"
    intro = (
        "Trials were trained and scored with the test split held out (their figures below are validation figures). "
        + (
            "The test split was evaluated ONCE per final run: the starting and the best config, each retrained once."
            if gain
            else "The test split was not evaluated."
        )
    )
    atomic_write_text(root / "study.md", markdown_page(title, intro, sections, list(pngs), PLOTS))
    atomic_write_text(root / "study.html", html_page(title, intro, sections, pngs, PLOTS, emphasis=("Gain on test",)))
    atomic_write_json(root / STUDY_FILE, {**read_json(root / STUDY_FILE), "summary": summary})
    return summary


def trials_frame(trials, meta: dict) -> pd.DataFrame:
    rows = []
    for t in trials:
        m = trial_metrics(t)
        ci = (m.get("test_ci") or {}).get(meta["metric"]) or {}
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                meta["metric"]: t.values[0] if t.values else None,
                **(
                    {meta["second_objective"]: t.values[1] if t.values else None} if len(meta["directions"]) > 1 else {}
                ),
                "ci_low": ci.get("low"),
                "ci_high": ci.get("high"),
                "validations": len(t.intermediate_values),
                "pruned_at": max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else None,
                "train_seconds": t.user_attrs.get("train_seconds"),
                "peak_memory_mb": round(t.user_attrs["peak_memory_mb"], 1)
                if "peak_memory_mb" in t.user_attrs
                else None,
                "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                **{f"param:{k}": t.params.get(k) for k in meta["space"]},  # every key, empty where inactive
                "start": bool(t.user_attrs.get("start")),
                "retry_of": t.user_attrs.get("retry_of"),
                "error": t.user_attrs.get("error"),
                "run": t.user_attrs.get("run"),
            }
        )
    return pd.DataFrame(rows)


def _final_gain(root: Path, cfg, final: dict, metric: str) -> dict:
    runs = final["runs"]
    out = {"best_trial": final.get("best_trial"), "best_is_start": final.get("best_is_start", False), "runs": {}}
    for which, path in runs.items():
        m = read_metrics(path)
        ci = (m.get("test_ci") or {}).get(metric) or {}
        out["runs"][which] = {
            "path": path,
            "test": (m.get("test") or {}).get(metric),
            "ci": [ci.get("low"), ci.get("high")] if ci else None,
            "train_seconds": read_info(path).get("timings", {}).get("train_seconds"),
        }
    if "best" in runs and get_task_class(cfg.task).supports_compare:
        compared = compare_runs([runs["start"], runs["best"]], metric if metric != "loss" else "macro_f1")
        write_comparison(compared, root / "final" / "compare")
        c = compared["comparisons"][0]
        out["comparison"] = {
            "metric": compared["metric"],
            "verdict": c["verdict"],
            **{k: c["metrics"][compared["metric"]].get(k) for k in ("delta", "p")},
            "ci": [c["metrics"][compared["metric"]].get(k) for k in ("low", "high")],
            "report": str(root / "final" / "compare" / "compare.md"),
        }
    return out


def _tracked(summary: dict, gain: dict, metric: str) -> dict[str, float]:
    out = {"tune_trials_counted": float(summary["trials"]["counted"])}
    if "best" in summary:
        out[f"tune_best_validation_{metric}"] = float(summary["best"]["validation"])
    for which, r in gain.get("runs", {}).items():
        if r["test"] is not None:
            out[f"tune_{which}_test_{metric}"] = float(r["test"])
    return out


def _sections(meta: dict, frame: pd.DataFrame, ranked, gain: dict, metric: str, objectives: int) -> list[dict]:
    counts = frame["state"].value_counts().to_dict()
    out = [
        {
            "title": "Trials",
            "text": [
                f"{counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed "
                f"(of which interrupted and retried: {int(frame['retry_of'].notna().sum())}); target {meta['trials']}. "
                f"Direction: {meta['directions'][0]} validation {metric}"
                + (f", then minimise {meta['second_objective']} (a Pareto front)" if objectives > 1 else "")
                + "."
            ],
        }
    ]
    if gain.get("runs"):
        rows = [
            [which, _f(r["test"]), _ci(r["ci"]), r["train_seconds"], f"`{r['path']}`"]
            for which, r in gain["runs"].items()
        ]
        text = []
        if gain.get("best_is_start"):
            text.append("The best trial is the starting config: the search found nothing better.")
        if "comparison" in gain:
            c = gain["comparison"]
            text.append(f"Best vs start on the same test items: {c['verdict']} (details: {c['report']})")
        out.append(
            {
                "title": "Gain on test",
                "text": text,
                "table": (["config", f"test {metric}", "95% CI", "train s", "run"], rows),
            }
        )
    params = [c for c in frame.columns if c.startswith("param:")]
    top = frame[frame["state"] == "complete"].head(0)
    if ranked:
        order = [t.number for t in ranked[:TOP]]
        top = frame.set_index("trial").loc[order].reset_index()
    rows = [
        [r["trial"], _f(r[metric]), _ci([r["ci_low"], r["ci_high"]]), r["train_seconds"]]
        + [_v(r[p]) for p in params]
        + ["start" if r["start"] else ""]
        for _, r in top.iterrows()
    ]
    head = ["trial", f"validation {metric}", "95% CI", "train s", *(p.removeprefix("param:") for p in params), ""]
    out.append({"title": f"Top {len(rows)} trials (validation)", "table": (head, rows)})
    for name, title in (
        ("pareto.png", "Pareto front"),
        ("history.png", "Optimisation history"),
        ("importances.png", "Parameter importances"),
        ("parallel.png", "Parallel coordinates"),
        ("slice.png", "Slices"),
    ):
        if objectives > 1 or name != "pareto.png":
            out.append({"title": title, "image": name})
    return out


def plots(study, root: Path, objectives: int, metric: str) -> dict[str, bytes]:
    """Optuna's matplotlib plots of the study, each written beside study.md; {name: PNG bytes} of those drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return {}
    # One objective: Optuna's own target (the history plot then draws the best value so far); two: the metric.
    first = {"target_name": f"validation {metric}"}
    if objectives > 1:
        first["target"] = lambda t: t.values[0]
    draw = {
        "history.png": lambda: ovm.plot_optimization_history(study, **first),
        "parallel.png": lambda: ovm.plot_parallel_coordinate(study, **first),
        "slice.png": lambda: ovm.plot_slice(study, **first),
    }
    if len(complete) >= 3 and len({k for t in complete for k in t.params}) > 1:
        draw["importances.png"] = lambda: ovm.plot_param_importances(study, **first)
    if objectives > 1:
        draw["pareto.png"] = lambda: ovm.plot_pareto_front(study)
    out = {}
    for name, fn in draw.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = fn()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. too few trials for a plot
            warnings.warn(f"tune: {name} not drawn: {err}", stacklevel=2)
            continue
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        atomic_write_figure(fig, root / name, dpi=90)
        plt.close(fig)
        out[name] = (root / name).read_bytes()
    return out


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.4f}"


def _ci(ci) -> str:
    return "-" if not ci or ci[0] is None or ci[0] != ci[0] else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _v(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)
