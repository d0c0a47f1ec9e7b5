"""Multi-task fine-tuning: text-classification tasks on one backbone, a head each (`task: multi-task`)."""

from .task import MultiTask

__all__ = ["MultiTask"]
