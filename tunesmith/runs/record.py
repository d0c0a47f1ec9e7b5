"""The run folder's files, read without loading anything heavy (run.json, metrics.json, labels.json).

runs/<name>-<timestamp>/
  config.yaml  run.json  metrics.json  history.jsonl  report.md  MODEL_CARD.md  training_curves.png
  audit.md/.json (when audited)  model/  [checkpoints/ while running or when kept]
  + the task's own files (classification: labels.json, confusion_matrix.png, test_predictions.csv, ...;
    generative: lint.txt, generations.jsonl)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RunError
from ..utils import read_json

RUN_FILE = "run.json"
STATUSES = ("running", "interrupted", "failed", "complete")


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
