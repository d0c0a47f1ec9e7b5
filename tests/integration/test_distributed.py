"""Two real processes (torchrun, gloo on CPU; one node or two) give the same result as one with the same global batch."""

import os
import subprocess
import sys

import pytest
from conftest import tiny_config, write_yaml
from test_train import _final_weights, assert_same_weights

import tunesmith


@pytest.mark.slow
def test_two_nodes_match_one_process(tmp_path, tiny_model, toy_csv):
    """Two torchrun "nodes" of one process each rendezvous on 127.0.0.1 (c10d): the multi-node launch of the README."""
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, train={"epochs": 2, "eval_every": 6, "batch_size": 16})
    one = write_yaml(tmp_path / "one.yaml", {**cfg, "name": "one"})
    two = write_yaml(tmp_path / "two.yaml", {**cfg, "name": "two", "train": {**cfg["train"], "batch_size": 8}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(one)], capture_output=True, text=True, env=env, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    node += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29533", "--rdzv_id", "two-nodes"]
    node += ["--rdzv_conf", "join_timeout=120", "-m", "tunesmith", "train", str(two)]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    outs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    assert any("processes 2" in out for out, _ in outs)
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    assert set(runs) == {"one", "two"}  # global rank 0 alone wrote one run folder
    a, b = runs["one"], runs["two"]
    assert b.info["processes"] == 2 and a.info["processes"] == 1
    assert a.metrics["steps"] == b.metrics["steps"]
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-3)
    assert a.metrics["test"]["accuracy"] == pytest.approx(b.metrics["test"]["accuracy"])
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-4)


@pytest.mark.slow
def test_causal_lm_two_processes_match_one(tmp_path):
    """Token-weighted loss across processes: 2 x 8 gives the weights of 1 x 16 (uneven token counts per rank)."""
    import json

    from gen_fixtures import build_tiny_lm, toy_pairs, write_jsonl

    model = build_tiny_lm(tmp_path / "llama", "llama")
    data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": r["prompt"], "completion": " " + r["completion"] * (1 + i % 3)}
            for i, r in enumerate(toy_pairs(96))
        ],
    )
    base = {
        "task": "causal-lm",
        "output_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "max_length": 96},
        "model": {"name": str(model)},
        "strategy": {"name": "full"},
        "tracking": {"backend": "none"},
        "train": {"epochs": 2, "lr": 3e-3, "precision": "fp32", "patience": None},
        "generate": {"samples": 4, "max_new_tokens": 4},
    }
    one = write_yaml(tmp_path / "one.yaml", {**base, "name": "one", "train": {**base["train"], "batch_size": 16}})
    two = write_yaml(tmp_path / "two.yaml", {**base, "name": "two", "train": {**base["train"], "batch_size": 8}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(one)], capture_output=True, text=True, env=env, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29534",
            "-m",
            "tunesmith",
            "train",
            str(two),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    a, b = runs["one"], runs["two"]
    assert b.info["processes"] == 2 and a.metrics["steps"] == b.metrics["steps"]
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-4)
    hist = lambda r: [
        h["train_loss"]
        for h in map(json.loads, (r.path / "history.jsonl").read_text().splitlines())
        if "train_loss" in h
    ]
    assert hist(a) == pytest.approx(hist(b), rel=1e-4)
