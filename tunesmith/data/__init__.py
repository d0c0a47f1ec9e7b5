"""Data: load tables, check and split them, tokenise and batch."""

from .loaders import load_table
from .splits import Splits, TextSplit, load_splits

__all__ = ["Splits", "TextSplit", "load_splits", "load_table"]
