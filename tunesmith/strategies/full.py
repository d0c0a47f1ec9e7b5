"""Full fine-tuning: every weight trains."""

from .base import Strategy


class FullStrategy(Strategy):
    name = "full"
    summary = "All weights train. Best accuracy with enough data; most memory; saves the whole model."
