"""Exports of real runs on the packaged models, each checked against its run: MiniLM + LoRA (the quickstart,
shrunk) to ONNX with int8 weights, and SmolLM2-135M-Instruct + LoRA (a few steps) to GGUF q8_0. ~2-3 min on 2 cores."""

from __future__ import annotations

import json

from conftest import ROOT

import tunesmith
from tunesmith.export import export_run


def test_minilm_quickstart_run_exports_to_onnx_int8_with_parity(tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    run = tunesmith.finetune(
        ROOT / "configs/quickstart/sentiment-lora.yaml",
        [
            f"output_dir={tmp_path / 'runs'}",
            "data.max_samples=900",
            "train.epochs=1",
            "train.eval_every=20",
            "eval.baseline=false",
            "eval.calibration=false",
            "eval.robustness=false",
            "eval.efficiency=false",
            "audit.label_errors=false",
            "tracking.backend=none",
        ],
    )
    out = tmp_path / "sentiment-int8"
    result = export_run(run, out, "onnx", "int8", say=print)
    p = result.report["parity"]
    assert result.status == "passed", p["failures"]
    assert p["rows"] == run.info["data"]["splits"]["test"]["rows"] and p["label_agreement"] >= 0.95
    assert abs(p["metric"]["run"] - run.metrics["test"]["macro_f1"]) < 0.05  # fp32 here, the run tested in bf16
    assert result.report["size_mb"] < 0.4 * result.report["pytorch_mb"]  # int8 weights: ~4x smaller than fp32
    assert p["latency_ms"]["export"]["batch_1"] > 0 and result.report["exporter"] == "dynamo"
    # The folder is all a runtime needs: tokenizer, labels, model.onnx with dynamic axes.
    tok = AutoTokenizer.from_pretrained(out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(["I love this, wonderful!", "this is terrible, I hate it", "ok"], padding=True, return_tensors="np")
    logits = session.run(["logits"], {i.name: enc[i.name].astype("int64") for i in session.get_inputs()})[0]
    labels = json.loads((out / "labels.json").read_text())
    assert logits.shape == (3, 3) and labels == ["negative", "neutral", "positive"]
    assert labels[int(logits[0].argmax())] == run.predict(["I love this, wonderful!"])[0].label


def test_smollm2_lora_run_exports_to_gguf_q8_0_with_parity(tmp_path, smollm2_run, monkeypatch):
    from tunesmith.runs.run import Run

    monkeypatch.setenv("TUNESMITH_CACHE", str(smollm2_run["cache"]))  # the run's base, converted once
    run = Run(smollm2_run["run"])
    out = tmp_path / "smol-q8_0"
    result = export_run(run, out, "gguf", "q8_0", parity_rows=8, say=print)
    p = result.report["parity"]
    assert result.status == "passed", p["failures"]
    assert p["rows"] == 8 and p["first_token_agreement"] >= 0.8 and p["tokenizer_agreement"] == 1.0
    assert p["chat_template_kept"] and abs(p["metric"]["drop"]) < 0.02  # q8_0: perplexity within 2%
    g = result.report["gguf"]
    assert g["architecture"] == "llama" and g["tokenizer"] == "gpt2" and g["chat_template"]
    assert g["tensors"]["Q8_0"] == 30 * 7 + 1  # every 2-D weight (7 per block, the tied embedding once)
    assert result.report["size_mb"] < 0.3 * result.report["pytorch_mb"]  # 8.5 bits a weight against fp32's 32
