"""`tunesmith cv`: stratified folds that keep near duplicates together, one run per fold, mean/std, and an
MLflow parent run whose children are the folds (real SQLite store)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

from tunesmith.errors import ConfigError, DataError


def test_assign_folds_stratified_and_keeps_duplicates_together():
    from tunesmith.tools.cv import assign_folds

    texts = [f"text number {i} about {'abc'[i % 3]}" for i in range(60)] + ["the very same sentence again"] * 4
    y = np.array([i % 3 for i in range(60)] + [0] * 4)
    folds = assign_folds(texts, y, 4, seed=0)
    assert len(set(folds[60:])) == 1  # exact duplicates never straddle folds
    for k in range(4):
        counts = np.bincount(y[folds == k], minlength=3)
        assert counts.min() >= 3  # every label in every fold
    with pytest.raises(DataError, match="fewer than --folds"):
        assign_folds(texts[:4], np.array([0, 0, 1, 1]), 3, seed=0)


def test_cv_runs_folds_as_children_of_a_parent_run(tmp_path, tiny_model, toy_csv):
    from mlflow import MlflowClient

    from tunesmith.tools.cv import cross_validate

    cfg = tiny_config(
        tmp_path,
        tiny_model,
        toy_csv,
        train={"epochs": 2},
        tracking={"backend": "mlflow"},
        eval={"robustness": False, "efficiency": False, "calibration": False, "bootstrap_resamples": 50},
        audit={"label_errors": False},
    )
    result = cross_validate(cfg, folds=3)
    assert [f["fold"] for f in result["folds"]] == [1, 2, 3]
    assert sum(f["test_rows"] for f in result["folds"]) == result["rows"] == 360
    f1 = [f["macro_f1"] for f in result["folds"]]
    assert result["summary"]["macro_f1"]["mean"] == pytest.approx(np.mean(f1))
    assert result["summary"]["macro_f1"]["std"] == pytest.approx(np.std(f1, ddof=1))
    md = (tmp_path / "runs" / result["path"].split("/")[-1] / "cv.md").read_text()
    assert "| **mean** |" in md and md.count("tiny-fold") == 3

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunesmith").experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("tiny-cv-"))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and parent.info.status == "FINISHED"
    assert parent.data.metrics["cv_macro_f1_mean"] == pytest.approx(result["summary"]["macro_f1"]["mean"])


def test_cv_refuses_bad_requests(tmp_path, tiny_model, toy_csv):
    from tunesmith.tools.cv import cross_validate

    with pytest.raises(ConfigError, match="--folds must be at least 2"):
        cross_validate(tiny_config(tmp_path, tiny_model, toy_csv), folds=1)
