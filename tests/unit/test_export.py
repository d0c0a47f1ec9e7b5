"""`tunesmith export`: hf / onnx (+int8) / gguf (f16, q8_0) on tiny LoRA runs, each checked against the run (parity);
a broken export fails parity; the user's mistakes are one clear line each."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_bert, tiny_config, toy_rows, write_csv
from gen_fixtures import build_tiny_lm, toy_pairs, write_jsonl

import tunesmith
from tunesmith.errors import ConfigError, ModelError, RunError
from tunesmith.export import ParityError, export_run
from tunesmith.export import gguf as gguf_format
from tunesmith.export import hf as hf_format


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    """A tiny BERT + LoRA sentiment run, trained until its logits are decisive (F1 ~0.85)."""
    root = tmp_path_factory.mktemp("export-cls")
    bert = build_tiny_bert(root / "bert")
    data = write_csv(root / "toy.csv", toy_rows(360))
    cfg = tiny_config(
        root,
        bert,
        data,
        strategy={"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "key", "value", "dense"]},
        train={"epochs": 15, "lr": 1e-2, "eval_every": 50},
        eval={"baseline": False, "calibration": False, "robustness": False, "efficiency": False},
        audit={"label_errors": False},
    )
    return tunesmith.finetune(cfg)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny Llama (2 layers, 4 heads, 2 kv heads, byte-level BPE) + LoRA chat run."""
    root = tmp_path_factory.mktemp("export-lm")
    llama = build_tiny_lm(root / "llama", "llama")
    rows = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in toy_pairs(160)
    ]
    data = write_jsonl(root / "chat.jsonl", rows)
    return tunesmith.finetune(
        {
            "name": "chat",
            "task": "causal-lm",
            "output_dir": str(root / "runs"),
            "data": {
                "path": str(data),
                "max_length": 64,
                "validation_size": 0.1,
                "test_size": 0.1,
                "group_near_duplicates": False,
            },
            "audit": {"block_on_leakage": False},
            "model": {"name": str(llama)},
            "strategy": {
                "name": "lora",
                "r": 8,
                "alpha": 16,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            },
            "train": {"epochs": 8, "lr": 2e-2, "batch_size": 16, "precision": "fp32", "patience": None},
            "generate": {"samples": 4, "max_new_tokens": 10, "before": False},
            "tracking": {"backend": "none"},
        }
    )


# ---- onnx


def test_onnx_export_matches_the_run_and_is_self_contained(cls_run, tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out = tmp_path / "onnx"
    result = export_run(cls_run, out, "onnx", say=quiet)
    assert result.status == "passed"
    report = json.loads((out / "export.json").read_text())
    p = report["parity"]
    assert report["exporter"] in ("dynamo", "torchscript") and report["quantize"] == "none"
    assert p["max_abs_logit_diff"] <= 1e-3 and p["label_agreement"] == 1.0 and p["failures"] == []
    assert p["rows"] == cls_run.info["data"]["splits"]["test"]["rows"] and "fingerprint" in p["source"]
    assert set(p["latency_ms"]["export"]) == {"batch_1", "batch_32"} and p["metric"]["name"] == "macro_f1"
    assert json.loads((out / "labels.json").read_text()) == ["neg", "neu", "pos"]
    assert (out / "README.md").read_text() == (cls_run.path / "MODEL_CARD.md").read_text()
    # Self-contained: tokenizer + model.onnx, dynamic batch and sequence axes, token_type_ids (BERT takes them).
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["good table", "the river was awful and the stone green", "chair"], padding=True, return_tensors="np")
    logits = session.run(
        ["logits"], {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    )[0]
    want = cls_run.predict_probs(["good table", "the river was awful and the stone green", "chair"])
    assert logits.shape == (3, 3) and (logits.argmax(1) == want.argmax(1)).all()


def test_onnx_int8_is_smaller_and_within_its_tolerance(cls_run, tmp_path):
    fp32 = export_run(cls_run, tmp_path / "fp32", "onnx", parity=False, say=quiet)
    assert fp32.status == "skipped" and "parity" not in json.loads((tmp_path / "fp32" / "export.json").read_text())
    # 36 test rows: one changed prediction moves macro-F1 by ~1/n (0.028), more than the default 0.02 meant for real
    # test sets, and which row int8 flips depends on the CPU's int8 kernels (this failed on an AVX512-BF16 EPYC and
    # passed on an AMX Xeon with the default). So the limit here is one and a half changed predictions' worth.
    n = cls_run.metrics["test"]["n"]
    limit = max(0.02, 1.5 / n)
    int8 = export_run(cls_run, tmp_path / "int8", "onnx", "int8", max_metric_drop=limit, say=quiet)
    p = int8.report["parity"]
    assert int8.status == "passed" and int8.quantize == "int8"
    assert int8.report["size_mb"] < fp32.report["size_mb"]
    assert p["tolerances"]["precision"] == "int8" and p["tolerances"]["max_logit_diff"] is None
    assert p["label_agreement"] >= 0.95 and p["metric"]["drop"] <= limit


# ---- hf


def test_hf_export_is_a_plain_transformers_folder_with_the_model_card(cls_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result = export_run(cls_run, tmp_path / "hf", say=quiet)
    assert result.status == "passed" and result.report["parity"]["max_abs_logit_diff"] <= 1e-3
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert not any("lora" in k for k in model.state_dict())  # merged
    assert (tmp_path / "hf" / "README.md").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()


def test_hf_export_of_a_seq2seq_lora_run_matches_its_generations(tmp_path):
    t5 = build_tiny_lm(tmp_path / "t5", "t5")
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(120))
    run = tunesmith.finetune(
        {
            "name": "s2s",
            "task": "seq2seq",
            "output_dir": str(tmp_path / "runs"),
            "data": {"path": str(data), "max_length": 32, "test_size": 0.1, "group_near_duplicates": False},
            "audit": {"block_on_leakage": False},
            "model": {"name": str(t5)},
            "strategy": {"name": "lora", "r": 4, "target_modules": ["q", "v"]},
            "train": {"epochs": 3, "lr": 1e-2, "batch_size": 16, "precision": "fp32", "patience": None},
            "generate": {"samples": 2, "max_new_tokens": 8, "before": False},
            "tracking": {"backend": "none"},
        }
    )
    result = export_run(run, tmp_path / "hf", say=quiet)
    p = result.report["parity"]
    assert result.status == "passed" and p["max_abs_logit_diff"] <= 1e-3 and p["greedy_exact_match"] == 1.0
    assert result.report["load"] == "transformers.AutoModelForSeq2SeqLM.from_pretrained(DIR)"
    with pytest.raises(ConfigError, match="--format gguf writes causal language models; .*T5ForConditionalGeneration"):
        export_run(run, tmp_path / "gguf", "gguf", say=quiet)


def test_a_broken_export_fails_parity_and_is_kept_for_inspection(cls_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    write = hf_format.write_hf

    def write_then_corrupt(model, tokenizer, folder):
        write(model, tokenizer, folder)
        weights = load_file(folder / "model.safetensors")
        weights["classifier.weight"] = weights["classifier.weight"] + 0.5 * torch.randn_like(
            weights["classifier.weight"]
        )
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(hf_format, "write_hf", write_then_corrupt)
    out = tmp_path / "broken"
    with pytest.raises(ParityError, match=r"fails parity .*max \|logit diff\|") as err:
        export_run(cls_run, out, say=quiet)
    assert "\n" not in str(err.value) and err.value.lines[-1].startswith("parity: failed")
    report = json.loads((out / "export.json").read_text())
    assert report["status"] == "failed" and report["parity"]["failures"]
    assert not list(tmp_path.glob(".broken*"))  # no temporary folder left behind


# ---- gguf


def test_gguf_f16_and_q8_0_read_back_with_transformers(lm_run, tmp_path):
    import gguf

    f16 = export_run(lm_run, tmp_path / "f16", "gguf", say=quiet)  # f16 is the default type
    q8 = export_run(lm_run, tmp_path / "q8", "gguf", "q8_0", say=quiet)
    for result in (f16, q8):
        p = result.report["parity"]
        assert result.status == "passed", p["failures"]
        assert p["tokenizer_agreement"] == 1.0 and p["chat_template_kept"] and p["tokenizer_special_ids_agree"]
        assert p["first_token_agreement"] >= 0.8 and p["metric"]["name"] == "perplexity"
    assert f16.report["parity"]["max_abs_logit_diff"] <= 0.25 and f16.report["parity"]["greedy_exact_match"] >= 0.75
    assert f16.report["gguf"]["tensors"] == {
        "F16": 15,
        "F32": 5,
    }  # 2-D weights f16, the norms f32, tied output left out
    assert q8.report["gguf"]["tensors"] == {"F32": 5, "Q8_0": 15}
    assert q8.report["size_mb"] < f16.report["size_mb"]
    reader = gguf.GGUFReader(str(tmp_path / "q8" / "model-q8_0.gguf"))
    fields = {
        k: reader.fields[k].contents()
        for k in (
            "general.architecture",
            "llama.block_count",
            "llama.attention.head_count_kv",
            "tokenizer.ggml.model",
            "tokenizer.ggml.add_bos_token",
        )
    }
    assert fields == {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.attention.head_count_kv": 2,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.add_bos_token": True,  # the tiny tokenizer's post-processor adds <s>
    }
    assert reader.fields["tokenizer.chat_template"].contents() == lm_run.load().tokenizer.chat_template


def test_gguf_f32_is_exact_and_a_missing_rotary_permutation_fails_parity(lm_run, tmp_path, monkeypatch):
    exact = export_run(lm_run, tmp_path / "f32", "gguf", "f32", say=quiet)
    assert exact.report["parity"]["max_abs_logit_diff"] < 1e-4 and exact.report["parity"]["greedy_exact_match"] == 1.0
    monkeypatch.setattr(gguf_format, "permute_rotary", lambda w, n_head, n_head_kv: w)  # the classic converter bug
    with pytest.raises(ParityError, match="max \\|logit diff\\|"):
        export_run(lm_run, tmp_path / "unpermuted", "gguf", "f32", say=quiet)


def test_rotary_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.arange(8 * 3 * 4, dtype=torch.float32).reshape(8 * 3, 4)  # 3 heads of dimension 8
    undo = LlamaTensorProcessor({"num_attention_heads": 6, "num_key_value_heads": 3})._reverse_permute_weights
    assert np.array_equal(undo(gguf_format.permute_rotary(w, 6, 3).numpy(), 6, 3), w.numpy())


def test_pre_tokenizer_names_follow_llama_cpp():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert gguf_format.pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert gguf_format.pre_tokenizer_name({"pre_tokenizer": digits}) == "smollm"
    assert gguf_format.pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}}) is None
    with pytest.raises(ModelError, match="only byte-level BPE"):
        gguf_format.check_tokenizer({"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}})


# ---- the user's mistakes: one clear line each


def test_formats_that_do_not_fit_the_model_are_refused(cls_run, lm_run, tmp_path):
    with pytest.raises(
        ConfigError, match="--format onnx exports classifiers; .*LlamaForCausalLM .*--format gguf is for Llama"
    ):
        export_run(lm_run, tmp_path / "a", "onnx", say=quiet)
    with pytest.raises(
        ConfigError, match="--format gguf writes causal language models; .*BertForSequenceClassification"
    ):
        export_run(cls_run, tmp_path / "b", "gguf", say=quiet)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    with pytest.raises(ModelError, match="architecture 'gpt2' is not supported .*convert_hf_to_gguf.py"):
        gguf_format.check_model(gpt2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_quantize_values_are_checked_before_any_work(cls_run, lm_run, tmp_path):
    with pytest.raises(
        ConfigError, match="--quantize q4_k_m: gguf-py has no Q4_K_M quantizer; .*llama-quantize .*Q4_K_M"
    ):
        export_run(lm_run, tmp_path / "k", "gguf", "q4_k_m", say=quiet)
    with pytest.raises(ConfigError, match="--quantize q3: gguf exports are one of f32, f16, bf16, q8_0"):
        export_run(lm_run, tmp_path / "k", "gguf", "q3", say=quiet)
    with pytest.raises(ConfigError, match="--quantize fp8: onnx exports are none or int8"):
        export_run(cls_run, tmp_path / "k", "onnx", "fp8", say=quiet)
    with pytest.raises(ConfigError, match="--quantize int8: hf exports keep the trained weights"):
        export_run(cls_run, tmp_path / "k", "hf", "int8", say=quiet)
    with pytest.raises(ConfigError, match="--format tflite: unknown; one of hf, onnx, gguf"):
        export_run(cls_run, tmp_path / "k", "tflite", say=quiet)


def test_an_existing_out_folder_or_an_incomplete_run_is_refused(cls_run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="taken: already exists; choose another folder, or pass --force"):
        export_run(cls_run, tmp_path / "taken", say=quiet)
    with pytest.raises(ConfigError, match="is not an earlier export"):
        export_run(cls_run, tmp_path / "taken", force=True, say=quiet)
    with pytest.raises(ConfigError, match="would replace the run folder itself"):
        export_run(cls_run, cls_run.path.parent, force=True, say=quiet)
    first = export_run(cls_run, tmp_path / "again", parity=False, say=quiet)
    assert export_run(cls_run, first.path, parity=False, force=True, say=quiet).status == "skipped"

    import shutil

    broken = tmp_path / "runs" / "broken"
    shutil.copytree(cls_run.path, broken)
    info = json.loads((broken / "run.json").read_text())
    (broken / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    with pytest.raises(RunError, match="is failed, it has no saved model; resume it"):
        export_run(broken, tmp_path / "never", say=quiet)
    assert not (tmp_path / "never").exists()


def test_cli_export_prints_the_parity_table_and_where_it_wrote(cls_run, tmp_path, capsys):
    from tunesmith.cli.export import add_export_commands

    parser = argparse.ArgumentParser()
    add_export_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(["export", str(cls_run.path), "--out", str(out), "--parity-rows", "8"])
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert "parity (hf none vs the trained run, 8 test rows):" in printed.out and "parity: passed" in printed.out
    assert f"wrote {out} (model.safetensors" in printed.out and "export: loading" in printed.err
    with pytest.raises(ConfigError, match="already exists"):
        args.func(args)
