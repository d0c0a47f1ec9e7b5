"""An MLflow parent run whose children are ordinary runs (the folds of `tunesmith cv`, the trials of `tunesmith tune`).

It is created with the client, not as the active run: each child starts its own run and is adopted by a tag.
Nothing happens when tracking is off.
"""

from __future__ import annotations

from pathlib import Path

from .mlflow_tracker import default_uri


class ParentRun:
    def __init__(self, cfg, name: str, params: dict, run_id: str | None = None):
        """A new parent run named `name` with `params`, or (`run_id`) the one an earlier, interrupted call made."""
        self.client = self.run_id = None
        if cfg.tracking.backend != "mlflow":
            return
        from mlflow import MlflowClient

        uri = cfg.tracking.uri or default_uri(cfg.output_dir)
        self.client = MlflowClient(tracking_uri=uri)
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        location = (Path(cfg.output_dir).resolve() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(cfg.tracking.experiment, artifact_location=location)
        )
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        for key, value in {"model.name": cfg.model.name, "strategy.name": cfg.strategy.name, **params}.items():
            self.client.log_param(self.run_id, key, value)

    def adopt(self, child_id: str | None) -> None:
        if self.client and child_id:
            self.client.set_tag(child_id, "mlflow.parentRunId", self.run_id)

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        if not self.client:
            return
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value)
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.end("FINISHED")

    def end(self, status: str) -> None:
        if self.client:
            self.client.set_terminated(self.run_id, status)
