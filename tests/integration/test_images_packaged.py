"""End to end on the packaged EfficientNet-Lite0: train a few steps, then predict, evaluate and audit from the CLI.

Generated shape pictures (tests/image_fixtures.py) at 64 px keep it to a few seconds of training; the run goes
through the whole path: decode check, audit with backbone features, augmentation in a worker, the pixel baseline,
robustness, the error grid, the model card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from image_fixtures import png_bytes, toy_images, write_folder  # noqa: E402

import tunesmith  # noqa: E402
from tunesmith.cli import main as cli  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images-e2e")
    pairs = toy_images(150, seed=5, size=48)
    write_folder(root / "data" / "train", pairs[:120])
    write_folder(root / "data" / "test", pairs[120:], "test")
    (root / "data" / "train" / "disc" / "broken.png").write_bytes(png_bytes(pairs[0][0])[:50])
    cfg = {
        "name": "lite0",
        "task": "image-classification",
        "output_dir": str(root / "runs"),
        "data": {"path": str(root / "data"), "validation_size": 0.15},
        "model": {"name": "efficientnet-lite0"},
        "images": {"size": 64, "augment": ["hflip", {"random_resized_crop": [0.8, 1.0]}]},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "eval_every": 6},
        "eval": {"robustness_samples": 30, "efficiency_batches": 4},
        "tracking": {"backend": "none"},
    }
    return tunesmith.finetune(cfg), root


def test_a_packaged_model_trains_end_to_end(run):
    r, root = run
    m, info = r.metrics, r.info
    assert info["status"] == "complete"
    assert m["test"]["macro_f1"] > 0.5, m["test"]  # three shapes; chance is 0.33
    assert m["baseline"]["name"] == "pixels-logreg" and "macro_f1" in m["baseline"]["test"]
    assert set(m["robustness"]["perturbations"]) >= {"blur", "noise", "jpeg_q20"}
    assert m["test_ci"]["macro_f1"]["low"] <= m["test"]["macro_f1"] <= m["test_ci"]["macro_f1"]["high"]
    assert any("left out 1 image(s) (1 unreadable" in n for n in info["data"]["notes"]), info["data"]["notes"]
    for name in ("audit.md", "confusion_matrix.png", "robustness.png", "MODEL_CARD.md", "report.md"):
        assert (r.path / name).is_file(), name
    errors = int(round((1 - m["test"]["accuracy"]) * m["test"]["n"]))
    assert len(m["errors_shown"]) == min(16, errors)  # the grid of the most confident errors, when there are any
    assert (r.path / "test_errors.png").is_file() == (errors > 0)
    assert "raw pixels" in (r.path / "report.md").read_text()
    audit = json.loads((r.path / "audit.json").read_text())
    assert audit["label_noise"]["model"].startswith("efficientnet-lite0")


def test_predict_and_eval_from_the_cli(run, capsys, tmp_path):
    r, root = run
    image = next((root / "data" / "test" / "square").glob("*.png"))
    assert cli(["predict", str(r.path), "--image", str(image)]) == 0
    label, score, path = capsys.readouterr().out.strip().split("\t")
    assert label in ("cross", "disc", "square") and 0 < float(score) <= 1 and path == str(image)
    out = tmp_path / "preds.csv"
    assert cli(["predict", str(r.path), "--file", str(root / "data" / "test"), "--out", str(out)]) == 0
    import pandas as pd

    preds = pd.read_csv(out)
    assert len(preds) == 30 and set(preds["predicted"]) <= {"cross", "disc", "square"}
    # the CLI's predictions are the run's own
    probs = r.predict_probs(preds["image"].tolist())
    assert [r.label_names[i] for i in probs.argmax(1)] == preds["predicted"].tolist()
    assert cli(["eval", str(r.path), "--data", str(root / "data" / "test")]) == 0
    assert "macro_f1" in capsys.readouterr().out
    assert cli(["predict", str(r.path), "--text", "a square"]) == 2
    assert "classifies images" in capsys.readouterr().err


def test_data_audit_on_image_folders_finds_a_planted_leak(tmp_path, capsys):
    pairs = toy_images(60, seed=9)
    write_folder(tmp_path / "train", pairs[:45])
    leaked = [(np.clip(pairs[0][0].astype(int) + 4, 0, 255).astype(np.uint8), pairs[0][1])]  # a brighter copy
    write_folder(tmp_path / "test", pairs[45:] + leaked, "t")
    code = cli(
        ["data", "audit", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--out", str(tmp_path / "r")]
    )
    assert code == 1  # blocking: the test set leaks
    assert "leak" in capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert report["counts"]["test.leaked_rows"] == 1 and report["counts"]["train.near_duplicate_clusters"] == 0
    assert (tmp_path / "r" / "audit_pairs.png").is_file()
