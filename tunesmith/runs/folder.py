"""The write side of a run folder: it is created once, and its status stays true through every phase.

    running  ->  complete                      (the run finished and everything was written)
             ->  interrupted                   (Ctrl-C / SIGTERM: a checkpoint is there; --resume continues)
             ->  failed                        (any exception, in any phase: training, testing, artifacts)
   [died: derived by readers when the process is gone while run.json says running; see record.py]

Only the main process writes; the others follow along (the folder name is broadcast). While running, the main
process records itself in run.json (`process`) and a daemon thread rewrites heartbeat.json every HEARTBEAT_EVERY
seconds with the last step reached, so that a run killed outright (SIGKILL, out of memory, power) reads `died`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config.dump import save_config
from ..config.schema import Config
from ..errors import Interrupted, Pruned
from ..tracking.mlflow_tracker import default_uri
from ..utils import atomic_dir, atomic_write_json, folder_size, read_json
from ..version import __version__
from .record import HEARTBEAT_EVERY, HEARTBEAT_FILE, RUN_FILE, this_process


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


class Heartbeat:
    """Rewrites heartbeat.json ({"time", "step"}) every `every` seconds from a daemon thread, until stopped.

    The loop only sets `step` (no I/O on the training path); the thread also beats through the long phases
    around training (scoring the pretrained model, testing), so a live run never looks stale.
    """

    def __init__(self, folder: Path, every: float = HEARTBEAT_EVERY):
        self.file, self.every, self.step = Path(folder) / HEARTBEAT_FILE, every, 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self.beat()
        self._thread = threading.Thread(target=self._run, name="tunesmith-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            self.beat()

    def beat(self) -> None:
        """One atomic write (temporary name, then rename). Not utils.atomic_write_text: its umask probe would race
        the main thread's file creation."""
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        try:
            tmp.write_text(json.dumps({"time": time.time(), "step": self.step}), encoding="utf-8")
            os.replace(tmp, self.file)
        except OSError:  # a full disk or a removed folder must not stop training; the next beat tries again
            pass

    def stop(self) -> None:
        """Stop beating, after a last beat with the last step reached (once; a no-op when never started)."""
        if self._thread is None or self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join(timeout=5)
        self.beat()


class RunFolder:
    """run.json (status, what ran, timings), config.yaml and model/ of one run; `info` mirrors run.json."""

    def __init__(self, path: Path, is_main: bool, tracker, resume: bool):
        self.path, self.is_main, self.tracker = Path(path), is_main, tracker
        self.info: dict = read_json(self.path / RUN_FILE) if resume else {}
        self.heartbeat = Heartbeat(self.path)

    @classmethod
    def open(cls, cfg: Config, acc, run_dir: Path | None, make_tracker, restart: bool = False) -> RunFolder:
        """The folder of this run: new, the one being resumed, or (`restart`) an old one emptied to train again
        from scratch; `make_tracker(run_name, run_id)` gives its tracker."""
        from accelerate.utils import broadcast_object_list

        path = run_dir
        if path is None:
            name = [str(new_run_dir(cfg))] if acc.is_main_process else [None]
            path = Path(broadcast_object_list(name)[0] if acc.num_processes > 1 else name[0])
        folder = cls(path, acc.is_main_process, None, resume=run_dir is not None and not restart)
        stale = read_json(path / RUN_FILE).get("mlflow_run_id") if restart else None
        if restart:
            if folder.is_main:
                folder.clear()
            acc.wait_for_everyone()
        folder.tracker = make_tracker(path.name, folder.info.get("mlflow_run_id"))
        if stale:  # the died attempt's MLflow run would otherwise stay RUNNING there
            folder.tracker.end_stale(stale)
        return folder

    def clear(self) -> None:
        """Remove everything a previous attempt left (run.json stays until start() rewrites it)."""
        for entry in self.path.iterdir():
            if entry.name == RUN_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

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
            process=this_process(),
            **fields,
        )
        if self.is_main:
            save_config(cfg, self.path / "config.yaml")
            self.write()
            self.heartbeat.start()

    def reached(self, step: int) -> None:
        """The loop reached `step` (the heartbeat writes it with its next beat)."""
        self.heartbeat.step = step

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
        except Pruned as pruned:  # a search trial stopped on purpose (`tunesmith tune`)
            self.info["pruned"] = {"step": pruned.step, "evaluation": pruned.evaluation}
            self.stop("pruned", "KILLED")
            raise
        except BaseException:
            self.stop("failed", "FAILED")
            raise
        finally:
            self.heartbeat.stop()

    def stop(self, status: str, tracker_status: str) -> None:
        self.heartbeat.stop()
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
        self.heartbeat.stop()
        self.info.update(status="complete", finished=now())
        self.write()
        self.tracker.log_artifacts(self.path)
        self.tracker.finish("FINISHED")
