"""Model registry on MLflow (embedded SQLite by default): register a run, list versions, promote by alias,
and resolve `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) back to a loadable run folder.

A version's source is the MLflow run's artifact folder, which mirrors the run folder (run.json,
config.yaml, labels.json, model/, MODEL_CARD.md, metrics.json): `tunesmith.load_run` opens it as is.
Runs trained with `tracking.backend: none` get an MLflow run created at registration to hold those files.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlparse

from ..errors import RegistryError
from ..tracking.mlflow_tracker import default_uri
from .record import read_info, read_metrics

CARRIED = ("run.json", "config.yaml", "labels.json", "metrics.json", "model")
HEADLINE = ("macro_f1", "accuracy")


def registry_uri(uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the default store of the default output folder (runs/mlflow.db)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri("runs")


def _client(uri: str):
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register(run_path: str | Path, name: str, uri: str | None = None, tags: dict[str, str] | None = None) -> dict:
    """A new version of registered model `name` whose source is the run's files; tagged with its headline metrics
    (and `tags`: e.g. the lineage `promote --if-better` records)."""
    from mlflow.exceptions import MlflowException

    path = Path(run_path)
    run = SimpleNamespace(path=path, info=read_info(path), metrics=read_metrics(path))
    status = run.info.get("status", "unknown")
    if status != "complete" or not (path / "model").is_dir():
        raise RegistryError(f"{path}: the run is {status} and has no saved model; register a finished run")
    uri = uri or run.info.get("mlflow_uri") or registry_uri()
    client = _client(uri)
    run_id, source = _source(client, run)
    try:
        client.create_registered_model(name, description=f"tunesmith {run.info.get('task')} model")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise RegistryError(
                f"register: cannot create model '{name}' in {uri} ({err.message.splitlines()[0]}); check the name"
            ) from None
    test = run.metrics.get("test") or {}
    ci = run.metrics.get("test_ci") or {}
    tags = {
        "run_folder": str(run.path.resolve()),
        "strategy": str(run.info.get("strategy")),
        "base_model": str(run.info.get("model", {}).get("name")),
        "test_fingerprint": str(run.info.get("data", {}).get("splits", {}).get("test", {}).get("fingerprint")),
        **{f"test_{m}": f"{test[m]:.4f}" for m in HEADLINE if m in test},
        **{f"test_{m}_ci": f"{ci[m]['low']:.4f}-{ci[m]['high']:.4f}" for m in HEADLINE if m in ci},
        **{k: str(v)[:5000] for k, v in (tags or {}).items()},
    }
    card = run.path / "MODEL_CARD.md"
    mv = client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags=tags,
        description=card.read_text(encoding="utf-8")[:4000] if card.is_file() else None,
    )
    return {"name": name, "version": int(mv.version), "source": source, "run_id": run_id, "uri": uri}


def _source(client, run) -> tuple[str, str]:
    """(MLflow run id, artifact URI holding the run's files): the tracked run's artifacts, or a new run that logs them."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.get("mlflow_run_id")
    if run_id:
        try:
            logged = {a.path for a in client.list_artifacts(run_id)}
            if set(CARRIED) <= logged:
                return run_id, client.get_run(run_id).info.artifact_uri
        except MlflowException:
            pass  # the run is not in this store: log the files afresh
    exp = client.get_experiment_by_name("tunesmith")
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment("tunesmith", artifact_location=_artifact_location(client))
    )
    mlrun = client.create_run(
        exp_id, run_name=f"register-{run.path.name}", tags={"tunesmith.run_folder": str(run.path.resolve())}
    )
    for item in sorted(run.path.iterdir()):
        if item.name in ("checkpoints",) or item.name.startswith("."):
            continue
        if item.is_dir():
            client.log_artifacts(mlrun.info.run_id, str(item), artifact_path=item.name)
        else:
            client.log_artifact(mlrun.info.run_id, str(item))
    client.set_terminated(mlrun.info.run_id)
    return mlrun.info.run_id, mlrun.info.artifact_uri


def _artifact_location(client) -> str | None:
    uri = client._tracking_client.tracking_uri
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, as the tracker does
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def promote(name: str, version: int, alias: str = "production", uri: str | None = None) -> None:
    from mlflow.exceptions import MlflowException

    client = _client(registry_uri(uri))
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(
            f"promote: model '{name}' has no version {version} in {registry_uri(uri)}; `tunesmith models` lists them"
        ) from None
    client.set_registered_model_alias(name, alias, str(version))


def list_models(uri: str | None = None) -> list[dict]:
    """Every registered model version with its aliases and headline metrics (newest version first)."""
    client = _client(registry_uri(uri))
    out = []
    for rm in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in sorted(client.search_model_versions(f"name='{rm.name}'"), key=lambda v: -int(v.version)):
            out.append(
                {
                    "name": rm.name,
                    "version": int(mv.version),
                    "aliases": sorted(aliases.get(str(mv.version), [])),
                    "tags": dict(mv.tags),
                    "source": mv.source,
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                }
            )
    return out


def _model_version(model_uri: str, uri: str | None):
    """(name, alias, the MLflow ModelVersion) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(model_uri)
    client = _client(registry_uri(uri))
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(
            f"{model_uri}: no such model version in {registry_uri(uri)}; `tunesmith models` lists them "
            f"(set MLFLOW_TRACKING_URI to use another store)"
        ) from None
    return name, alias, mv


def describe_model_uri(model_uri: str, uri: str | None = None) -> dict:
    """{"registered": NAME, "version": N} of `models:/NAME@ALIAS` or `models:/NAME/VERSION` (the alias resolved now)."""
    name, alias, mv = _model_version(model_uri, uri)
    return {"registered": name, "version": int(mv.version), **({"alias": alias} if alias else {})}


def lineage(name: str, uri: str | None = None) -> list[dict]:
    """The versions of `name`, oldest first, each with its parent version and the recorded lineage tags."""
    rows = [r for r in list_models(uri) if r["name"] == name]
    if not rows:
        raise RegistryError(
            f"lineage: no registered model '{name}' in {registry_uri(uri)}; `tunesmith models` lists them"
        )
    return sorted(rows, key=lambda r: r["version"])


def resolve(model_uri: str, uri: str | None = None) -> Path:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> a local folder that `Run` opens (downloaded when remote)."""
    name, _, mv = _model_version(model_uri, uri)
    parsed = urlparse(mv.source)
    if parsed.scheme == "file" and Path(unquote(parsed.path), "run.json").is_file():
        return Path(unquote(parsed.path))
    import mlflow

    cache = (
        Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))
        / "registry"
        / name
        / str(mv.version)
    )
    if not (cache / "run.json").is_file():
        mlflow.set_tracking_uri(registry_uri(uri))
        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(cache))
    return cache


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of models:/NAME@ALIAS or models:/NAME/VERSION."""
    spec = model_uri.removeprefix("models:/")
    if "@" in spec:
        name, alias, version = *spec.split("@", 1), None
    else:
        name, _, version = spec.rpartition("/")
        alias = None
    if not name or not (alias or (version or "").isdigit()):
        raise RegistryError(
            f"{model_uri}: expected models:/NAME@ALIAS (e.g. models:/sentiment@production) or models:/NAME/VERSION"
        )
    return name, alias, version
