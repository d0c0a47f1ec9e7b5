"""The run folder's files, read without loading anything heavy (run.json, metrics.json, labels.json).

runs/<name>-<timestamp>/
  config.yaml  run.json  heartbeat.json  metrics.json  history.jsonl  report.md  MODEL_CARD.md  training_curves.png
  audit.md/.json (when audited)  model/  [checkpoints/ while running or when kept]
  + the task's own files (classification: labels.json, confusion_matrix.png, test_predictions.csv, ...;
    generative: lint.txt, generations.jsonl)

Liveness. run.json records the process that writes the run (`process`: host, pid, start time, boot id) and
heartbeat.json its last sign of life (time, last step reached; rewritten every HEARTBEAT_EVERY seconds). A run
whose run.json says `running` reads as `died` when its process is gone: on the same host, when the pid is gone
or now belongs to another process (its start time differs) or the machine restarted; on another host, when the
heartbeat is older than STALE_AFTER (10 minutes). `died` is derived on read, never written: readers do not race
the writer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..errors import RunError
from ..utils import read_json

RUN_FILE = "run.json"
HEARTBEAT_FILE = "heartbeat.json"
STATUSES = ("running", "interrupted", "pruned", "failed", "complete", "died")
"""What a reader can see; `died` is derived (run.json says `running`, but its process is gone)."""
HEARTBEAT_EVERY = 15.0
"""Seconds between two writes of heartbeat.json by a running run's main process."""
STALE_AFTER = 600.0
"""A run on another host without a heartbeat for this long (10 minutes) has died: generous, so that a slow
shared file system or clocks some minutes apart never declare a live run dead. On its own host the pid decides."""
_PROC = Path("/proc")
UNKNOWN = "unknown"


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / RUN_FILE).is_file()


def read_info(path: str | Path) -> dict:
    """run.json of a run folder; a clear error when `path` is not one."""
    path = Path(path)
    if not is_run_folder(path):
        raise RunError(f"{path}: not a tunesmith run folder (no run.json); `tunesmith runs` lists run folders")
    return read_json(path / RUN_FILE)


def read_metrics(path: str | Path) -> dict:
    file = Path(path) / "metrics.json"
    return read_json(file) if file.is_file() else {}


def read_labels(path: str | Path) -> list[str]:
    file = Path(path) / "labels.json"  # only tasks with labels write it
    return read_json(file) if file.is_file() else []


# ---- liveness


def this_process() -> dict:
    """The process writing a run, as run.json's `process` records it."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_started(pid), "boot": _boot_id()}


def process_started(pid: int) -> str | None:
    """When process `pid` started, as a token that tells a reused pid apart: None when no such live process,
    UNKNOWN when this user may not look. Linux: clock ticks since boot (/proc, exact whatever the wall clock
    does); elsewhere psutil's create time."""
    if (_PROC / "self" / "stat").is_file():
        try:
            fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()  # the name may hold ')'
        except PermissionError:
            return UNKNOWN
        except (OSError, IndexError):
            return None
        return None if fields[0] in ("Z", "X") else f"ticks:{fields[19]}"  # a zombie has exited
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else f"time:{proc.create_time():.3f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return UNKNOWN


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


def read_heartbeat(path: str | Path) -> dict:
    """heartbeat.json ({"time": seconds since the epoch, "step": last step reached}); {} when there is none."""
    try:
        return json.loads((Path(path) / HEARTBEAT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Liveness:
    """A run's status as a reader sees it now (see the module docstring for the rule)."""

    status: str
    """run.json's status, or `died` for a `running` run whose process is gone."""
    step: int | None = None
    """The last step reached, as of the last heartbeat (running and died runs)."""
    seen: float | None = None
    """When the last heartbeat was written (seconds since the epoch)."""
    process: dict = field(default_factory=dict)
    """run.json's `process` (host, pid, started, boot); empty for runs written before it was recorded."""
    why: str = ""
    """Why the run is judged died, e.g. 'process 4242 on gpu-1 is gone'."""

    def facts(self, now: float | None = None) -> list[str]:
        """What is known of its progress: ['step 12', '3 min ago']."""
        out = [f"step {self.step}"] if self.step is not None else []
        return out + ([ago((time.time() if now is None else now) - self.seen)] if self.seen is not None else [])

    def last_seen(self, now: float | None = None) -> str:
        """'last seen at step 12, 3 min ago'."""
        facts = self.facts(now)
        if facts and self.step is not None:
            facts[0] = f"at {facts[0]}"
        return f"last seen {', '.join(facts)}" if facts else "never seen"

    def describe(self, now: float | None = None) -> str:
        """The status with what is known of a running or died run: 'died (step 12, 3 min ago)', 'running (step 40)'."""
        if self.status == "died":
            facts = self.facts(now)
        else:
            facts = [f"step {self.step}"] if self.status == "running" and self.step is not None else []
        return f"{self.status} ({', '.join(facts)})" if facts else self.status


def liveness(path: str | Path, info: dict | None = None, now: float | None = None) -> Liveness:
    """The run's status now: `running` in run.json, but its process gone, reads `died`. `now` is for tests."""
    path = Path(path)
    info = read_info(path) if info is None else info
    status, process = info.get("status", UNKNOWN), info.get("process") or {}
    if status != "running":
        return Liveness(status, process=process)
    beat = read_heartbeat(path)
    step, seen = beat.get("step"), beat.get("time")
    if not process:  # written before processes were recorded: nothing to check
        return Liveness(status, step, seen)
    if seen is None and (path / RUN_FILE).is_file():
        seen = (path / RUN_FILE).stat().st_mtime
    why = _why_died(process, seen, time.time() if now is None else now)
    return Liveness("died" if why else "running", step, seen, process, why)


def _why_died(process: dict, seen: float | None, now: float) -> str:
    """Why the run's process is gone ('' while it lives): on its host by pid and start time, elsewhere by heartbeat."""
    host, pid = process.get("host"), process.get("pid")
    if host != socket.gethostname():
        if seen is not None and now - seen > STALE_AFTER:
            return f"no heartbeat from {host} for {ago(now - seen).removesuffix(' ago')}"
        return ""
    boot = _boot_id()
    if process.get("boot") and boot and process["boot"] != boot:
        return f"{host} has restarted since"
    started = process_started(int(pid))
    if started is None:
        return f"process {pid} on {host} is gone"
    if UNKNOWN not in (started, process.get("started") or UNKNOWN) and started != process["started"]:
        return f"pid {pid} on {host} now belongs to another process"
    return ""


def ago(seconds: float) -> str:
    """'45 s ago', '3 min ago', '5 h ago', '2 days ago'."""
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 90 * 60:
        return f"{s / 60:.0f} min ago"
    if s < 48 * 3600:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} days ago"
