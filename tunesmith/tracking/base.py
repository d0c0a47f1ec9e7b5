"""The tracker protocol: a run folder always exists; trackers mirror it somewhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifacts(self, folder: Path) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...
    def end_stale(self, run_id: str) -> None: ...


class NullTracker:
    """Tracks nothing (tracking.backend: none, and every process but the main one)."""

    run_id = None

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_artifacts(self, folder):
        pass

    def finish(self, status="FINISHED"):
        pass

    def end_stale(self, run_id):
        pass
