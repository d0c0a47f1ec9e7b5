"""Errors a user can cause. The CLI prints them as one line (no traceback) and exits with 2.

Every message says what was wrong, where (file, line/row, key) and how to fix it.
"""


class TunesmithError(Exception):
    """Base class of every error that comes from the user's config, data, paths or models."""


class ConfigError(TunesmithError):
    """A bad YAML file, unknown key, wrong type or impossible combination of settings."""


class DataError(TunesmithError):
    """A missing/empty/malformed data file, missing column, or labels that cannot be learned."""


class ModelError(TunesmithError):
    """A model that cannot be found or loaded (e.g. a hub id while offline)."""


class RunError(TunesmithError):
    """A run folder that does not exist, is incomplete, or does not match the request."""


class RegistryError(TunesmithError):
    """A registered model, version or alias that does not exist, or a model registry that cannot be used."""


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C / SIGTERM) after writing a checkpoint (not a mistake: exit 130)."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}")
        self.step = step


class Pruned(Exception):
    """A search trial stopped on purpose: its validation scores were clearly worse than other trials' (`tunesmith tune`)."""

    def __init__(self, step: int, evaluation: int):
        super().__init__(f"pruned at step {step} (validation {evaluation})")
        self.step, self.evaluation = step, evaluation
