"""The loop on a tiny random BERT: learning, strategies, accumulation, resume, run folder."""

import json

import pytest
import torch
from conftest import run_cli, tiny_config, write_yaml
from safetensors.torch import load_file

import tunesmith
from tunesmith.models.loading import ModelSource, load_classifier
from tunesmith.strategies import build_strategy, count_parameters


def _final_weights(run) -> dict:
    folder = run.path / "model"
    files = list(folder.glob("*.safetensors"))
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def assert_same_weights(wa: dict, wb: dict, atol: float) -> None:
    assert wa.keys() == wb.keys()
    for k in wa:
        # Attention key biases get a zero gradient in exact arithmetic (softmax ignores a constant shift);
        # Adam turns their rounding noise into full-size steps, so they are not comparable.
        if not k.endswith("key.bias"):
            assert torch.allclose(wa[k], wb[k], atol=atol), k


def test_full_run_learns_and_leaves_a_complete_folder(tmp_path, tiny_model, toy_csv):
    run = tunesmith.finetune(tiny_config(tmp_path, tiny_model, toy_csv, eval={"baseline": True}))
    m = run.metrics
    history = [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    assert m["test"]["macro_f1"] > 0.7  # chance is 0.33
    assert m["baseline"]["test"]["macro_f1"] > 0.5
    for name in [
        "config.yaml",
        "labels.json",
        "run.json",
        "metrics.json",
        "report.md",
        "history.jsonl",
        "confusion_matrix.png",
        "training_curves.png",
        "test_predictions.csv",
        "model/config.json",
        "model/tokenizer.json",
    ]:
        assert (run.path / name).is_file(), name
    assert not (run.path / "checkpoints").exists()  # removed after success
    assert not [p for p in run.path.rglob("*") if p.name.endswith(".tmp")]
    assert run.status == "complete"
    assert json.loads((run.path / "labels.json").read_text()) == ["neg", "neu", "pos"]
    assert m["test"]["confusion_matrix"] and set(m["test"]["per_class"]) == {"neg", "neu", "pos"}

    reloaded = tunesmith.load_run(run.path)
    preds = reloaded.predict(["it was good good great", "bad awful table", "river chair stone"])
    assert [p.label for p in preds] == ["pos", "neg", "neu"]
    assert abs(sum(preds[0].probs.values()) - 1) < 1e-4


@pytest.mark.parametrize("strategy", [{"name": "full"}, {"name": "freeze", "layers": 1}, {"name": "lora", "r": 4}])
def test_strategy_contract(tmp_path, tiny_model, toy_csv, strategy):
    """Same checks for every strategy: loss falls, the right weights change, save/reload predicts the same."""
    cfg = tiny_config(
        tmp_path,
        tiny_model,
        toy_csv,
        strategy=strategy,
        train={"epochs": 3, "lr": 1e-2 if strategy["name"] == "lora" else 3e-3},
    )
    run = tunesmith.finetune(cfg)
    history = [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert losses[-1] < losses[0]

    # which parameters trained, checked on a freshly prepared model
    source = ModelSource(str(tiny_model), str(tiny_model), "local")
    model = build_strategy(strategy["name"], tunesmith.load_config(cfg).strategy.options).prepare(
        load_classifier(source, ["neg", "neu", "pos"], 0)
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    t, total = count_parameters(model)
    assert run.info["parameters"] == {"trainable": t, "total": total}
    if strategy["name"] == "full":
        assert t == total
    elif strategy["name"] == "freeze":
        assert all(("layer.1." in n) or ("pooler" in n) or ("classifier" in n) for n in trainable)
        assert not any("embeddings" in n or "layer.0." in n for n in trainable)
    else:
        assert all("lora_" in n or "classifier" in n for n in trainable) and t < 0.2 * total

    # frozen weights did not change; trained ones did
    base = load_file(str(tiny_model / "model.safetensors"))
    saved = _final_weights(run)
    if strategy["name"] == "freeze":
        assert torch.equal(saved["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])
        assert torch.equal(
            saved["bert.encoder.layer.0.attention.self.query.weight"],
            base["encoder.layer.0.attention.self.query.weight"],
        )
        assert not torch.equal(
            saved["bert.encoder.layer.1.attention.self.query.weight"],
            base["encoder.layer.1.attention.self.query.weight"],
        )
    if strategy["name"] == "lora":
        assert set(saved) and all("lora_" in k or "classifier" in k for k in saved)  # the adapter only

    texts = ["good table", "awful river", "stone paper"]
    first = tunesmith.load_run(run.path).predict_probs(texts)
    second = tunesmith.load_run(run.path).predict_probs(texts)
    assert first.shape == (3, 3) and torch.allclose(torch.tensor(first), torch.tensor(second))
    assert (run.path / "model").is_dir()


def test_gradient_accumulation_matches_a_large_batch(tmp_path, tiny_model, toy_csv):
    """16 x 1 and 8 x 2 accumulation see the same examples per step and must end at the same weights."""
    common = {"epochs": 2, "eval_every": 100, "group_by_length": True}
    a = tunesmith.finetune(
        tiny_config(tmp_path / "a", tiny_model, toy_csv, train={**common, "batch_size": 16, "grad_accum": 1})
    )
    b = tunesmith.finetune(
        tiny_config(tmp_path / "b", tiny_model, toy_csv, train={**common, "batch_size": 8, "grad_accum": 2})
    )
    assert_same_weights(_final_weights(a), _final_weights(b), atol=5e-5)
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-4)


def test_early_stopping_stops(tmp_path, tiny_model, toy_csv):
    cfg = tiny_config(
        tmp_path,
        tiny_model,
        toy_csv,
        train={"epochs": 30, "eval_every": 4, "patience": 2, "lr": 1e-6, "metric": "accuracy"},
    )
    run = tunesmith.finetune(cfg)
    assert run.metrics["stopped_early"] is True
    assert run.metrics["steps"] < 30 * 12


@pytest.mark.parametrize("signal_name", ["INT", "KILL"])
def test_interrupted_run_resumes_to_identical_result(tmp_path, tiny_model, toy_csv, signal_name):
    """A run stopped mid-way (Ctrl-C, or killed outright) and resumed ends exactly like an uninterrupted one."""
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, train={"epochs": 3, "eval_every": 8})
    cfg["strategy"] = {"name": "lora", "r": 4, "dropout": 0.1}  # dropout: the RNG state must be restored too
    cfg["train"]["lr"] = 1e-2
    config = write_yaml(tmp_path / "c.yaml", cfg)

    straight = run_cli("train", str(config))
    assert straight.returncode == 0, straight.stderr[-2000:]

    stopped = run_cli("train", str(config), env={"TUNESMITH_FAULT_AT_STEP": f"13:{signal_name}"})
    assert stopped.returncode == (130 if signal_name == "INT" else -9), stopped.stderr[-2000:]
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    run_dir = [r for r in runs if json.loads((r / "run.json").read_text())["status"] != "complete"][0]
    state = json.loads((run_dir / "checkpoints/last/state.json").read_text())
    assert state["step"] == (13 if signal_name == "INT" else 8)
    if signal_name == "INT":
        assert "tunesmith train --resume" in stopped.stderr

    resumed = run_cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {state['step']}" in resumed.stdout + resumed.stderr
    done = [tunesmith.load_run(r.parent) for r in sorted((tmp_path / "runs").glob("*/run.json"))]
    a, b = [r for r in done if r.path != run_dir][0], tunesmith.load_run(run_dir)
    assert b.status == "complete"
    assert a.metrics["test"]["macro_f1"] == pytest.approx(b.metrics["test"]["macro_f1"])
    assert a.metrics["test"]["loss"] == pytest.approx(b.metrics["test"]["loss"], rel=1e-5)
    wa, wb = _final_weights(a), _final_weights(b)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
