"""tunesmith: fine-tune pretrained models from one YAML config, in one readable loop.

import tunesmith
run = tunesmith.finetune("configs/quickstart/sentiment-lora.yaml", ["train.lr=3e-4"])
run.predict(["great movie"])
tunesmith.load_run(run.path).metrics["test"]["macro_f1"]
"""

from .config import Config, load_config
from .engine.pipeline import finetune
from .errors import ConfigError, DataError, Interrupted, ModelError, RunError, TunesmithError
from .evaluate.compare_html import write_comparison
from .runs.run import Run, list_runs, load_run
from .tools.compare import compare_runs
from .version import __version__


def compare(*runs, out=None, **options) -> dict:
    """Compare run folders on the same test set (the first is the reference); with `out`, also write compare.md/.html there."""

    result = compare_runs(list(runs), **options)
    if out is not None:
        write_comparison(result, out)
    return result


__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "Interrupted",
    "ModelError",
    "Run",
    "RunError",
    "TunesmithError",
    "__version__",
    "compare",
    "finetune",
    "list_runs",
    "load_config",
    "load_run",
]
