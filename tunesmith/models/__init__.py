"""Pretrained models from every source (packaged alias, local folder, hub id) with task heads."""

from .loading import ALIASES, ModelSource, load_classifier, load_tokenizer, resolve_model

__all__ = ["ALIASES", "ModelSource", "load_classifier", "load_tokenizer", "resolve_model"]
