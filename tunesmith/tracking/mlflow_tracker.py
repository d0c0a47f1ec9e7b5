"""MLflow tracking; by default an embedded SQLite store inside the output folder (no server needed)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ConfigError

SKIP_ARTIFACTS = {"checkpoints"}


def default_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


class MlflowTracker:
    def __init__(self, uri: str, experiment: str, run_name: str, output_dir: Path, run_id: str | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        for name in ("mlflow", "alembic"):  # MLflow configures its loggers on import; quiet them after
            logging.getLogger(name).setLevel(logging.WARNING)

        self._mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        try:
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if uri.startswith("sqlite:"):  # keep artifacts beside the database, not in the cwd
                    location = (Path(output_dir).resolve() / "mlartifacts").as_uri()
                exp_id = mlflow.create_experiment(experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            self._run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=run_name)
        except Exception as err:  # MLflow raises many types for unreachable servers/bad URIs
            raise ConfigError(
                f"tracking.uri={uri}: cannot use this MLflow store ({str(err).splitlines()[0]}); fix the URI or set tracking.backend: none"
            ) from None
        self.run_id = self._run.info.run_id

    def log_params(self, params: dict) -> None:
        clean = {k: ("" if v is None else str(v))[:500] for k, v in params.items()}
        self._mlflow.log_params(clean)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifacts(self, folder: Path) -> None:
        for item in sorted(Path(folder).iterdir()):
            if item.name in SKIP_ARTIFACTS or item.name.startswith("."):
                continue
            if item.is_dir():
                self._mlflow.log_artifacts(str(item), artifact_path=item.name)
            else:
                self._mlflow.log_artifact(str(item))

    def finish(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)

    def end_stale(self, run_id: str) -> None:
        """Mark another run of this store KILLED (a died attempt that `--restart` replaces), if it is still RUNNING."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="KILLED")
        except Exception:  # noqa: BLE001 - a run deleted from the store is not worth stopping for
            pass
