"""Generative tasks: causal-lm and seq2seq (formats, lint, batches, generation, report, the tasks)."""

from .task import CausalLMTask, GenerativeTask, Seq2SeqTask

__all__ = ["CausalLMTask", "GenerativeTask", "Seq2SeqTask"]
