"""Multi-task runs on a tiny model: each task tested as its own classifier, heads saved and reloaded with the same
predictions, `compare --task` against the single-task run, predict/serve by task, exact resume, 2 processes = 1."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pandas as pd
import pytest
from conftest import run_cli, tiny_config, toy_rows, write_csv, write_yaml
from safetensors import safe_open
from test_serving import call
from test_train import _final_weights, assert_same_weights

import tunesmith
from tunesmith.cli.main import main
from tunesmith.serve import ServeOptions, Server

PLACES, THINGS = ["river", "cloud", "stone", "green"], ["table", "chair", "paper", "house"]


def topic_rows(n: int, seed: int = 1) -> list[dict]:
    """A second task on the same words: is a nature word or a thing named?"""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = ["nature", "object"][i % 2]
        words = rng.choices(["the", "a", "is", "it", "was", "good", "bad"], k=rng.randint(2, 6))
        words.insert(rng.randrange(len(words) + 1), rng.choice(PLACES if topic == "nature" else THINGS))
        rows.append({"text": " ".join(words), "topic": topic})
    return rows


def multitask_config(tmp_path, model, **train) -> dict:
    a = write_csv(tmp_path / "sentiment.csv", toy_rows(150))
    b = write_csv(tmp_path / "topic.csv", topic_rows(300))
    cfg = tiny_config(tmp_path, model, a, train={"epochs": 3, "eval_every": 10, **train})
    cfg.update(
        task="multi-task",
        name="mt",
        data={"max_length": 32},
        tasks={
            "sentiment": {"data": {"path": str(a)}},
            "topic": {"data": {"path": str(b), "label_column": "topic"}, "weight": 0.5, "auxiliary": True},
        },
        multitask={"sampling": "temperature", "loss_weights": "uncertainty"},
    )
    return cfg


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (exit code, stdout, stderr): the same parsing and error handling, no start-up cost."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_multitask_run_heads_compare_predict_and_serve(tmp_path, tiny_model, capsys):
    cfg = multitask_config(tmp_path, tiny_model)
    cfg["strategy"] = {"name": "lora", "r": 4}  # LoRA on the backbone, the heads trained in full
    cfg["tracking"] = {"backend": "mlflow"}  # a real store: runs/mlflow.db
    run = tunesmith.finetune(cfg)
    m = run.metrics
    from mlflow import MlflowClient

    tracked = MlflowClient(run.info["mlflow_uri"]).get_run(run.info["mlflow_run_id"]).data.metrics
    assert tracked["topic.test_macro_f1"] == pytest.approx(m["tasks"]["topic"]["test"]["macro_f1"])
    assert "sentiment.test_macro_f1_ci_low" in tracked and "val_topic_macro_f1" in tracked
    assert run.status == "complete" and set(m["tasks"]) == {"sentiment", "topic"}
    assert run.label_names == ["sentiment:neg", "sentiment:neu", "sentiment:pos", "topic:nature", "topic:object"]
    # selection follows the primary task only: the best validation figure is the sentiment head's
    assert m["validation_best"]["macro_f1"] == pytest.approx(m["validation_best"]["sentiment_macro_f1"])
    assert set(m["uncertainty"]) == {"sentiment", "topic"}
    shares = {n: r["share"] for n, r in m["mix"].items()}
    assert shares == pytest.approx({n: r["configured"] for n, r in m["mix"].items()}, abs=0.1)
    assert m["mix"]["topic"]["configured"] == pytest.approx(240**0.5 / (240**0.5 + 120**0.5), abs=0.01)
    for name, labels in (("sentiment", ["neg", "neu", "pos"]), ("topic", ["nature", "object"])):
        sub = run.path / "tasks" / name
        metrics = json.loads((sub / "metrics.json").read_text())
        assert "test_ci" in metrics and metrics["test"]["n"] == len(pd.read_csv(sub / "test_predictions.csv"))
        assert (sub / "report.md").is_file() and (sub / "MODEL_CARD.md").is_file()
        # the saved heads reload with the same predictions the run tested with
        preds = pd.read_csv(sub / "test_predictions.csv")
        probs = tunesmith.load_run(run.path).predict_probs(preds["text"].tolist(), task=name)
        assert probs == pytest.approx(preds[[f"p_{x}" for x in labels]].to_numpy(), abs=1e-4)
    for f in (run.path / "model").glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            assert not [k for k in st.keys() if "log_vars" in k]  # training-only weights are not saved
    assert "| [topic](tasks/topic/report.md) | auxiliary |" in (run.path / "report.md").read_text()

    # did multi-task help? the task trained alone on the same split (as many examples), compared on the same rows
    code, said, err = cli(capsys, "compare-tasks", str(run.path))
    assert code == 0, err[-2000:]
    summary = json.loads((run.path / "alone" / "summary.json").read_text())
    assert [r["task"] for r in summary["tasks"]] == ["sentiment"]  # the primary task
    row = summary["tasks"][0]
    single = tunesmith.load_run(row["alone_run"])
    assert single.info["mlflow_uri"] == run.info["mlflow_uri"]  # tracked in the same store
    assert single.metrics["steps"] * 16 >= m["mix"]["sentiment"]["examples"] > (single.metrics["steps"] - 1) * 16
    assert row["multi"]["value"] == pytest.approx(m["tasks"]["sentiment"]["test"]["macro_f1"])
    assert row["delta"] == pytest.approx(row["multi"]["value"] - row["alone"]["value"])
    assert "| [sentiment](compare-sentiment/compare.md) |" in said
    code, _, _ = cli(capsys, "compare-tasks", str(run.path))  # a second call reuses the finished run
    assert code == 0 and len(list((run.path / "alone").glob("mt-sentiment-alone-*"))) == 1
    out = tmp_path / "cmp"
    code, _, err = cli(capsys, "compare", str(single.path), str(run.path), "--task", "sentiment", "--out", str(out))
    assert code == 0, err[-2000:]
    assert json.loads((out / "compare.json").read_text())["paired"] is True
    code, _, err = cli(capsys, "compare", str(single.path), str(run.path))
    assert code == 2 and "--task (sentiment, topic)" in err and "Traceback" not in err

    code, said, err = cli(
        capsys, "predict", str(run.path), "--task", "topic", "--text", "the river", "--text", "a chair"
    )
    assert code == 0, err[-2000:]
    assert {line.split("\t")[0] for line in said.strip().splitlines()} <= {"nature", "object"}
    code, _, err = cli(capsys, "predict", str(run.path), "--task", "colour", "--text", "x")
    assert code == 2 and "no task 'colour'" in err

    with Server([f"M={run.path}", f"S={single.path}"], ServeOptions(port=0), say=lambda s: None) as srv:
        status, _, body = call(srv.url, "/v1/classify", {"model": "M", "texts": ["the river", "good"], "task": "topic"})
        assert status == 200 and {r["label"] for r in body["results"]} <= {"nature", "object"}
        status, _, body = call(srv.url, "/v1/classify?task=sentiment", {"model": "M", "text": "good"})
        assert status == 200 and set(body["results"][0]["probs"]) == {"neg", "neu", "pos"}
        status, _, body = call(srv.url, "/v1/classify", {"model": "M", "text": "good"})
        assert status == 200 and set(body["results"][0]["probs"]) == {"neg", "neu", "pos"}  # the primary task
        status, _, body = call(srv.url, "/v1/classify", {"model": "M", "text": "x", "task": "colour"})
        assert status == 422 and "its tasks: sentiment, topic" in body["error"]["message"]
        status, _, body = call(srv.url, "/v1/classify", {"model": "S", "text": "x", "task": "topic"})
        assert status == 422


def test_multitask_resumes_exactly(tmp_path, tiny_model):
    """Killed mid-way and resumed (the sampler's position, the learned task weights): the same final weights."""
    cfg = multitask_config(tmp_path, tiny_model)
    cfg["multitask"]["batches"] = "micro-batch"
    cfg["train"]["grad_accum"] = 2
    cfg["train"]["batch_size"] = 8
    config = write_yaml(tmp_path / "c.yaml", cfg)
    straight = run_cli("train", str(config))
    assert straight.returncode == 0, straight.stderr[-2000:]
    stopped = run_cli("train", str(config), env={"TUNESMITH_FAULT_AT_STEP": "14:KILL"})
    assert stopped.returncode == -9
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    run_dir = [r for r in runs if json.loads((r / "run.json").read_text())["status"] != "complete"][0]
    resumed = run_cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 10" in resumed.stdout + resumed.stderr
    a = tunesmith.load_run([r for r in runs if r != run_dir][0])
    b = tunesmith.load_run(run_dir)
    assert a.metrics["uncertainty"] == b.metrics["uncertainty"]
    assert a.metrics["mix"] == b.metrics["mix"]
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-6)


@pytest.mark.slow
def test_multitask_two_processes_match_one(tmp_path, tiny_model):
    cfg = multitask_config(tmp_path, tiny_model, epochs=2, batch_size=16)
    cfg["multitask"]["loss_weights"] = "fixed"
    one = write_yaml(tmp_path / "one.yaml", {**cfg, "name": "one"})
    two = write_yaml(tmp_path / "two.yaml", {**cfg, "name": "two", "train": {**cfg["train"], "batch_size": 8}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = run_cli("train", str(one), env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    double = subprocess.run(
        [*launch, "-m", "tunesmith", "train", str(two)], capture_output=True, text=True, env=env, timeout=600
    )
    assert double.returncode == 0, double.stderr[-3000:]
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    a, b = runs["one"], runs["two"]
    assert b.info["processes"] == 2 and a.metrics["steps"] == b.metrics["steps"]
    assert a.metrics["mix"] == b.metrics["mix"]
    for name in ("sentiment", "topic"):
        assert a.metrics["tasks"][name]["test"]["loss"] == pytest.approx(
            b.metrics["tasks"][name]["test"]["loss"], rel=1e-3
        )
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-4)


@pytest.mark.parametrize("strategy", ["linear-probe", "ia3"])
def test_multitask_with_other_strategies(tmp_path, tiny_model, strategy):
    """Cached features (the head trains alone) and another adapter: each task's head tests and reloads the same."""
    cfg = multitask_config(tmp_path, tiny_model, epochs=1, class_weights="balanced")  # each task's own weights
    cfg.update(strategy={"name": strategy}, multitask={"sampling": "proportional"})
    run = tunesmith.finetune(cfg)
    assert run.status == "complete"
    for name, labels in (("sentiment", ["neg", "neu", "pos"]), ("topic", ["nature", "object"])):
        preds = pd.read_csv(run.path / "tasks" / name / "test_predictions.csv")
        probs = tunesmith.load_run(run.path).predict_probs(preds["text"].tolist(), task=name)
        assert probs == pytest.approx(preds[[f"p_{x}" for x in labels]].to_numpy(), abs=1e-4)
