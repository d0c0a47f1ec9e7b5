"""`tunesmith tune` on tiny models: a whole study (conditional space, test split untouched until the final runs,
best.yaml re-runs, MLflow parent + children), pruning of a planted bad trial, two worker processes on one SQLite
study, resume after a kill, and the user's mistakes as one line before any trial."""

from __future__ import annotations

import math
import signal

import optuna
import pandas as pd
import pytest
import yaml
from conftest import run_cli, tiny_config, write_yaml

from tunesmith.data.splits import load_splits
from tunesmith.runs.record import read_info, read_metrics

FAST = {
    "eval": {
        "baseline": False,
        "robustness": False,
        "efficiency": False,
        "calibration": False,
        "bootstrap_resamples": 50,
    },
    "audit": {"label_errors": False},
}


def study_config(tmp_path, tiny_model, toy_csv, space: dict, trials: int, **sections) -> dict:
    cfg = tiny_config(
        tmp_path, tiny_model, toy_csv, train={"epochs": 2, "eval_every": 8, "lr": 3e-3}, **FAST, **sections
    )
    cfg["tune"] = {"space": space, "trials": trials, "startup_trials": 2, **cfg.get("tune", {})}
    return cfg


def lr_study(tmp_path, tiny_model, toy_csv, trials: int) -> dict:
    """A learning-rate-only study without pruning or final runs: every trial runs to its end."""
    lr = {"train.lr": {"float": [1e-3, 1e-2], "log": True}}
    return study_config(tmp_path, tiny_model, toy_csv, lr, trials, tune={"final": "none", "pruner": "none"})


def frame(summary) -> pd.DataFrame:
    return pd.read_csv(f"{summary['path']}/trials.csv")


def test_a_study_searches_a_conditional_space_on_validation_and_tests_once(tmp_path, tiny_model, toy_csv, monkeypatch):
    from mlflow import MlflowClient

    from tunesmith.config.loader import load_config
    from tunesmith.engine.pipeline import finetune
    from tunesmith.tasks.classification.task import ClassificationTask
    from tunesmith.tools.tune import tune

    space = {
        "train.lr": {"float": [1e-3, 1e-2], "log": True},
        "strategy.name": {"categorical": ["full", "lora"]},
        "strategy.r": {"int": [2, 8], "when": {"strategy.name": "lora"}},
    }
    cfg = study_config(
        tmp_path, tiny_model, toy_csv, space, 4, tracking={"backend": "mlflow"}, tune={"sampler": "random"}
    )
    cfg["strategy"] = {"name": "lora", "r": 4, "alpha": 8}
    true_test = load_splits(load_config(cfg).data, 42).test.texts
    tested = []  # a spy on every test evaluation: was it the real test split?
    real = ClassificationTask.test

    def spy(self, model, trained, data, *args):
        tested.append(data.splits.test.texts == true_test)
        return real(self, model, trained, data, *args)

    monkeypatch.setattr(ClassificationTask, "test", spy)
    s = tune(cfg)

    df = frame(s)
    assert len(df) == 4 and set(df["state"]) <= {"complete", "pruned"}
    full, lora = df[df["param:strategy.name"] == "full"], df[df["param:strategy.name"] == "lora"]
    assert full["param:strategy.r"].isna().all()  # conditional: sampled only when strategy.name is lora
    assert lora["param:strategy.r"].between(2, 8).all()
    assert len(full) and len(lora)
    assert df.loc[0, "start"] and df.loc[0, "param:strategy.name"] == "lora"  # trial 0 is the starting config
    assert df.loc[0, "param:strategy.r"] == 4
    assert math.isclose(df.loc[0, "param:train.lr"], 3e-3)
    for run in df["run"]:
        assert (
            read_info(run)["data"]["splits"]["test"]["rows"] == read_info(run)["data"]["splits"]["validation"]["rows"]
        )

    # The test split is evaluated only by the final runs (start, and best unless the start won), after every trial.
    final = s["final"]["runs"]
    complete = int((df["state"] == "complete").sum())  # a pruned trial stops before its held-out evaluation
    assert tested == [False] * complete + [True] * len(final)
    assert final["start"] and (s["final"]["best_is_start"] or "comparison" in s["final"])
    if "comparison" in s["final"]:  # the paired test of best vs start on the same test rows
        c = s["final"]["comparison"]
        assert c["ci"][0] <= c["delta"] <= c["ci"][1] and 0 <= c["p"] <= 1

    # best.yaml is a runnable config: retrained, it reproduces the best trial's validation score.
    best_yaml = tmp_path / "runs" / s["study"] / "best.yaml"
    best = yaml.safe_load(best_yaml.read_text())
    assert "tune" not in best and best["strategy"]["name"] == s["best"]["params"]["strategy.name"]
    run = finetune(str(best_yaml), ["tracking.backend=none"])
    assert run.metrics["validation_best"]["macro_f1"] == pytest.approx(s["best"]["validation"], abs=1e-6)

    folder = tmp_path / "runs" / s["study"]
    for name in ("study.md", "study.html", "trials.csv", "history.png", "tune.json"):
        assert (folder / name).is_file(), name
    md = (folder / "study.md").read_text()
    assert "validation" in md and "Gain on test" in md and "![Optimisation history" in md
    kept = [r for r in df["run"] if (pd.notna(r) and (tmp_path / r / "model").is_dir())]
    assert len(kept) == 1  # keep_models: best

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunesmith").experiment_id])
    parent = next(r for r in runs if r.info.run_name == s["study"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == (df["state"] == "complete").sum() + len(final) and parent.info.status == "FINISHED"


def test_the_pruner_stops_a_planted_bad_trial(tmp_path, tiny_model, toy_csv):
    from tunesmith.config.loader import load_config
    from tunesmith.tools.tune import create_study, tune
    from tunesmith.tools.tune_trial import STUDY_FILE, open_study
    from tunesmith.utils import read_json

    cfg = study_config(
        tmp_path, tiny_model, toy_csv, {"train.lr": {"float": [1e-7, 1e-2], "log": True}}, 3, tune={"final": "none"}
    )
    cfg["train"]["epochs"] = 3
    # A study seeded by hand: two good trials, then a learning rate that learns nothing.
    root = create_study(cfg, study="planted")
    study = open_study(read_json(root / STUDY_FILE), load_config(root / "config.yaml"))
    for lr in (3e-3, 4e-3, 1e-7):
        study.enqueue_trial({"train.lr": lr})
    s = tune(resume=root)
    df = frame(s)
    assert list(df["state"]) == ["complete", "complete", "pruned"]
    bad = df.iloc[2]
    assert bad["validations"] < df.iloc[0]["validations"]
    assert read_info(bad["run"])["status"] == "pruned" and not (tmp_path / bad["run"] / "checkpoints").exists()
    assert (root / "best.yaml").is_file() and not (root / "final").exists()


def test_two_workers_share_one_sqlite_study(tmp_path, tiny_model, toy_csv):
    cfg = lr_study(tmp_path, tiny_model, toy_csv, 4)
    cfg["train"]["epochs"] = 1
    r = run_cli("tune", str(write_yaml(tmp_path / "c.yaml", cfg)), "--workers", "2", "--study", "two")
    assert r.returncode == 0, r.stderr[-3000:]
    # The terminal gets one line per trial with the study's progress; each worker's runs write to its own log.
    done = [line for line in r.stdout.splitlines() + r.stderr.splitlines() if ": validation macro_f1" in line]
    assert len(done) == 4 and "4/4 trials done" in "".join(done) and "train:" not in r.stderr
    logs = sorted((tmp_path / "runs" / "two" / "workers").glob("worker-*.log"))
    assert len(logs) == 2 and all("val macro_f1" in log.read_text() for log in logs)
    df = pd.read_csv(tmp_path / "runs" / "two" / "trials.csv")
    assert sorted(df["trial"]) == [0, 1, 2, 3] and set(df["state"]) == {"complete"}  # none lost, none extra
    assert df["run"].nunique() == 4 and df["param:train.lr"].nunique() == 4
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'runs' / 'two' / 'study.db'}")
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}  # both workers took trials


def test_resume_after_a_kill_retries_the_trial_from_its_checkpoint(tmp_path, tiny_model, toy_csv):
    cfg = lr_study(tmp_path, tiny_model, toy_csv, 3)
    config = write_yaml(tmp_path / "c.yaml", cfg)
    r = run_cli("tune", str(config), "--study", "k", env={"TUNESMITH_FAULT_AT_STEP": "20:KILL"})
    assert r.returncode == -signal.SIGKILL
    root = tmp_path / "runs" / "k"
    r = run_cli("tune", "--status", str(root))
    assert r.returncode == 0 and "1 of 3 trials counted (running 1)" in r.stdout and not r.stderr, r.stdout + r.stderr
    r = run_cli("tune", "--resume", str(root))
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(root / "trials.csv")
    assert list(df["trial"]) == [0, 1, 2, 3] and list(df["state"]) == ["fail", "complete", "complete", "complete"]
    assert df.loc[1, "retry_of"] == 0 and df.loc[1, "param:train.lr"] == df.loc[0, "param:train.lr"]
    assert df.loc[1, "run"] == df.loc[0, "run"]  # the same run folder, resumed from its checkpoint
    assert read_info(df.loc[1, "run"])["status"] == "complete"
    history = read_metrics(df.loc[1, "run"])
    assert history["steps"] > 20


def test_ctrl_c_in_two_workers_checkpoints_both_trials_and_resume_finishes_the_study(tmp_path, tiny_model, toy_csv):
    cfg = lr_study(tmp_path, tiny_model, toy_csv, 4)
    config = write_yaml(tmp_path / "c.yaml", cfg)
    # Each worker's first trial gets SIGINT at step 20 (as Ctrl-C would): it checkpoints, the worker exits 130.
    r = run_cli("tune", str(config), "--workers", "2", "--study", "c", env={"TUNESMITH_FAULT_AT_STEP": "20:INT"})
    root = tmp_path / "runs" / "c"
    assert r.returncode == 130, r.stderr[-3000:]
    assert f"tunesmith tune --resume {root}" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("tune", "--resume", str(root), "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(root / "trials.csv")
    interrupted = df[df["state"] == "fail"]
    assert len(interrupted) == 2 and (df["state"] == "complete").sum() == 4  # 4 counted: the retries replace them
    retries = df[df["retry_of"].notna()]
    assert sorted(retries["retry_of"].astype(int)) == sorted(interrupted["trial"])
    for _, retry in retries.iterrows():  # resumed in the interrupted trial's own run folder, from its checkpoint
        assert retry["run"] == df.loc[df["trial"] == int(retry["retry_of"]), "run"].item()
        assert read_info(retry["run"])["status"] == "complete"


@pytest.mark.parametrize(
    "tune_section, says",
    [
        ({"space": {"train.lrr": {"float": [1e-4, 1e-3]}}}, "train.lrr"),
        ({"space": {"train.lr": {"float": [1e-3, 1e-4]}}}, "is empty"),
        ({"space": {"strategy.name": {"categorical": ["full"]}}}, "at least two choices"),
        ({"space": {"seed": {"int": [1, 3]}}}, "same splits"),
    ],
)
def test_mistakes_are_one_line_before_any_trial(tmp_path, tiny_model, toy_csv, tune_section, says):
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, **FAST)
    cfg["tune"] = tune_section
    r = run_cli("tune", str(write_yaml(tmp_path / "c.yaml", cfg)))
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_metric_the_task_does_not_have_and_a_missing_model_fail_before_any_trial(tmp_path, tiny_model, toy_csv):
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, **FAST)
    cfg["train"]["metric"] = "bleu"
    r = run_cli("tune", str(write_yaml(tmp_path / "c.yaml", cfg)))
    assert r.returncode == 2 and "bleu" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cfg = tiny_config(tmp_path, tmp_path / "no-such-model", toy_csv, **FAST)
    r = run_cli("tune", str(write_yaml(tmp_path / "c.yaml", cfg)))
    assert r.returncode == 2 and "no-such-model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_grid_covers_its_points_and_a_second_objective_gives_a_pareto_front(tmp_path, tiny_model, toy_csv):
    from tunesmith.tools.tune import tune

    space = {"train.lr": {"categorical": [2e-3, 4e-3, 8e-3]}}
    cfg = study_config(
        tmp_path, tiny_model, toy_csv, space, 5, tune={"sampler": "grid", "second_objective": "peak_memory"}
    )
    cfg["train"]["epochs"] = 1
    s = tune(cfg, study="grid")
    df = frame(s)
    assert sorted(df["param:train.lr"]) == [2e-3, 4e-3, 8e-3]  # every grid point, once (5 trials capped at 3)
    assert set(df["state"]) == {"complete"}  # a multi-objective study is not pruned
    assert (df["peak_memory_mb"] > 0).all() and df["peak_memory"].notna().all()
    root = tmp_path / "runs" / "grid"
    assert (root / "pareto.png").is_file() and "Pareto" in (root / "study.md").read_text()
    assert s["best"]["validation"] == df["macro_f1"].max()  # the front's best-metric trial is the final config
