"""`tunesmith export` of image-classification runs on a tiny "pretrained" MBConv fine-tuned here (full and LoRA):
hf and onnx (fp32, and int8 calibrated on the training images) each checked against the run (parity), and each
read back by transformers / onnxruntime alone to reproduce the run's recorded test probabilities."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from image_fixtures import pretrain_tiny_vision, toy_images, write_folder

import tunesmith
from tunesmith.export import ParityError, export_run, model_kind
from tunesmith.export import hf as hf_format


def quiet(_line: str) -> None:
    pass


def image_config(root, model, data, strategy: dict) -> dict:
    return {
        "name": f"shapes-{strategy['name']}",
        "task": "image-classification",
        "output_dir": str(root / "runs"),
        "data": {"path": str(data), "validation_size": 0.15, "test_size": 0.25},
        "model": {"name": str(model)},
        "images": {"workers": 0},
        "strategy": strategy,
        # 6 epochs at 1e-2: with 2 at 3e-3 (8 steps) the run learned or not depending on the thread count
        "train": {"epochs": 6, "batch_size": 16, "lr": 1e-2, "precision": "fp32", "patience": None},
        "audit": {"enabled": False},
        "eval": {"baseline": False, "robustness": False, "efficiency": False},
        "tracking": {"backend": "none"},
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-images")
    return root, pretrain_tiny_vision(root / "mbconv"), write_folder(root / "shapes", toy_images(96, seed=3))


@pytest.fixture(scope="module")
def full_run(assets):
    root, model, data = assets
    return tunesmith.finetune(image_config(root, model, data, {"name": "full"}))


@pytest.fixture(scope="module")
def lora_run(assets):
    root, model, data = assets
    return tunesmith.finetune(image_config(root, model, data, {"name": "lora", "r": 4, "alpha": 8}))


def recorded(run) -> tuple[list[str], np.ndarray]:
    """test_predictions.csv: the image paths and the probabilities the run wrote for them."""
    df = pd.read_csv(run.path / "test_predictions.csv")
    return df["image"].tolist(), df[[f"p_{n}" for n in run.label_names]].to_numpy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_hf_export_passes_parity_and_reproduces_the_recorded_probabilities(full_run, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import tunesmith.models.vision  # noqa: F401  (the MBConv model_type; export.json says so)

    result = export_run(full_run, tmp_path / "hf", say=quiet)
    p = result.report["parity"]
    assert result.status == "passed", p["failures"]
    assert p["metric"]["run"] > 0.6  # the run tells shapes apart: agreeing on its labels means something
    assert p["max_abs_logit_diff"] <= 1e-5 and p["label_agreement"] == 1.0 and p["processor_agreement"] == 1.0
    assert p["rows"] == full_run.info["data"]["splits"]["test"]["rows"] and "test_predictions.csv" in p["source"]
    assert p["recorded_max_abs_prob_diff"] <= 1e-5 and set(p["latency_ms"]["export"]) == {"batch_1", "batch_32"}
    assert result.report["input"]["pixel_values"] == ["batch", 3, 32, 32]
    assert any("import tunesmith.models.vision" in n for n in result.report["notes"])
    assert "AutoImageProcessor" in result.report["load"] and "AutoModelForImageClassification" in result.report["load"]
    assert json.loads((tmp_path / "hf" / "labels.json").read_text()) == ["cross", "disc", "square"]
    # transformers alone (plus the registration import) reproduces test_predictions.csv
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert model.config.id2label == {0: "cross", 1: "disc", 2: "square"}
    paths, want = recorded(full_run)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits.numpy()
    assert np.abs(softmax(logits.astype(np.float64)) - want).max() <= 1e-5


def test_onnx_export_has_a_dynamic_batch_and_reproduces_the_recorded_probabilities(full_run, tmp_path):
    import onnxruntime as ort
    from PIL import Image
    from transformers import AutoImageProcessor

    result = export_run(full_run, tmp_path / "onnx", "onnx", say=quiet)
    p = result.report["parity"]
    assert result.status == "passed", p["failures"]
    assert p["max_abs_logit_diff"] <= 1e-4 and p["label_agreement"] == 1.0 and p["metric"]["drop"] == 0
    assert result.report["inputs"] == ["pixel_values"] and result.report["exporter"] in ("dynamo", "torchscript")
    out = tmp_path / "onnx"
    assert {"model.onnx", "config.json", "labels.json", "preprocessor_config.json", "export.json"} <= {
        f.name for f in out.iterdir()
    }
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == "pixel_values" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]
    processor = AutoImageProcessor.from_pretrained(out)
    paths, want = recorded(full_run)
    images = [Image.open(p).convert("RGB") for p in paths]
    for batch in (images[:1], images):  # batch 1 and the whole test split: the batch axis is dynamic
        pixels = processor(images=batch, return_tensors="np")["pixel_values"].astype(np.float32)
        logits = session.run(["logits"], {"pixel_values": pixels})[0]
        assert np.abs(softmax(logits.astype(np.float64)) - want[: len(batch)]).max() <= 1e-5


def test_lora_run_is_merged_and_passes_parity_in_hf_and_onnx(lora_run, tmp_path):
    from transformers import AutoModelForImageClassification

    hf = export_run(lora_run, tmp_path / "hf", say=quiet)
    onnx = export_run(lora_run, tmp_path / "onnx", "onnx", say=quiet)
    for result in (hf, onnx):
        p = result.report["parity"]
        assert result.status == "passed", p["failures"]
        assert p["max_abs_logit_diff"] <= 1e-4 and p["label_agreement"] == 1.0
        assert p["metric"]["run"] > 0.6
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf")
    assert model_kind(model) == "image-classifier"
    assert not any("lora" in k for k in model.state_dict())  # merged into the convolutions


def test_onnx_int8_is_static_calibrated_on_training_images_and_within_its_tolerance(full_run, tmp_path):
    import onnx

    fp32 = export_run(full_run, tmp_path / "fp32", "onnx", parity=False, say=quiet)
    int8 = export_run(full_run, tmp_path / "int8", "onnx", "int8", say=quiet)
    p = int8.report["parity"]
    assert int8.status == "passed", p["failures"]
    assert p["tolerances"]["precision"] == "int8" and p["label_agreement"] >= 0.95 and p["metric"]["drop"] <= 0.02
    assert int8.report["files"]["model.onnx"] < fp32.report["files"]["model.onnx"]
    cal = int8.report["calibration"]
    assert cal["images"] == full_run.info["data"]["splits"]["train"]["rows"] and "training split" in cal["from"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "ConvInteger" not in ops  # static QDQ
    assert not [f for f in (tmp_path / "int8").iterdir() if f.name.startswith(".")]  # no temporary files left


def test_rows_come_from_the_re_derived_split_when_the_csv_names_no_files(full_run, tmp_path):
    """A run over a table of image bytes records refs like `table.parquet:row 3`: the task's data is read instead."""
    copy = tmp_path / "runs" / full_run.path.name
    shutil.copytree(full_run.path, copy)
    df = pd.read_csv(copy / "test_predictions.csv")
    df["image"] = [f"shapes.parquet:row {i + 1}" for i in range(len(df))]
    df.to_csv(copy / "test_predictions.csv", index=False)
    result = export_run(copy, tmp_path / "hf", parity_rows=8, say=quiet)
    p = result.report["parity"]
    assert result.status == "passed" and p["rows"] == 8 and "fingerprint" in p["source"]
    assert "recorded_max_abs_prob_diff" not in p


def test_an_image_processor_that_changed_fails_parity(full_run, tmp_path, monkeypatch):
    write = hf_format.write_hf

    def write_then_shift(model, processor, folder):
        write(model, processor, folder)
        config = json.loads((folder / "preprocessor_config.json").read_text())
        config["image_mean"] = [0.4, 0.5, 0.5]
        (folder / "preprocessor_config.json").write_text(json.dumps(config))

    monkeypatch.setattr(hf_format, "write_hf", write_then_shift)
    with pytest.raises(ParityError, match="image processor agreement 0.0% < 100%") as err:
        export_run(full_run, tmp_path / "shifted", parity_rows=8, say=quiet)
    assert any(line.strip().startswith("processor agreement") for line in err.value.lines)
