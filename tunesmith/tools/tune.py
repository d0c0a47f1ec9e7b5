"""`tunesmith tune config.yaml --trials 24 --workers 2`: hyperparameter search on Optuna, the test split held out.

The study folder (output_dir/<study>/):

    tune.json      what the study is: storage URL, study name, metric and directions, trials, the final runs
    config.yaml    the starting config (with its tune: section)
    study.db       Optuna's SQLite storage (unless --storage names another database)
    trials/NNNN/   each trial's run folder: a normal run, trained and scored with the test split held out
    final/         the starting config and the best config, each retrained once and tested ONCE on the test split
    trials.csv, best.yaml, study.md, study.html and their plots          (tools/tune_report.py)

Everything the user can get wrong (the space, the metric, the data, the model) fails in one line before any trial
runs. Trials run in this process (`--workers 1`) or in K spawned worker processes sharing the study's storage
(tools/tune_trial.py); `--storage URL --study NAME` on several machines joins one study.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

from ..config.dump import config_to_dict, save_config
from ..config.loader import load_config
from ..config.tune import freeze
from ..engine.pipeline import finetune
from ..errors import ConfigError, Interrupted, RunError
from ..models.loading import resolve_model
from ..runs.record import liveness
from ..tasks.registry import build_task, get_task_class
from ..tracking.mlflow_tracker import default_uri
from ..tracking.parent_run import ParentRun
from ..utils import atomic_write_json, read_json
from .tune_report import write_report
from .tune_space import best_config, check_space, choice_label, search_space
from .tune_trial import STUDY_FILE, Worker, best_trial, counted, grid_space, open_study, work


def tune(
    config=None,
    overrides: list[str] | None = None,
    *,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    study: str | None = None,
    resume: str | Path | None = None,
    say=print,
) -> dict:
    """Run (or `resume`) a study; returns the report's summary (tools/tune_report.py: `summarize`)."""
    if workers < 1:
        raise ConfigError(f"tune: --workers must be at least 1 (got {workers})")
    root = (
        _resume(resume, config, overrides, trials, storage)
        if resume
        else create_study(config, overrides, trials, storage, study)
    )
    meta = read_json(root / STUDY_FILE)
    cfg = load_config(root / "config.yaml")
    _enqueue_start(root)
    say(f"[tune] study {meta['study']} in {root} ({meta['storage']}): {meta['trials']} trials, {workers} worker(s)")
    try:
        _run_workers(root, workers, say)
    except Interrupted as e:
        e.study = root  # the CLI names the folder to resume
        raise
    final = _final(root, meta, cfg, say) if cfg.tune.final == "retrain" else {}
    parent = ParentRun(cfg, root.name, {}, run_id=meta.get("mlflow_parent"))
    for path in final.get("runs", {}).values():
        parent.adopt(read_json(Path(path) / "run.json").get("mlflow_run_id"))
    summary = write_report(root, final)
    parent.finish(summary.get("tracked", {}), [root / n for n in ("study.md", "study.html", "trials.csv", "best.yaml")])
    return summary


def create_study(config, overrides=None, trials=None, storage_url=None, study=None) -> Path:
    """Check everything, then write the study folder and create the (empty) study; returns the folder."""
    cfg = load_config(config, overrides)
    if trials is not None:
        cfg.tune.trials = trials
        cfg.tune.check()
    params = search_space(cfg)
    check_space(cfg, params)
    grid_check(cfg, params)
    _preflight(cfg)
    name = study or f"{cfg.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(cfg.output_dir) / name
    if (root / STUDY_FILE).is_file():
        raise RunError(f"{root}: a study of that name exists here; continue it with: tunesmith tune --resume {root}")
    (root / "trials").mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    task = get_task_class(cfg.task)
    meta = {
        "study": name,
        "storage": storage_url or f"sqlite:///{(root / 'study.db').resolve()}",
        "shared": storage_url is not None,
        "trials": cfg.tune.trials,
        "metric": cfg.train.metric,
        "second_objective": cfg.tune.second_objective,
        "directions": ["minimize" if cfg.train.metric in task.minimize else "maximize"]
        + ([] if cfg.tune.second_objective == "none" else ["minimize"]),
        "space": [p.key for p in params],
        "tracking_uri": (cfg.tracking.uri or default_uri(cfg.output_dir)) if cfg.tracking.backend == "mlflow" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    parent = ParentRun(cfg, name, {"tune": True, "tune.trials": cfg.tune.trials, "tune.metric": cfg.train.metric})
    meta["mlflow_parent"] = parent.run_id
    atomic_write_json(root / STUDY_FILE, meta)
    open_study(meta, cfg)  # created now, so that workers only load it
    return root


def _resume(resume, config, overrides, trials, storage_url) -> Path:
    root = Path(resume)
    if not (root / STUDY_FILE).is_file():
        raise RunError(f"{root}: not a study folder (no {STUDY_FILE}); start one with: tunesmith tune config.yaml")
    if config or overrides or storage_url:
        raise ConfigError(
            "tune --resume continues a study with its saved config and storage; drop the config/overrides/--storage "
            "(--trials N raises the trial count)"
        )
    if trials is not None:
        meta = read_json(root / STUDY_FILE)
        atomic_write_json(root / STUDY_FILE, {**meta, "trials": trials})
    return root


def grid_check(cfg, params) -> None:
    """A grid needs a step for every float; a study of a grid has at most as many trials as the grid has points."""
    if cfg.tune.sampler == "grid":
        points = math.prod(len(v) for v in grid_space(params).values())
        cfg.tune.trials = min(cfg.tune.trials, points)


def _preflight(cfg) -> None:
    """The data and the model load (or fail in one line) before any trial."""
    resolve_model(cfg.model.name)
    build_task(cfg).load_data()


def _enqueue_start(root: Path) -> None:
    """The starting config is trial 0 (its values where they lie inside the space), so the search starts from it."""
    w = Worker(root)
    with w.lock:
        if w.study.get_trials(deepcopy=False):
            return
        start, exact = {}, True
        for p in w.params:
            if not p.active({**w.base, **start}):
                continue
            value = w.base.get(p.key)
            inside = (
                freeze(value) in p.choices
                if p.kind == "categorical"
                else isinstance(value, (int, float)) and p.low <= value <= p.high
            )
            if inside:
                start[p.key] = choice_label(freeze(value))
            exact &= inside
        if w.cfg.tune.sampler == "grid":
            grid = grid_space(w.params)
            if not (len(start) == len(w.params) and all(v in grid[k] for k, v in start.items())):
                return  # a grid takes a queued trial only as one of its points, with every key set
        # Exact: trial 0 IS the starting config (the report marks it); otherwise its values inside the space seed it.
        w.study.enqueue_trial(start, user_attrs={"start": exact})


def _run_workers(root: Path, workers: int, say) -> None:
    """One worker here, or K spawned processes with cores/K threads each; Ctrl-C stops them all cleanly (exit 130)."""
    if workers == 1:
        try:
            Worker(root).run(say)
        except (Interrupted, KeyboardInterrupt):
            raise Interrupted(0) from None
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    say(f"[tune] {workers} workers, {threads} thread(s) each; their trials' output: {root / 'workers'}/worker-K.log")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=work, args=(str(root), k, threads), name=f"tune-worker-{k}") for k in range(workers)]
    for p in procs:
        p.start()
    stopping = []

    def forward(signum, frame):
        if not stopping:  # once: a second signal in a worker stops it without a checkpoint
            stopping.append(signum)
            say(f"\n[tune] stopping {workers} workers (each checkpoints its trial)...")
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.exitcode for p in procs]
    if stopping or 130 in codes:
        raise Interrupted(0)
    if any(codes):
        raise RunError(
            f"tune: worker(s) exited with {codes}; see the messages above; continue with: tunesmith tune --resume {root}"
        )


def _final(root: Path, meta: dict, cfg, say) -> dict:
    """The starting and the best config, each trained once more and tested ONCE (the first test of the study)."""
    import optuna

    study = open_study(meta, cfg)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        say("[tune] no trial completed: nothing to retrain")
        return {}
    best = best_trial(study, meta)
    start = next((t for t in study.trials if t.user_attrs.get("start")), None)
    runs = {}
    say(f"\n[tune] final: the starting config and trial {best.number}'s, each trained once and tested once")
    configs = {"start": config_to_dict(cfg), "best": best_config(cfg, best.params)}
    if start is not None and start.params == best.params:
        configs.pop("best")  # the search did not beat where it started
    for which, d in configs.items():
        d.pop("tune", None)
        d.update(name=f"{cfg.name}-{which}", output_dir=str(root / "final" / which))
        d["tracking"] = {**d.get("tracking", {}), "uri": meta.get("tracking_uri")}  # the study's MLflow store
        runs[which] = str(_train_once(root / "final" / which, d))
    final = {"runs": runs, "best_trial": best.number, "best_is_start": "best" not in configs}
    atomic_write_json(root / STUDY_FILE, {**read_json(root / STUDY_FILE), "final": final})
    return final


def _train_once(folder: Path, d: dict) -> Path:
    """A final run: reused when complete, resumed when interrupted (tested once either way)."""
    done = sorted(folder.glob("*/run.json")) if folder.is_dir() else []
    if done:
        path = done[-1].parent
        status = liveness(path).status
        if status == "complete":
            return path
        if status in ("interrupted", "died") and (path / "checkpoints" / "last").is_dir():
            return finetune(resume=path).path
    return finetune(d).path


def study_progress(root: Path) -> dict:
    """{state: count} and how many count towards the target (`tunesmith tune --status STUDY_DIR`)."""
    if not (root / STUDY_FILE).is_file():
        raise RunError(f"{root}: not a study folder (no {STUDY_FILE})")
    meta = read_json(root / STUDY_FILE)
    study = open_study(meta, load_config(root / "config.yaml"))
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {"target": meta["trials"], "counted": counted(trials), "states": states}
