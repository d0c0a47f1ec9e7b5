"""The strategy contract's image column: every built-in strategy x task image-classification, on a tiny random
MBConv (tunesmith's MobileNetV2/EfficientNet-Lite family, built in code) and 32x32 generated shape pictures.

The "pretrained" model is the tiny MBConv trained briefly on other toy pictures with a 5-way head (so its
features already tell shapes apart, and every run's 3-way head is fresh). Per cell, on one run (as
test_contract.py does for text): (a) it learns (test loss below the best constant prediction); (b) what the strategy freezes is bit for bit the pretrained weights *and batch-norm statistics*
(a frozen convolutional base keeps its running means), what it trains changed, adapters save only adapter + head
tensors; (c) save -> reload gives the same probabilities on the test images (1e-5) and the same test loss;
(d) `tunesmith export RUN --out DIR` (hf) writes a folder that transformers loads and that reproduces the run's
test_predictions.csv; (e) for full and lora, a run interrupted by a real SIGINT and resumed ends with the same
history, predictions and weights as the uninterrupted one, with random augmentation decoded ahead in a worker
process (so augmentation is seeded by (seed, epoch, image), not by the order of work). Strategies that cannot
train an image model are refused before any run folder exists.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tunesmith.cli import main as cli
from tunesmith.errors import TunesmithError
from tunesmith.strategies import get_strategy_class, strategy_names

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from image_fixtures import pretrain_tiny_vision, toy_images, write_folder  # noqa: E402

EPOCHS, BATCH, TRAIN = 12, 16, 64  # 4 steps per epoch, 48 optimizer steps
STEPS = EPOCHS * TRAIN // BATCH
UNFREEZE_EVERY = 12


@dataclass
class Cell:
    strategy: str
    options: dict = field(default_factory=dict)
    lr: float = 1e-2
    resume_at: int | None = None
    refused: str | None = None

    @property
    def id(self) -> str:
        return f"image-{self.strategy}" + ("-nf4" if self.options.get("quantize") else "")


CELLS = [
    Cell("full", resume_at=7),
    Cell("freeze", {"layers": 1}),
    Cell("discriminative-lr"),
    Cell("gradual-unfreeze", {"every": UNFREEZE_EVERY}),
    Cell("linear-probe", lr=3e-2),
    Cell("lora", {"r": 4}, lr=3e-2, resume_at=7),
    Cell("lora", {"r": 4, "quantize": "nf4"}, refused="nothing to quantize"),
    Cell("ia3", lr=5e-2),
    Cell("prompt-tuning", {"virtual_tokens": 4}, refused="no token embeddings"),
    Cell("prefix-tuning", {"virtual_tokens": 4}, refused="cannot train task image-classification"),
]
GROUPS = {"stem": ("stem_",), "block0": ("blocks.0.",), "block3": ("blocks.3.",), "top": ("head_", "classifier.")}
FROZEN = {  # groups equal to the pretrained weights and buffers, groups that changed
    "full": ((), ("stem", "block0", "block3", "top")),
    "discriminative-lr": ((), ("stem", "block0", "block3", "top")),
    "freeze": (("stem", "block0"), ("block3", "top")),
    "gradual-unfreeze": (("stem", "block0"), ("top",)),  # the head, then blocks 3, 2, 1 at steps 12, 24, 36
}
ADAPTER = {"lora": ("lora_A", "lora_B"), "ia3": ("ia3_l",)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract-images")
    pairs = toy_images(TRAIN + 48, seed=3)
    data = root / "data"
    write_folder(data / "train", pairs[:TRAIN])
    write_folder(data / "validation", pairs[TRAIN : TRAIN + 24], "val")
    write_folder(data / "test", pairs[TRAIN + 24 :], "test")
    return {"root": root, "model": pretrain_tiny_vision(root / "tiny"), "data": data}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(cell: Cell, assets, out: Path) -> dict:
    return {
        "name": cell.id,
        "task": "image-classification",
        "output_dir": str(out),
        "seed": 0,
        "data": {"path": str(assets["data"])},
        "model": {"name": str(assets["model"])},
        "images": {"augment": ["hflip", {"rotation": 10}], "workers": 1},
        "strategy": {"name": cell.strategy, **cell.options},
        "train": {
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "lr": cell.lr,
            "precision": "fp32",
            "warmup_ratio": 0.0,
            "eval_every": 16,
            "log_every": 4,
            "patience": None,
            "metric": "loss",
        },
        "eval": {"baseline": False, "robustness": False, "efficiency": False, "calibration": False},
        "audit": {"enabled": False},
        "tracking": {"backend": "none"},
    }


_RUNS: dict[str, tunesmith.Run] = {}


def trained(cell: Cell, assets) -> tunesmith.Run:
    if cell.id not in _RUNS:
        _RUNS[cell.id] = tunesmith.finetune(config(cell, assets, assets["root"] / "runs" / cell.id))
    return _RUNS[cell.id]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def image_files(assets) -> list[str]:
    return sorted(str(p) for p in (assets["data"] / "test").rglob("*.png"))


def test_the_image_column_covers_every_builtin_strategy():
    builtin = {n for n in strategy_names() if get_strategy_class(n).__module__.startswith("tunesmith.strategies.")}
    assert {c.strategy for c in CELLS} == builtin


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_contract_images(cell: Cell, assets, capsys):
    if cell.refused:
        out = assets["root"] / "refused" / cell.id
        with pytest.raises(TunesmithError, match=cell.refused):
            tunesmith.finetune(config(cell, assets, out))
        assert not out.exists() or not any(out.iterdir()), "refused before the run folder is created"
        return
    run = trained(cell, assets)
    m = run.metrics
    assert run.info["status"] == "complete" and m["steps"] == STEPS
    # (a) it learns: below the best constant prediction (balanced 3 classes: ln 3)
    assert m["test"]["loss"] < math.log(3) - 0.02, m["test"]["loss"]
    # (b) frozen is frozen (weights and batch-norm buffers), trained changed; adapters save only what they add
    saved, base = tensors(run.path / "model"), tensors(assets["model"])
    if cell.strategy in FROZEN:
        assert set(base) <= set(saved)
        frozen, trains = FROZEN[cell.strategy]
        for group in frozen:
            names = [n for n in base if n.startswith(GROUPS[group])]
            assert names and all(torch.equal(saved[n], base[n]) for n in names), f"{cell.id}: frozen {group} changed"
        for group in trains:
            names = [n for n in base if n.startswith(GROUPS[group]) and "num_batches" not in n]
            assert any(not torch.equal(saved[n], base[n]) for n in names), f"{cell.id}: {group} did not train"
        if cell.strategy == "gradual-unfreeze":  # the schedule is logged where it happens
            assert [h["step"] for h in history(run) if "event" in h] == [12, 24, 36]
    elif cell.strategy == "linear-probe":
        assert [f.name for f in (run.path / "model").glob("*.safetensors")] == ["head.safetensors"]
        assert saved and all(n.startswith("classifier.") for n in saved)
    else:
        markers = ADAPTER[cell.strategy]
        assert any(any(k in n for k in markers) for n in saved)
        strays = [n for n in saved if not any(k in n for k in markers) and "classifier" not in n]
        assert not strays, strays[:5]
        assert sum(t.numel() for t in saved.values()) < 0.5 * sum(t.numel() for t in base.values())
    # (c) save -> reload
    images = image_files(assets)
    a = run.predict_probs(images)
    b = tunesmith.load_run(run.path).predict_probs(images)
    assert a.shape == (len(images), 3) and torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    again = tunesmith.load_run(run.path).evaluate(str(assets["data"] / "test"), save=False)
    assert again["loss"] == pytest.approx(m["test"]["loss"], rel=1e-4)
    # (d) the hf export is a plain transformers folder computing what the run computed
    out = assets["root"] / "export" / cell.id
    capsys.readouterr()
    assert cli(["export", str(run.path), "--out", str(out)]) == 0, capsys.readouterr().err
    check_export(run, out)


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines() if line.strip()]


def check_export(run, out: Path) -> None:
    import numpy as np
    import pandas as pd
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import tunesmith.models.vision  # noqa: F401  (the MBConv family's Auto registration)

    assert not [n for n in tensors(out) if "lora_" in n or "ia3_" in n or "base_layer" in n]
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    preds = pd.read_csv(run.path / "test_predictions.csv")
    labels = json.loads((run.path / "labels.json").read_text())
    pixels = processor(images=[np.asarray(Image.open(p).convert("RGB")) for p in preds["image"]], return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels["pixel_values"]).logits.float(), -1)
    recorded = torch.tensor(preds[[f"p_{n}" for n in labels]].values, dtype=torch.float32)
    assert torch.allclose(probs, recorded, atol=1e-5 + 5e-6), (probs - recorded).abs().max()


# ---- (e) resume: interrupted by a real SIGINT in a subprocess, then `tunesmith train --resume`

_SCRIPT = """
import os, sys
from tunesmith.cli import main
os.environ["TUNESMITH_FAULT_AT_STEP"] = sys.argv[1] + ":INT"
sys.exit(main(["train", sys.argv[2]]))
"""


@pytest.mark.parametrize("cell", [c for c in CELLS if c.resume_at], ids=[c.id for c in CELLS if c.resume_at])
def test_resume_is_exact_with_augmentation_in_workers(cell: Cell, assets):
    import yaml

    folder = assets["root"] / "resume" / cell.id
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config(cell, assets, folder / "runs"), sort_keys=False))
    src = str(Path(tunesmith.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("TUNESMITH_FAULT_AT_STEP", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(cell.resume_at), str(path)],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    (run_dir,) = (folder / "runs").iterdir()
    assert cli(["train", "--resume", str(run_dir)]) == 0
    resumed, full = tunesmith.load_run(run_dir), trained(cell, assets)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("samples_per_s",)} for r in h]
    assert strip(history(resumed)) == strip(history(full))
    assert (resumed.path / "test_predictions.csv").read_text() == (full.path / "test_predictions.csv").read_text()
    a, b = tensors(resumed.path / "model"), tensors(full.path / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
