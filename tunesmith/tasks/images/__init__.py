"""Image classification: image sources and decoding, splits, augmentation, batches, evaluation, the task."""

from .task import ImageClassificationTask, ImagePredictor

__all__ = ["ImageClassificationTask", "ImagePredictor"]
