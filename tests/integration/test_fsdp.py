"""FSDP2 (`train.distributed: fsdp`) in two real processes (torchrun, gloo on CPU): the result matches one process
with the same global batch, the checkpoint is DCP shards, a killed run resumes exactly, also on another number of processes (refusals: tests/unit/test_sharding.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cli, tiny_config, write_yaml
from test_train import _final_weights, assert_same_weights

import tunesmith

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(cfg, port: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return subprocess.run(
        [*launch, "-m", "tunesmith", "train", *args, *([str(cfg)] if cfg else [])],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=600,
    )


@pytest.mark.slow
def test_fsdp_two_processes_match_one(tmp_path, tiny_model, toy_csv):
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, train={"epochs": 2, "eval_every": 6, "batch_size": 16})
    cfg["train"]["keep_checkpoints"] = True
    one = write_yaml(tmp_path / "one.yaml", {**cfg, "name": "one"})
    two_train = {**cfg["train"], "batch_size": 8, "distributed": "fsdp"}
    two = write_yaml(tmp_path / "two.yaml", {**cfg, "name": "two", "train": two_train})
    single = run_cli("train", str(one), env=ENV)
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(two, 29551)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "processes 2" in double.stdout and "fsdp (full sharding)" in double.stdout
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    a, b = runs["one"], runs["two"]
    assert b.info["processes"] == 2 and a.metrics["steps"] == b.metrics["steps"]
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-3)
    assert a.metrics["validation_best"]["loss"] == pytest.approx(b.metrics["validation_best"]["loss"], rel=1e-3)
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-4)
    shards = b.path / "checkpoints" / "last" / "shards"
    assert {p.name for p in shards.iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert (b.path / "checkpoints" / "best" / "trainable.safetensors").is_file()  # consolidated
    assert tunesmith.load_run(b.path).predict(["a b c"])[0].label in a.label_names


@pytest.mark.slow
def test_fsdp_lora_causal_lm_killed_resumes_exactly(tmp_path):
    from gen_fixtures import build_tiny_lm, toy_pairs, write_jsonl

    model = build_tiny_lm(tmp_path / "llama", "llama")
    rows = [
        {"prompt": r["prompt"], "completion": " " + r["completion"] * (1 + i % 3)} for i, r in enumerate(toy_pairs(64))
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    base = {
        "task": "causal-lm",
        "output_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "max_length": 96},
        "model": {"name": str(model)},
        "strategy": {"name": "lora", "r": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "tracking": {"backend": "none"},
        "train": {"epochs": 2, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "precision": "fp32", "patience": None},
        "generate": {"samples": 4, "max_new_tokens": 4},
    }
    base["train"].update(distributed="fsdp", eval_every=3, log_every=1)  # no dropout: other processes, other masks
    whole = write_yaml(tmp_path / "whole.yaml", {**base, "name": "whole"})
    cut = write_yaml(tmp_path / "cut.yaml", {**base, "name": "cut"})
    done = _torchrun(whole, 29552)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _torchrun(cut, 29553, env={"TUNESMITH_FAULT_AT_STEP": "4:KILL"})  # SIGKILL after step 4: no goodbye
    assert killed.returncode != 0
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("cut"))
    assert json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["step"] == 3
    resumed = _torchrun(None, 29554, "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 3" in resumed.stdout
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    a, b = runs["whole"], runs["cut"]
    assert a.metrics["steps"] == b.metrics["steps"] and a.metrics["test"]["loss"] == pytest.approx(
        b.metrics["test"]["loss"], rel=1e-5
    )
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-6)
    # Another number of processes: DCP reshards the checkpoint onto one process, the global batch stays 8.
    cut1 = write_yaml(tmp_path / "cut1.yaml", {**base, "name": "cutone"})
    assert _torchrun(cut1, 29556, env={"TUNESMITH_FAULT_AT_STEP": "4:KILL"}).returncode != 0
    one_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("cutone"))
    alone = run_cli("train", "--resume", str(one_dir), env=ENV)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert (
        "resuming on 1 processes (was 2): train.batch_size 8" in alone.stdout and "resumed from step 3" in alone.stdout
    )
    c = tunesmith.load_run(one_dir)
    assert c.metrics["steps"] == a.metrics["steps"] and c.info["processes"] == 1
    assert c.metrics["test"]["loss"] == pytest.approx(a.metrics["test"]["loss"], rel=1e-4)
    assert_same_weights(_final_weights(a), _final_weights(c), atol=1e-4)
    hist = lambda r: [
        json.loads(x)["train_loss"] for x in (r.path / "history.jsonl").read_text().splitlines() if "train_loss" in x
    ]
    assert hist(a) == pytest.approx(hist(b), rel=1e-5)


@pytest.mark.slow
def test_hybrid_sharding_over_two_nodes_matches_one_process(tmp_path, tiny_model, toy_csv):
    """`train.fsdp.sharding: hybrid` on two torchrun nodes of one process: a (2 replicas x 1 shard) device mesh."""
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, train={"epochs": 1, "eval_every": 6, "batch_size": 16})
    one = write_yaml(tmp_path / "one.yaml", {**cfg, "name": "one"})
    train = {**cfg["train"], "batch_size": 8, "distributed": "fsdp", "fsdp": {"sharding": "hybrid"}}
    two = write_yaml(tmp_path / "two.yaml", {**cfg, "name": "two", "train": train})
    assert run_cli("train", str(one), env=ENV).returncode == 0
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    node += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29558", "--rdzv_id", "hsdp"]
    node += ["-m", "tunesmith", "train", str(two)]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in "ab"]
    outs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(err[-3000:] for _, err in outs)
    assert any("fsdp (hybrid sharding)" in out for out, _ in outs)
    runs = {r.path.name.split("-")[0]: r for r in tunesmith.list_runs(tmp_path / "runs")}
    a, b = runs["one"], runs["two"]
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-3)
    assert_same_weights(_final_weights(a), _final_weights(b), atol=1e-4)
