"""Evaluation: task metrics, baselines."""

from .metrics import METRIC_NAMES, classification_metrics, headline, is_better

__all__ = ["METRIC_NAMES", "classification_metrics", "headline", "is_better"]
