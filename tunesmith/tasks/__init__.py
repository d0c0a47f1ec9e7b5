"""Tasks decide what is learned. `registry.py` is the only name -> class table; `base.py` the protocol."""

from .base import Findings, Prediction, Predictor, Task, TaskData
from .registry import build_task, get_task_class, register_task, task_names

__all__ = [
    "Findings",
    "Prediction",
    "Predictor",
    "Task",
    "TaskData",
    "build_task",
    "get_task_class",
    "register_task",
    "task_names",
]
