"""What every phase of a run shares: the Accelerator, the config, the run folder, the tracker's log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import Config


@dataclass
class Context:
    acc: object
    """The accelerate.Accelerator of this process (devices, autocast, process group)."""
    cfg: Config
    precision: str = "fp32"
    """The precision chosen for this run (bf16 | fp16 | fp32)."""
    run_dir: Path | None = None
    resume: bool = False
    log: Callable[[dict, int | None], None] = lambda metrics, step=None: None
    """Tracks metrics (the tracker's log_metrics; a no-op off the main process)."""
    record: dict = field(default_factory=dict)
    """What a task adds to run.json while training is set up (e.g. packing: true)."""
    minimize: frozenset[str] = frozenset({"loss", "perplexity"})
    """Validation metrics for which lower is better (the task's `minimize`)."""
    model_key: str = ""
    """Identifies the pretrained weights + encoding (keys caches such as the linear probe's features)."""
    on_validation: Callable[[int, int, dict], None] = lambda evaluation, step, metrics: None
    """Told each validation (its 1-based count, the step, the metrics) once the loop has checkpointed; it may raise
    errors.Pruned to stop the run (a search trial that is clearly worse: `tunesmith tune`)."""

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def device(self):
        return self.acc.device

    @property
    def autocast(self):
        return self.acc.autocast

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.output_dir) / ".cache"

    def say(self, *args, **kwargs) -> None:
        """Print on the main process only."""
        self.acc.print(*args, **kwargs)
