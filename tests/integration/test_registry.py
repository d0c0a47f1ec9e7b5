"""The model registry on a real MLflow SQLite store: register a run, list it, promote it, and load it back
by `models:/NAME@production` (library and CLI); user mistakes give one-line errors."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from tunesmith.errors import RegistryError


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model, toy_csv):
    from tunesmith import finetune

    tmp = tmp_path_factory.mktemp("registry")
    cfg = tiny_config(
        tmp,
        tiny_model,
        toy_csv,
        train={"epochs": 3},
        tracking={"backend": "mlflow"},
        eval={"robustness": False, "efficiency": False, "bootstrap_resamples": 100},
    )
    return finetune(cfg)


def test_register_promote_and_load_by_alias(tracked_run, monkeypatch, capsys):
    from tunesmith.cli import main
    from tunesmith.runs.registry import list_models, promote, register
    from tunesmith.runs.run import load_run

    uri = tracked_run.info["mlflow_uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    v1 = register(tracked_run.path, "toy")
    v2 = register(tracked_run.path, "toy")
    assert (v1["version"], v2["version"]) == (1, 2) and v1["run_id"] == tracked_run.info["mlflow_run_id"]
    promote("toy", 1, "production")
    rows = {r["version"]: r for r in list_models()}
    assert rows[1]["aliases"] == ["production"] and rows[2]["aliases"] == []
    assert (
        rows[1]["tags"]["test_macro_f1"] == f"{tracked_run.metrics['test']['macro_f1']:.4f}"
        and "test_macro_f1_ci" in rows[1]["tags"]
    )

    loaded = load_run("models:/toy@production")
    assert (
        loaded.path / "MODEL_CARD.md"
    ).is_file() and loaded.path != tracked_run.path  # the registry's copy, not the run folder
    texts = ["good table", "awful chair"]
    assert [p.label for p in loaded.predict(texts)] == [p.label for p in tracked_run.predict(texts)]
    assert load_run("models:/toy/2").info["name"] == tracked_run.info["name"]

    assert main(["predict", "models:/toy@production", "--text", "good table"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == tracked_run.predict("good table")[0].label
    assert main(["models"]) == 0 and "production" in capsys.readouterr().out
    assert main(["promote", "toy", "9", "--to", "production"]) == 2
    assert "has no version 9" in capsys.readouterr().err


def test_registry_errors(tracked_run, monkeypatch, tmp_path):
    from tunesmith.runs.registry import register
    from tunesmith.runs.run import load_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(RegistryError, match="no such model version"):
        load_run("models:/nothing@production")
    with pytest.raises(RegistryError, match="expected models:/NAME@ALIAS"):
        load_run("models:/just-a-name")
    # A run tracked elsewhere (or not at all) is copied into this store's artifacts at registration.
    v = register(tracked_run.path, "copy", f"sqlite:///{tmp_path / 'empty.db'}")
    assert v["run_id"] != tracked_run.info["mlflow_run_id"]
    assert load_run("models:/copy/1").predict("good")[0].label in {"neg", "neu", "pos"}


def test_serve_answers_for_a_registered_version_by_alias(tracked_run, monkeypatch):
    import json
    import urllib.request

    from tunesmith.runs.registry import promote, register
    from tunesmith.serve import ServeOptions, Server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked_run.info["mlflow_uri"])
    version = register(tracked_run.path, "served")["version"]
    promote("served", version, "staging")
    with Server(["models:/served@staging"], ServeOptions(port=0), say=lambda s: None) as srv:
        with urllib.request.urlopen(f"{srv.url}/v1/models") as resp:
            [entry] = json.load(resp)["data"]
        assert entry["id"] == "served@staging" and entry["source"] == "models:/served@staging"
        body = json.dumps({"model": "served@staging", "texts": ["good table", "awful chair"]}).encode()
        request = urllib.request.Request(f"{srv.url}/v1/classify", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request) as resp:
            labels = [r["label"] for r in json.load(resp)["results"]]
    assert labels == [p.label for p in tracked_run.predict(["good table", "awful chair"])]
