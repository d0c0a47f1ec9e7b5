"""Run tracking: the run folder always; MLflow (embedded SQLite by default) or nothing besides."""

from __future__ import annotations

from pathlib import Path

from ..config.schema import TrackingConfig
from .base import NullTracker, Tracker
from .mlflow_tracker import MlflowTracker, default_uri

BACKENDS = {"mlflow", "none"}


def make_tracker(
    cfg: TrackingConfig, output_dir: str, run_name: str, is_main: bool, run_id: str | None = None
) -> Tracker:
    """The tracker for this process (only the main process tracks)."""
    if not is_main or cfg.backend == "none":
        return NullTracker()

    return MlflowTracker(cfg.uri or default_uri(output_dir), cfg.experiment, run_name, Path(output_dir), run_id)


__all__ = ["NullTracker", "Tracker", "make_tracker"]
