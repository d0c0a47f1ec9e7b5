"""Text classification: batches (tokenise once, pad per batch), the extended evaluation, the task."""

from .task import ClassificationPredictor, ClassificationTask

__all__ = ["ClassificationPredictor", "ClassificationTask"]
