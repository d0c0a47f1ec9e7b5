"""The write side of a run folder: it is created once, and its status stays true through every phase.

    running  ->  complete                      (the run finished and everything was written)
             ->  interrupted                   (Ctrl-C / SIGTERM: a checkpoint is there; --resume continues)
             ->  failed                        (any exception, in any phase: training, testing, artifacts)

Only the main process writes; the others follow along (the folder name is broadcast).
"""

from __future__ import annotations

import resource
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config.dump import save_config
from ..config.schema import Config
from ..errors import Interrupted
from ..tracking.mlflow_tracker import default_uri
from ..utils import atomic_dir, atomic_write_json, folder_size, read_json
from ..version import __version__
from .record import RUN_FILE


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_run_dir(cfg: Config) -> Path:
    """`<output_dir>/<name>-<timestamp>`, made unique with a counter."""
    base = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def tracking_uri(cfg: Config) -> str | None:
    if cfg.tracking.backend != "mlflow":
        return None

    return cfg.tracking.uri or default_uri(cfg.output_dir)


class RunFolder:
    """run.json (status, what ran, timings), config.yaml and model/ of one run; `info` mirrors run.json."""

    def __init__(self, path: Path, is_main: bool, tracker, resume: bool):
        self.path, self.is_main, self.tracker = Path(path), is_main, tracker
        self.info: dict = read_json(self.path / RUN_FILE) if resume else {}

    @classmethod
    def open(cls, cfg: Config, acc, resume_dir: Path | None, make_tracker) -> RunFolder:
        """The folder of this run (new, or the one being resumed); `make_tracker(run_name, run_id)` gives its tracker."""
        from accelerate.utils import broadcast_object_list

        path = resume_dir
        if path is None:
            name = [str(new_run_dir(cfg))] if acc.is_main_process else [None]
            path = Path(broadcast_object_list(name)[0] if acc.num_processes > 1 else name[0])
        folder = cls(path, acc.is_main_process, None, resume_dir is not None)
        folder.tracker = make_tracker(path.name, folder.info.get("mlflow_run_id"))
        return folder

    def start(self, cfg: Config, **fields) -> None:
        """Mark the run running, with what it is; write config.yaml."""
        self.info.update(
            status="running",
            name=self.path.name,
            path=str(self.path),
            tunesmith_version=__version__,
            created=self.info.get("created", now()),
            task=cfg.task,
            mlflow_run_id=self.tracker.run_id,
            mlflow_uri=tracking_uri(cfg),
            **fields,
        )
        if self.is_main:
            save_config(cfg, self.path / "config.yaml")
            self.write()

    def update(self, **fields) -> None:
        self.info.update(fields)
        self.write()

    def write(self) -> None:
        if self.is_main:
            atomic_write_json(self.path / RUN_FILE, self.info)

    @contextmanager
    def lifecycle(self):
        """Any exception inside marks the run failed (or interrupted) and closes its tracker run, then propagates."""
        try:
            yield self
        except Interrupted:
            self.stop("interrupted", "KILLED")
            raise
        except BaseException:
            self.stop("failed", "FAILED")
            raise

    def stop(self, status: str, tracker_status: str) -> None:
        if self.is_main:
            self.info.update(status=status, stopped=now())
            self.write()
            self.tracker.finish(tracker_status)

    def save_model(self, strategy, model, tokenizer, fit) -> float:
        """What the strategy saves + the tokenizer into model/, the run's timings into run.json; returns peak MB."""
        with atomic_dir(self.path / "model") as tmp:
            strategy.save(model, tmp)
            tokenizer.save_pretrained(tmp)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.info["timings"] = {
            "train_seconds": round(fit.train_seconds, 2),
            "samples_per_second": round(fit.samples_per_second, 2),
            "tokens_per_second": round(fit.tokens_per_second, 1),
            "peak_rss_mb": round(peak_mb, 1),
            **(
                {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
                if torch.cuda.is_available()
                else {}
            ),
        }
        self.info["saved_bytes"] = folder_size(self.path / "model")
        return peak_mb

    def complete(self, keep_checkpoints: bool) -> None:
        """Drop the checkpoints (unless kept), mark the run complete, hand the folder to the tracker."""
        if not keep_checkpoints:
            shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        self.info.pop("task_state", None)
        self.info.update(status="complete", finished=now())
        self.write()
        self.tracker.log_artifacts(self.path)
        self.tracker.finish("FINISHED")
