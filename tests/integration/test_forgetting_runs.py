"""Forgetting through whole runs on tiny models: sequential fine-tuning with a retained head, every remedy on,
resume, two processes, the compare report and the one-line mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import run_cli, tiny_config, toy_rows, write_csv, write_yaml
from gen_fixtures import build_tiny_lm, toy_pairs, write_jsonl
from sklearn.metrics import f1_score
from test_train import _final_weights, assert_same_weights

import tunesmith
from tunesmith.errors import ConfigError, DataError

REMEDIES = [
    {"kind": "l2sp", "weight": 0.05},
    {"kind": "ewc", "weight": 0.05, "batches": 4},
    {"kind": "distill", "weight": 0.5},
    {"kind": "replay", "fraction": 0.2},
]


@pytest.fixture(scope="module")
def task_a(tmp_path_factory, tiny_model):
    """Task A (the toy sentiment task) trained once; task B (long vs short texts) starts from its model."""
    root = tmp_path_factory.mktemp("seq")
    a = tunesmith.finetune(tiny_config(root / "a", tiny_model, write_csv(root / "a.csv", toy_rows(240, 0))))
    rows = [{"text": r["text"], "label": "long" if len(r["text"].split()) > 7 else "short"} for r in toy_rows(240, 1)]
    return {
        "run": a,
        "b_csv": write_csv(root / "b.csv", rows),
        "ref_csv": write_csv(root / "ref.csv", [{"text": r["text"]} for r in toy_rows(60, 5)]),
    }


def _task_b(tmp_path, task_a, regularize=(), **sections):
    a = task_a["run"]
    cfg = tiny_config(tmp_path, a.path / "model", task_a["b_csv"], train={"epochs": 3}, **sections)
    cfg["eval"]["reference"] = [
        {"name": "general", "path": str(task_a["ref_csv"])},
        {"name": "taskA", "run": str(a.path)},
    ]
    cfg["regularize"] = list(regularize)
    return cfg


def test_sequential_run_reports_retention_with_the_retained_head_and_a_strong_anchor_keeps_it(tmp_path, task_a):
    a = task_a["run"]
    plain = tunesmith.finetune(_task_b(tmp_path / "plain", task_a))
    f = plain.metrics["forgetting"]
    # before training, task A's head on this run's encoder IS task A's model: its own predictions, on the measured
    # half of its test rows (the even ones; the odd ones are what ewc and replay read)
    preds = pd.read_csv(a.path / "test_predictions.csv", keep_default_na=False).iloc[0::2]
    own = f1_score(preds["label"], preds["predicted"], average="macro", labels=a.label_names, zero_division=0)
    assert f["taskA"]["before"] == pytest.approx(own, abs=1e-6)
    assert f["taskA"]["rows"] == len(preds) == (a.metrics["test"]["n"] + 1) // 2
    assert f["taskA"]["ci"][0] <= f["taskA"]["change"] <= f["taskA"]["ci"][1]
    assert 0 < f["general"]["cka"] < 0.999 and f["general"]["rows"] == 30
    assert "taskA macro-F1" in f["summary"] and "representation CKA" in f["summary"]
    report = (plain.path / "report.md").read_text()
    assert "## Forgetting (reference sets)" in report and "its head retained" in report
    assert "Forgetting" in (plain.path / "MODEL_CARD.md").read_text()
    # an L2-SP anchor strong enough to hold the encoder in place keeps the representation and task A
    held = tunesmith.finetune(_task_b(tmp_path / "held", task_a, [{"kind": "l2sp", "weight": 100.0}]))
    g = held.metrics["forgetting"]
    assert g["general"]["cka"] > f["general"]["cka"] and g["general"]["cka"] > 0.99
    assert abs(g["taskA"]["change"]) < abs(f["taskA"]["change"]) or f["taskA"]["change"] == 0
    history = [json.loads(x) for x in (held.path / "history.jsonl").read_text().splitlines()]
    assert any("train_l2sp" in h for h in history)
    # compare: forgetting deltas with paired intervals on the same reference rows
    result = tunesmith.compare(plain.path, held.path, out=tmp_path / "cmp")
    deltas = result["comparisons"][0]["forgetting"]
    assert set(deltas) == {"general", "taskA"}
    assert deltas["general"]["low"] <= deltas["general"]["delta"] <= deltas["general"]["high"]
    assert deltas["general"]["delta"] > 0 and "p" in deltas["taskA"]
    assert "Forgetting (reference sets)" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.parametrize("signal_name", ["INT"])
def test_a_run_with_every_remedy_resumes_to_the_identical_result(tmp_path, task_a, signal_name):
    cfg = _task_b(tmp_path, task_a, REMEDIES)
    cfg["eval"]["reference_every_eval"] = True
    cfg["train"].update(eval_every=8, epochs=2)
    config = write_yaml(tmp_path / "c.yaml", cfg)
    straight = run_cli("train", str(config))
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = run_cli("train", str(config), env={"TUNESMITH_FAULT_AT_STEP": f"13:{signal_name}"})
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    run_dir = [r for r in runs if json.loads((r / "run.json").read_text())["status"] != "complete"][0]
    assert (run_dir / "forgetting" / "fisher.safetensors").is_file()
    resumed = run_cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Fisher information" not in resumed.stdout  # read from the run folder, not estimated again
    a, b = tunesmith.load_run([r for r in runs if r != run_dir][0]), tunesmith.load_run(run_dir)
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-5)
    assert a.metrics["forgetting"]["taskA"]["after"] == pytest.approx(b.metrics["forgetting"]["taskA"]["after"])
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-6)
    hist = lambda r: [
        {k: v for k, v in h.items() if k.startswith(("train_", "val_ref_"))}
        for h in map(json.loads, (r.path / "history.jsonl").read_text().splitlines())
    ]
    ha, hb = hist(a), hist(b)
    assert [sorted(h) for h in ha] == [sorted(h) for h in hb]
    assert [h[k] for h in ha for k in sorted(h)] == pytest.approx([h[k] for h in hb for k in sorted(h)], rel=1e-5)
    assert any("train_replay" in h and "train_ewc" in h and "train_distill" in h for h in ha)
    assert any("val_ref_general_cka" in h for h in ha)


def test_mistakes_stop_before_the_run_folder_opens(tmp_path, task_a, tiny_model):
    cfg = _task_b(tmp_path, task_a, [{"kind": "ewc", "weight": 1.0, "reference": "general"}])
    with pytest.raises(ConfigError, match="has no targets to train or score on"):
        tunesmith.finetune(cfg)
    cfg = _task_b(tmp_path, task_a, [{"kind": "l2sp"}], strategy={"name": "linear-probe"})
    with pytest.raises(ConfigError, match="nothing to regularise"):
        tunesmith.finetune(cfg)
    cfg = _task_b(tmp_path, task_a)
    cfg["eval"]["reference"][1]["run"] = str(tmp_path / "nope")
    config = write_yaml(tmp_path / "bad.yaml", cfg)
    out = run_cli("train", str(config))
    assert out.returncode == 2 and "not a tunesmith run folder" in out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "runs").glob("*/run.json"))  # no run folder (the audit cache may exist)


def toy_chats(n: int, seed: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(n, seed)
    ]


def _lm_config(tmp_path, model, data, ref, **train):
    return {
        "task": "causal-lm",
        "output_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "max_length": 64},
        "model": {"name": str(model)},
        "strategy": {"name": "full"},
        "tracking": {"backend": "none"},
        "train": {"epochs": 2, "lr": 3e-3, "precision": "fp32", "patience": None, "log_every": 1, **train},
        "generate": {"samples": 2, "max_new_tokens": 4},
        "eval": {"reference": [{"name": "chat", "path": str(ref), "generate": 3}]},
    }


def test_causal_lm_reference_perplexity_and_distillation_on_lora(tmp_path):
    model = build_tiny_lm(tmp_path / "llama", "llama")
    data, ref = write_jsonl(tmp_path / "t.jsonl", toy_chats(64, 0)), write_jsonl(tmp_path / "r.jsonl", toy_chats(20, 7))
    cfg = _lm_config(tmp_path, model, data, ref, batch_size=8)
    cfg["strategy"] = {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    cfg["regularize"] = [{"kind": "distill", "weight": 1.0, "temperature": 2.0}]
    run = tunesmith.finetune(cfg)
    f = run.metrics["forgetting"]["chat"]
    assert f["kind"] == "perplexity" and f["rows"] == 10 and f["before"] > 1  # the measured half of 20
    assert f["change_pct"] == pytest.approx(100 * (f["after"] / f["before"] - 1))
    assert f["generation"]["after"]["n"] == 3 and "contains" in f["generation"]["before"]
    history = [json.loads(x) for x in (run.path / "history.jsonl").read_text().splitlines()]
    distill = [h["train_distill"] for h in history if "train_distill" in h]
    assert distill[0] < 1e-3 < max(distill)  # adapters start as the identity: the student starts at the teacher
    assert "chat perplexity" in run.metrics["forgetting"]["summary"]
    assert "## Forgetting (reference sets)" in (run.path / "report.md").read_text()
    cfg["eval"]["reference"] = [{"name": "a", "run": str(run.path)}]
    with pytest.raises(DataError, match="`run:` references are for text-classification"):
        tunesmith.finetune(cfg)


@pytest.mark.slow
def test_remedies_under_two_processes_match_one(tmp_path):
    """l2sp, ewc, distillation and replay give 2 x 8 the weights of 1 x 16 (replayed rows split between processes)."""
    model = build_tiny_lm(tmp_path / "llama", "llama")
    data, ref = write_jsonl(tmp_path / "t.jsonl", toy_chats(64, 0)), write_jsonl(tmp_path / "r.jsonl", toy_chats(24, 7))
    base = _lm_config(tmp_path, model, data, ref)
    base["eval"]["reference"][0]["generate"] = 0
    base["generate"]["samples"] = 0
    base["regularize"] = [
        {"kind": "l2sp", "weight": 0.05},
        {"kind": "ewc", "weight": 0.05, "batches": 3},
        {"kind": "distill", "weight": 0.5},
        {"kind": "replay", "fraction": 0.25},
    ]
    one = write_yaml(tmp_path / "one.yaml", {**base, "name": "one", "train": {**base["train"], "batch_size": 16}})
    two = write_yaml(tmp_path / "two.yaml", {**base, "name": "two", "train": {**base["train"], "batch_size": 8}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(one)], capture_output=True, text=True, env=env, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537"]
    double = subprocess.run(
        [*torchrun, "-m", "tunesmith", "train", str(two)], capture_output=True, text=True, env=env, timeout=600
    )
    assert double.returncode == 0, double.stderr[-3000:]
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    a, b = runs["one"], runs["two"]
    assert b.info["processes"] == 2 and a.metrics["steps"] == b.metrics["steps"]
    assert a.metrics["forgetting"]["chat"]["after"] == pytest.approx(b.metrics["forgetting"]["chat"]["after"], rel=1e-3)
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-4)
    terms = lambda r: [
        h[k]
        for h in map(json.loads, (r.path / "history.jsonl").read_text().splitlines())
        if "train_loss" in h
        for k in ("train_l2sp", "train_ewc", "train_distill", "train_replay")
    ]
    assert terms(a) == pytest.approx(terms(b), rel=1e-3, abs=1e-7)
