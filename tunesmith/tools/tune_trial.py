"""One worker of `tunesmith tune`: ask the study for a trial, train it as a normal run scored on validation, tell.

A worker is the main process (`--workers 1`) or one of K spawned processes; several machines sharing one database
URL run workers of the same study. Each trial:

- takes its values from Optuna (`sample`), builds its config (`trial_dict`) with a cheaper evaluation (no baseline,
  robustness, efficiency or label-error audit: they do not change the model) and trains it with
  `finetune(hold_out_test=True)`: the run never evaluates a test row;
- reports each validation to Optuna and stops (errors.Pruned, state PRUNED) when the pruner says so;
- is told its best validation metric (and train seconds or peak memory, for a two-objective study).

A trial interrupted by Ctrl-C, or whose process is gone (killed, machine restarted), is marked failed with
`interrupted` and retried once as a new trial with the same values that resumes its run folder from the last
checkpoint (its earlier validations are reported again, so the pruner sees the whole curve).
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..config.dump import config_to_dict, flatten
from ..config.loader import load_config
from ..config.schema import TASK_KEYS, Config
from ..engine.pipeline import finetune
from ..errors import Interrupted, Pruned, RunError, TunesmithError
from ..runs.record import liveness, read_info, read_metrics, this_process
from ..tasks.registry import get_task_class
from ..tracking.parent_run import ParentRun
from ..utils import read_json
from .tune_space import choice_label, sample, search_space, trial_dict

STUDY_FILE = "tune.json"
CHEAP_EVAL = {
    "eval.baseline": False,
    "eval.robustness": False,
    "eval.efficiency": False,
    "eval.bootstrap_resamples": 300,
    "audit.label_errors": False,
    "generate.before": False,
    "generate.samples": 8,
}
"""What a trial does not need (it changes no weights; the final runs keep the config's own settings)."""
MAX_FAILURES_IN_A_ROW = 3


def counted(trials) -> int:
    """Trials that count towards `tune.trials`: those started, less the interrupted ones (their retry counts instead).
    Queued (WAITING) trials count once a worker takes them."""
    import optuna

    fail, waiting = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING
    return sum(1 for t in trials if t.state != waiting and not (t.state == fail and t.user_attrs.get("interrupted")))


def open_study(meta: dict, cfg: Config, worker: int = 0):
    """The study with this process's sampler and pruner (Optuna stores neither): TPE seeded per worker."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's multivariate/group/constant_liar options are marked experimental; they are what makes TPE fit here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    t = cfg.tune
    # Workers (and machines sharing a database) sample with different seeds, or a random search repeats itself.
    seed = cfg.seed + 1000 * worker + (zlib.crc32(socket.gethostname().encode()) % 997 if meta.get("shared") else 0)
    if t.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif t.sampler == "grid":

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                """Optuna's grid calls study.stop() once every point is taken, which works only inside optimize();
                the workers here ask and tell, and tune.trials (capped at the grid's size) ends the study."""

        sampler = Grid(grid_space(search_space(cfg)), seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=t.startup_trials, multivariate=True, group=True, constant_liar=True, seed=seed
        )
    pruner_name = ("median" if t.second_objective == "none" else "none") if t.pruner == "auto" else t.pruner
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=2),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
        "none": optuna.pruners.NopPruner,
    }[pruner_name]()
    return optuna.create_study(
        storage=storage(meta["storage"]),
        study_name=meta["study"],
        directions=meta["directions"],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def storage(url: str):
    """Optuna's RDB storage; SQLite waits for the lock (several local workers write to one file)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def grid_space(params) -> dict:
    from ..errors import ConfigError

    grid = {}
    for p in params:
        if p.kind == "categorical":
            grid[p.key] = [choice_label(c) for c in p.choices]
        elif p.step is None and p.kind == "float":
            raise ConfigError(f"tune.space.{p.key}: the grid sampler needs a step for a float range (or a categorical)")
        else:
            step = p.step or 1
            n = int(round((p.high - p.low) / step)) + 1
            grid[p.key] = [p.low + i * step for i in range(n)]
    return grid


@dataclass
class Worker:
    root: Path
    worker: int = 0
    threads: int | None = None
    meta: dict = field(init=False)
    cfg: Config = field(init=False)

    def __post_init__(self):
        from filelock import FileLock

        self.meta = read_json(self.root / STUDY_FILE)
        self.cfg = load_config(self.root / "config.yaml")
        self.params = search_space(self.cfg)
        self.base = flatten(config_to_dict(self.cfg))
        self.lock = FileLock(str(self.root / ".study.lock"), timeout=600)
        self.study = open_study(self.meta, self.cfg, self.worker)
        self.parent = ParentRun(self.cfg, self.root.name, {}, run_id=self.meta.get("mlflow_parent"))
        self.target = int(self.meta["trials"])

    def run(self, say=print) -> None:
        """Trials until the study has `trials` of them (or three in a row fail)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.sweep()
        failures = 0
        while (trial := self.next_trial()) is not None:
            _, error = self.run_trial(trial, say)
            failures = failures + 1 if error else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise RunError(
                    f"tune: {failures} trials in a row failed; the last (trial {trial.number}): {error}. Fix it, then "
                    f"continue with: tunesmith tune --resume {self.root}"
                )

    def progress(self) -> str:
        """'5/24 trials done, 1 pruned | best 0.7085 (trial 3)': the study so far, all workers together."""
        import optuna

        states = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (states.COMPLETE, states.PRUNED, states.FAIL)]
        pruned = sum(t.state == states.PRUNED for t in done)
        out = f"{counted(done)}/{self.target} trials done" + (f", {pruned} pruned" if pruned else "")
        if len(self.meta["directions"]) == 1 and any(t.state == states.COMPLETE for t in done):
            best = self.study.best_trial
            out += f" | best {best.values[0]:.4f} (trial {best.number})"
        return out

    def next_trial(self):
        with self.lock:
            if counted(self.study.get_trials(deepcopy=False)) >= self.target:
                return None
            trial = self.study.ask()
            trial.set_user_attr("process", this_process())
            trial.set_user_attr("worker", self.worker)
            return trial

    def sweep(self) -> None:
        """Trials left RUNNING by a process that is gone become failed + interrupted; each interrupted trial not yet
        retried is queued again with its values, its run folder (to resume) and its reported validations."""
        import optuna

        running, fail = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
        st = self.study._storage
        with self.lock:
            trials = self.study.get_trials(deepcopy=False)
            for t in trials:
                if t.state == running and self._gone(t):
                    st.set_trial_user_attr(t._trial_id, "interrupted", True)
                    st.set_trial_state_values(t._trial_id, fail)
            trials = self.study.get_trials(deepcopy=False)
            retried = {t.user_attrs.get("retry_of") for t in trials}
            for t in trials:
                if t.state == fail and t.user_attrs.get("interrupted") and t.number not in retried:
                    self.study.enqueue_trial(
                        t.params,
                        user_attrs={
                            "retry_of": t.number,
                            "resume_run": t.user_attrs.get("run"),
                            "reported": {str(k): v for k, v in t.intermediate_values.items()},
                        },
                    )

    def _gone(self, trial) -> bool:
        process = trial.user_attrs.get("process") or {}
        if not process:
            return False
        run = trial.user_attrs.get("run")
        if run and Path(run).is_dir():
            live = liveness(run, {**read_info(run), "status": "running", "process": process})
        else:  # before its run folder exists only the pid on this host can tell
            if process.get("host") != socket.gethostname():
                return False
            live = liveness(self.root, {"status": "running", "process": process})
        return live.status == "died"

    def run_trial(self, trial, say) -> tuple[str, str | None]:
        """Train one trial; returns (state, error or None). Interrupted / KeyboardInterrupt propagate."""
        import optuna

        values = sample(trial, self.params, self.base)
        resume = trial.user_attrs.get("resume_run")
        for step, value in (trial.user_attrs.get("reported") or {}).items():
            trial.report(value, int(step))
        out = self.root / "trials" / f"{trial.number:04d}"
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={choice_label(v)}" for k, v in values.items()
        )
        say(
            f"\n[tune] trial {trial.number} (worker {self.worker}): {shown}"
            + (f" (resuming {resume})" if resume else "")
        )
        metric, single = self.meta["metric"], len(self.meta["directions"]) == 1

        if resume:
            trial.set_user_attr("run", resume)

        def on_validation(evaluation: int, step: int, metrics: dict) -> None:
            self._record_run(trial, out)  # as soon as it exists: a sweep reads its heartbeat
            if not single:
                return
            trial.report(float(metrics[metric]), evaluation)
            if trial.should_prune():
                raise Pruned(step, evaluation)

        _reset_peak_memory()
        try:
            if resume and _resumable(resume):
                run = finetune(resume=resume, hold_out_test=True, on_validation=on_validation)
            else:
                run = finetune(self.trial_config(trial, values, out), hold_out_test=True, on_validation=on_validation)
        except Pruned as pruned:
            self._record_run(trial, out)
            self._drop_checkpoints(trial)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            say(
                f"[tune] trial {trial.number} pruned at validation {pruned.evaluation} (step {pruned.step}) | "
                + self.progress()
            )
            return "pruned", None
        except (Interrupted, KeyboardInterrupt):
            self._record_run(trial, out)
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as err:  # a failed trial is recorded and the study goes on
            if trial.number == 0 and isinstance(err, TunesmithError):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise  # the starting config itself does not run: the user's mistake, one line
            self._record_run(trial, out)
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            say(f"[tune] trial {trial.number} failed: {type(err).__name__}: {err}")
            return "failed", f"{type(err).__name__}: {err}"
        self.parent.adopt(run.info.get("mlflow_run_id"))
        trial.set_user_attr("run", str(run.path))
        value = float(run.metrics["validation_best"][metric])
        seconds, peak = float(run.info["timings"]["train_seconds"]), _peak_memory_mb(run)
        trial.set_user_attr("train_seconds", seconds)
        trial.set_user_attr("peak_memory_mb", peak)
        second = seconds if self.meta["second_objective"] == "train_seconds" else peak
        self.study.tell(trial, [value] if single else [value, second])
        say(f"[tune] trial {trial.number}: validation {metric} {value:.4f} | {self.progress()}")
        self.keep_models()
        return "complete", None

    def trial_config(self, trial, values: dict, out: Path) -> dict:
        d = trial_dict(self.cfg, values)
        uses = get_task_class(self.cfg.task).uses
        for key, value in CHEAP_EVAL.items():
            section, name = key.split(".")
            if name not in TASK_KEYS.get(section, ()) or key in uses or f"{section}.*" in uses:
                d.setdefault(section, {})[name] = value
        d["name"] = f"{self.cfg.name}-t{trial.number:04d}"
        d["output_dir"] = str(out)
        d["tracking"] = {**d.get("tracking", {}), "uri": self.meta.get("tracking_uri")}
        return d

    def _record_run(self, trial, out: Path) -> None:
        """The trial's run folder into the study, once (a retry's is its interrupted trial's, recorded before)."""
        if "run" in trial.user_attrs:
            return
        runs = sorted(out.glob("*/run.json")) if out.is_dir() else []
        if runs:
            trial.set_user_attr("run", str(runs[-1].parent))

    def _drop_checkpoints(self, trial) -> None:
        run = trial.user_attrs.get("run")
        if run:
            shutil.rmtree(Path(run) / "checkpoints", ignore_errors=True)

    def keep_models(self) -> None:
        """keep_models: best: only the best trial's model/ (the Pareto front's, for two objectives) stays."""
        if self.cfg.tune.keep_models == "all":
            return
        import optuna

        with self.lock:
            keep = {t.number for t in self.study.best_trials}
            for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                run = t.user_attrs.get("run")
                if t.number not in keep and run and (Path(run) / "model").is_dir():
                    shutil.rmtree(Path(run) / "model")


def _resumable(run: str) -> bool:
    path = Path(run)
    return (path / "checkpoints" / "last").is_dir() and liveness(path).status in ("interrupted", "died")


def _reset_peak_memory() -> None:
    """Linux: reset this process's peak RSS (VmHWM), so a worker's later trials are measured on their own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory_mb(run) -> float:
    if "peak_gpu_mb" in run.info.get("timings", {}):
        return float(run.info["timings"]["peak_gpu_mb"])
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(run.info["timings"]["peak_rss_mb"])


def work(root: str, worker: int, threads: int | None) -> None:
    """A spawned worker process: its own process group (the parent forwards Ctrl-C once); exit 130 when stopped.

    Its trials' output (the runs' own lines) goes to <study>/workers/worker-K.log, so that K workers do not interleave
    their progress bars; the terminal gets the [tune] lines: each trial's start and result and the study's progress."""
    os.setpgrp()
    log_path = Path(root) / "workers" / f"worker-{worker}.log"
    log_path.parent.mkdir(exist_ok=True)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the life of the process)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ["TQDM_DISABLE"] = "1"  # no progress bars in a log file; the loop's validation lines stay

    def say(message: str) -> None:
        print(message, flush=True)  # the log
        print(message, file=terminal, flush=True)

    try:
        Worker(Path(root), worker, threads).run(say)
    except (Interrupted, KeyboardInterrupt):
        raise SystemExit(130) from None
    except TunesmithError as err:
        say(f"error: {err}")
        raise SystemExit(2) from None


def best_trial(study, meta: dict):
    """The best complete trial: by the metric; with two objectives, the Pareto front's best on the metric."""
    sign = 1 if meta["directions"][0] == "maximize" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def trial_metrics(trial) -> dict:
    """The trial's run metrics.json (validation figures: the run held the test split out), or {}."""
    run = trial.user_attrs.get("run")
    return read_metrics(run) if run and (Path(run) / "metrics.json").is_file() else {}
