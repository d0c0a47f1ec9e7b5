"""Evaluation: task metrics, baselines."""

from .metrics import METRIC_NAMES, classification_metrics, headline

__all__ = ["METRIC_NAMES", "classification_metrics", "headline"]
