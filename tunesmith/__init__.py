"""tunesmith: fine-tune pretrained models from one YAML config, in one readable loop.

    import tunesmith
    run = tunesmith.finetune("configs/quickstart/sentiment-lora.yaml", ["train.lr=3e-4"])
    run.predict(["great movie"])
    tunesmith.load_run(run.path).metrics["test"]["macro_f1"]
"""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .errors import ConfigError, DataError, ModelError, RunError, TunesmithError  # noqa: E402
from .run import Run, list_runs, load_run  # noqa: E402


def finetune(config=None, overrides=None, resume=None) -> "Run":
    """Fine-tune as configured (a YAML path, a dict or a Config) and return the finished Run."""
    from .pipeline import finetune as _finetune

    return _finetune(config, overrides, resume)


def compare(*runs, out=None, **options) -> dict:
    """Compare run folders on the same test set (the first is the reference); with `out`, also write compare.md/.html there."""
    from .evaluate.compare import compare_runs
    from .evaluate.compare_html import write_comparison

    result = compare_runs(list(runs), **options)
    if out is not None:
        write_comparison(result, out)
    return result


__all__ = [
    "Config", "ConfigError", "DataError", "ModelError", "Run", "RunError", "TunesmithError",
    "compare", "finetune", "list_runs", "load_config", "load_run",
]
