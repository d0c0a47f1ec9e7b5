"""A task written outside the package gets every generic feature: run folder, MLflow, early stopping, resume."""

from __future__ import annotations

import json

import pytest

import tunesmith
from tunesmith.errors import Interrupted

ROWS = [" ".join(["word"] * (1 + i % 9)) for i in range(100)]


@pytest.fixture
def toy_config(tmp_path, tiny_model):
    (tmp_path / "counts.csv").write_text("text\n" + "\n".join(ROWS) + "\n")
    return {
        "name": "counts",
        "task": "toy_task:WordCountTask",
        "output_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(tmp_path / "counts.csv"), "max_length": 16},
        "model": {"name": str(tiny_model)},
        "train": {"epochs": 8, "batch_size": 8, "lr": 1e-3, "eval_every": 4, "patience": 2, "log_every": 2},
        "audit": {"enabled": False},
    }


def _history(run):
    return [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines()]


def test_a_user_task_trains_through_finetune_with_the_generic_features(toy_config, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    run = tunesmith.finetune(toy_config)
    assert run.status == "complete" and run.info["task"] == "toy_task:WordCountTask"
    for name in (
        "config.yaml",
        "run.json",
        "metrics.json",
        "history.jsonl",
        "training_curves.png",
        "model/config.json",
    ):
        assert (run.path / name).is_file(), name
    metrics = run.metrics
    assert metrics["test"]["mae"] < 3.0  # the mean word count is 5: predicting it gives an MAE of about 2.2
    assert metrics["stopped_early"] or metrics["steps"] == 8 * 8  # 8 epochs of ceil(60 / 8) steps
    assert metrics["validation_best"]["mae"] == min(h["val_mae"] for h in _history(run) if "val_mae" in h)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{toy_config['output_dir']}/mlflow.db")
    logged = client.get_run(run.info["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and "test_mae" in logged.data.metrics
    with pytest.raises(
        tunesmith.ConfigError, match="train.metric: unknown metric 'macro_f1' for task toy_task:WordCountTask"
    ):
        tunesmith.load_config({**toy_config, "train": {"metric": "macro_f1"}})

    # Early stopping: weights that cannot move (lr 1e-12) never improve, so the run stops after `patience` evaluations.
    still = tunesmith.finetune(toy_config, ["train.lr=1e-12", "train.patience=1", "train.eval_every=2"])
    assert still.metrics["stopped_early"] and still.metrics["steps"] == 4

    # Interrupted at step 6 (a real SIGINT), resumed: the same history and test metrics as the run above.
    toy_config["train"]["patience"] = None
    whole = tunesmith.finetune(toy_config, ["train.epochs=2"])
    monkeypatch.setenv("TUNESMITH_FAULT_AT_STEP", "6:INT")
    with pytest.raises(Interrupted):
        tunesmith.finetune(toy_config, ["train.epochs=2"])
    monkeypatch.delenv("TUNESMITH_FAULT_AT_STEP")
    (stopped,) = [r for r in tunesmith.list_runs(toy_config["output_dir"]) if r.status == "interrupted"]
    resumed = tunesmith.finetune(resume=stopped.path)
    assert resumed.metrics["test"] == pytest.approx(whole.metrics["test"], rel=1e-6)
    losses = [[h["train_loss"] for h in _history(r) if "train_loss" in h] for r in (resumed, whole)]
    assert len(losses[0]) >= 8 and losses[0] == pytest.approx(losses[1], rel=1e-6)
