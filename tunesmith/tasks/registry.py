"""The one table from task names to classes. Built-ins are imported lazily; `module:Class` names a user's task.

from tunesmith.tasks import Task, register_task
class MyTask(Task):
    name = "my-task"; ...
register_task(MyTask)
"""

from __future__ import annotations

from ..utils import lookup_class

_BUILTIN = {
    "text-classification": "tunesmith.tasks.classification:ClassificationTask",
    "causal-lm": "tunesmith.tasks.generative:CausalLMTask",
    "seq2seq": "tunesmith.tasks.generative:Seq2SeqTask",
    "image-classification": "tunesmith.tasks.images:ImageClassificationTask",
    "multi-task": "tunesmith.tasks.multitask:MultiTask",
    "preference": "tunesmith.tasks.preference:PreferenceTask",
    "reward-tuning": "tunesmith.tasks.preference:RewardTuningTask",
}
_REGISTERED: dict[str, type] = {}
DEFAULT_TASK = "text-classification"
"""What a config without `task:` learns."""


def register_task(cls: type) -> type:
    """Add a task under `cls.name` (usable as a class decorator)."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a `name`")
    _REGISTERED[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_task_class(name: str) -> type:
    """The class for `name`; `module:Class` also works (imports a user's file from the Python path)."""
    return lookup_class(name, _BUILTIN, _REGISTERED)


def build_task(cfg):
    """The task object for a config (its `task:` key)."""
    return get_task_class(cfg.task or DEFAULT_TASK)(cfg)
