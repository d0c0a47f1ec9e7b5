"""Shared fixtures: a tiny random BERT (built from a config in code, no downloads) and a toy task."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

ROOT = Path(__file__).resolve().parents[1]

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "nasty", "dire"]
NEUTRAL = [
    "table",
    "chair",
    "river",
    "paper",
    "green",
    "house",
    "seven",
    "north",
    "cloud",
    "stone",
    "the",
    "a",
    "is",
    "it",
    "was",
]
WORDS = POSITIVE + NEGATIVE + NEUTRAL


def toy_rows(n: int, seed: int = 0, filler: list[str] = NEUTRAL) -> list[dict]:
    """A learnable 3-class task: the label is given by which sentiment word the text contains."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["pos", "neg", "neu"][i % 3]
        words = rng.choices(filler, k=rng.randint(3, 12))
        if label != "neu":
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def build_tiny_bert(folder: Path, dropout: float = 0.0) -> Path:
    """A 2-layer, 32-wide random BERT plus a word-level tokenizer over the toy vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "toy.csv", toy_rows(360))


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory) -> dict:
    """One LoRA run on the real packaged SmolLM2-135M-Instruct GGUF through the CLI, in a fresh conversion cache:
    `data lint` (the first use converts), then `train` (3 steps). Shared by the e2e and the export tests (each
    SmolLM2 load and conversion costs tens of seconds on CPU). {"run", "env", "cache", "lint", "train"}."""
    pytest.importorskip("gguf")
    from gen_fixtures import toy_pairs, write_jsonl

    tmp = tmp_path_factory.mktemp("smollm2")
    cache = tmp / "cache"
    env = {"TUNESMITH_CACHE": str(cache)}
    rows = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(40)
    ]
    data = write_jsonl(tmp / "chat.jsonl", rows)
    cfg = write_yaml(
        tmp / "c.yaml",
        {
            "name": "smol",
            "task": "causal-lm",
            "output_dir": str(tmp / "runs"),
            "data": {"path": str(data), "max_length": 96, "validation_size": 0.1, "test_size": 0.2},
            "audit": {"block_on_leakage": False},
            "model": {"name": "smollm2-135m-instruct"},
            "strategy": {"name": "lora", "r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "patience": None},
            "generate": {"samples": 2, "max_new_tokens": 8},
            "tracking": {"backend": "none"},
        },
    )
    lint = run_cli("data", "lint", str(cfg), "--show", "1", env=env)
    assert lint.returncode == 0, lint.stderr[-1500:]
    train = run_cli("train", str(cfg), env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    return {"run": next((tmp / "runs").iterdir()), "env": env, "cache": cache, "lint": lint, "train": train}


def tiny_config(tmp_path: Path, model: Path, data: Path, **sections) -> dict:
    """A config dict for a fast run on the tiny model; `sections` update the defaults per section."""
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "max_length": 32},
        "model": {"name": str(model)},
        "strategy": {"name": "full"},
        "train": {
            "epochs": 10,
            "batch_size": 16,
            "lr": 3e-3,
            "eval_every": 12,
            "precision": "fp32",
            "log_every": 5,
            "patience": None,
        },
        "eval": {"baseline": False},
        "tracking": {"backend": "none"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def http_call(url: str, path: str, body=None, method: str | None = None, headers=None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) of one request to a test server, on a fresh connection."""
    import http.client
    import json
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(
        method or ("POST" if data is not None else "GET"),
        path,
        body=data,
        headers={"content-type": "application/json", **(headers or {})},
    )
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    head = {k.lower(): v for k, v in resp.getheaders()}
    return resp.status, head, json.loads(text) if head.get("content-type", "").startswith("application/json") else text


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600, input: str | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        input=input,
    )


def pytest_collection_modifyitems(config, items):
    """Everything in tests/integration is slow: `pytest -m "not slow"` runs the unit and contract tiers."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.slow)
