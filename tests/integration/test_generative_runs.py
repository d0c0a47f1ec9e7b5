"""Generative runs on tiny random Llama / T5 models through the CLI: train, data lint, generate, chat, eval, resume."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT, run_cli, write_yaml
from gen_fixtures import ANSWER, build_tiny_lm, toy_pairs, write_jsonl

from tunesmith.config import load_config
from tunesmith.errors import DataError


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")


# ---- end to end through the CLI


def gen_config(tmp_path, model, data_path, **sections):
    cfg = {
        "name": "gen",
        "task": "causal-lm",
        "output_dir": str(tmp_path / "runs"),
        # The toy task memorises a few prompts: its test prompts are train prompts by design, so the leak-proof
        # split and the leakage block are off here (tests/unit/test_generative_hygiene.py checks them).
        "data": {
            "path": str(data_path),
            "max_length": 64,
            "validation_size": 0.1,
            "test_size": 0.1,
            "group_near_duplicates": False,
        },
        "audit": {"block_on_leakage": False},
        "model": {"name": str(model)},
        "strategy": {"name": "full"},
        "train": {"epochs": 12, "lr": 3e-3, "batch_size": 16, "precision": "fp32", "patience": None, "log_every": 5},
        "generate": {"samples": 12, "max_new_tokens": 10},
        "tracking": {"backend": "none"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def test_causal_lm_chat_sft_learns_and_generates(tmp_path, llama):
    rows = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(320)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    cfg = write_yaml(
        tmp_path / "c.yaml", gen_config(tmp_path, llama, data, data={"packing": True}, train={"epochs": 30})
    )
    res = run_cli("train", str(cfg))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "packing: 256 samples in" in res.stdout
    run_dir = next((tmp_path / "runs").iterdir())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["test"]["loss"] < 0.5 * m["before"]["loss"]
    assert m["test"]["generation"]["exact_match"] >= 0.5 > m["before"]["generation"]["exact_match"]
    report = (run_dir / "report.md").read_text()
    assert "| prompt | reference | before | after |" in report and "What colour is the" in report
    out = run_cli("generate", str(run_dir), "--prompt", "What colour is the owl?")
    assert out.returncode == 0 and out.stdout.strip() == f"The owl is {ANSWER['owl']}."
    chat = run_cli("chat", str(run_dir), input="What colour is the fox?\n")
    assert chat.returncode == 0 and f"The fox is {ANSWER['fox']}." in chat.stdout


def test_data_lint_cli_and_train_refuse_a_missing_eos(tmp_path, llama):
    data = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(60)]
    )
    good = write_yaml(tmp_path / "good.yaml", gen_config(tmp_path, llama, data))
    res = run_cli("data", "lint", str(good))
    assert res.returncode == 0 and "lint: ok" in res.stdout and "[[" in res.stdout
    bad = write_yaml(tmp_path / "bad.yaml", gen_config(tmp_path, llama, data, data={"add_eos": False}))
    res = run_cli("data", "lint", str(bad))
    assert res.returncode == 1 and "end-of-sequence" in res.stderr
    res = run_cli("train", str(bad))
    assert res.returncode == 2 and "end-of-sequence" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run folder exists


def test_seq2seq_config_runs_on_a_tiny_t5(tmp_path):
    """configs/examples/seq2seq-t5.yaml with the model and data swapped for tiny local ones."""
    t5 = build_tiny_lm(tmp_path / "t5", "t5")
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(160))
    res = run_cli(
        "train",
        str(ROOT / "configs/examples/seq2seq-t5.yaml"),
        f"model.name={t5}",
        f"data.path={data}",
        f"output_dir={tmp_path / 'runs'}",
        "tracking.backend=none",
        "train.epochs=10",
        "train.lr=3e-3",
        "train.precision=fp32",
        "generate.samples=8",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = next((tmp_path / "runs").iterdir())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["test"]["loss"] < m["before"]["loss"] and m["test"]["generation"]["n"] == 8
    out = run_cli("generate", str(run_dir), "--prompt", "What colour is the cat?")
    assert out.returncode == 0 and out.stdout.strip()


def test_lora_on_a_causal_lm_saves_an_adapter_and_reloads(tmp_path, llama):
    data = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(80)]
    )
    cfg = load_config(
        gen_config(tmp_path, llama, data, strategy={"name": "lora", "r": 4}, train={"epochs": 2, "precision": "bf16"})
    )
    from tunesmith import finetune

    run = finetune(cfg)
    assert (run.path / "model" / "adapter_model.safetensors").is_file()
    assert run.info["parameters"]["trainable"] < run.info["parameters"]["total"] / 5
    again = type(run)(run.path).generate(["What colour is the cat?"], max_new_tokens=4)
    assert len(again) == 1 and isinstance(again[0], str)


def test_unknown_sample_format_is_one_clear_error(tmp_path, llama):
    data = write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}] * 20)
    cfg = write_yaml(tmp_path / "c.yaml", gen_config(tmp_path, llama, data))
    res = run_cli("train", str(cfg))
    assert res.returncode == 2 and "cannot tell the sample format" in res.stderr


def test_linear_probe_is_refused_for_generation(tmp_path, llama):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(40))
    cfg = load_config(gen_config(tmp_path, llama, data, strategy={"name": "linear-probe"}))
    from tunesmith import finetune
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="for causal-lm use lora"):
        finetune(cfg)


def test_bad_messages_name_the_row(tmp_path, llama):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    cfg = load_config(gen_config(tmp_path, llama, data))
    from tunesmith.tasks.generative.formats import load_gen_splits

    with pytest.raises(DataError, match="row 1: the last message must be the assistant"):
        load_gen_splits(cfg)


def test_generative_run_resumes_after_interrupt_with_its_before_generations(tmp_path, llama):
    data = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(96)]
    )
    cfg = write_yaml(tmp_path / "c.yaml", gen_config(tmp_path, llama, data, train={"epochs": 3, "eval_every": 2}))
    res = run_cli("train", str(cfg), env={"TUNESMITH_FAULT_AT_STEP": "3:INT"})
    assert res.returncode == 130, res.stderr[-1500:]
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    res = run_cli("train", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr[-1500:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert (
        m["steps"] == 15
        and m["before"]["generation"]["n"] == m["test"]["generation"]["n"] == 10
        and "_before" not in json.loads((run_dir / "run.json").read_text())
    )


def test_qlora_nf4_and_gradient_checkpointing_on_a_causal_lm(tmp_path, llama):
    data = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(48)]
    )
    cfg = load_config(
        gen_config(
            tmp_path,
            llama,
            data,
            strategy={"name": "lora", "r": 4, "quantize": "nf4"},
            train={"epochs": 1, "precision": "bf16", "gradient_checkpointing": True},
            generate={"samples": 2, "max_new_tokens": 4},
        )
    )
    from tunesmith import finetune

    run = finetune(cfg)
    m = run.metrics
    assert math.isfinite(m["test"]["loss"]) and m["steps"] == 3


def test_eval_command_scores_a_generative_run_on_another_file(tmp_path, llama):
    data = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(64)]
    )
    other = write_jsonl(
        tmp_path / "other.jsonl",
        [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(10, seed=5)],
    )
    cfg = load_config(
        gen_config(tmp_path, llama, data, train={"epochs": 2}, generate={"samples": 4, "max_new_tokens": 6})
    )
    from tunesmith import finetune

    run = finetune(cfg)
    res = run_cli("eval", str(run.path), "--data", str(other))
    assert res.returncode == 0, res.stderr[-1500:]
    assert "10 rows" in res.stdout and "perplexity" in res.stdout and "rougeL" in res.stdout
    saved = json.loads(next((run.path / "evals").iterdir()).read_text())
    assert saved["n"] == 10 and saved["generation"]["n"] == 4 and math.isfinite(saved["loss"])
