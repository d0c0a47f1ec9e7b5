"""One contract, every registered strategy (tiny random BERT): it learns, freezes the right weights,
saves and reloads to identical predictions, merges/exports where it applies, and resumes exactly."""

import json

import pytest
import torch
from conftest import run_cli, tiny_config

import tunesmith
from tunesmith.errors import Interrupted
from tunesmith.strategies import build_strategy, get_strategy_class, register, strategy_names
from tunesmith.strategies.base import Strategy

LR = {"lora": 1e-2, "ia3": 3e-2, "prompt-tuning": 3e-2, "prefix-tuning": 3e-2, "linear-probe": 3e-2}
TEXTS = ["good table", "awful river", "stone paper", "great great fine", "dire bad nasty"]
BUILTIN = [
    "full",
    "freeze",
    "linear-probe",
    "gradual-unfreeze",
    "discriminative-lr",
    "lora",
    "ia3",
    "prompt-tuning",
    "prefix-tuning",
]


def _cfg(tmp_path, tiny_model, toy_csv, name, **train):
    strategy = {"name": name}
    if name == "gradual-unfreeze":
        strategy["every"] = 10
    if name == "freeze":
        strategy["layers"] = 1
    return tiny_config(
        tmp_path, tiny_model, toy_csv, strategy=strategy, train={"epochs": 4, "lr": LR.get(name, 3e-3), **train}
    )


def _trainable_after_prepare(name, tiny_model, options=None):
    from tunesmith.models.loading import ModelSource, load_classifier

    model = load_classifier(ModelSource("tiny", str(tiny_model), "local"), ["neg", "neu", "pos"], 0)
    strategy = build_strategy(name, options)
    model = strategy.prepare(model)
    return model, strategy, {n for n, p in model.named_parameters() if p.requires_grad}


def test_every_builtin_strategy_is_registered_with_a_summary():
    assert set(BUILTIN) <= set(strategy_names())
    for name in strategy_names():
        assert get_strategy_class(name).summary


@pytest.mark.parametrize("name", BUILTIN)
def test_strategy_contract(tmp_path, tiny_model, toy_csv, name):
    cfg = _cfg(tmp_path, tiny_model, toy_csv, name)
    run = tunesmith.finetune(cfg)
    history = [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert losses[-1] < losses[0], losses  # it learns something on a learnable task

    # 1. the right parameters train
    model, strategy, trainable = _trainable_after_prepare(name, tiny_model, tunesmith.load_config(cfg).strategy.options)
    everything = {n for n, _ in model.named_parameters()}
    head = {n for n in everything if "classifier" in n and "original_module" not in n}  # PEFT keeps a frozen copy
    assert head <= trainable or name in ("gradual-unfreeze",), "the head must train"
    if name in ("full", "discriminative-lr"):
        assert trainable == everything
    elif name == "freeze":
        assert trainable and not any("embeddings" in n or "layer.0." in n for n in trainable)
    elif name == "linear-probe":
        assert trainable == {n for n in everything if n.startswith("classifier.")}
    elif name == "gradual-unfreeze":
        assert trainable == {n for n in everything if n.startswith("classifier.") or "pooler" in n}
        assert any("unfroze" in h.get("event", "") or "trainable from step" in h.get("event", "") for h in history)
    else:  # PEFT adapters: the base is frozen, only adapter + head train
        assert all(
            ("lora_" in n or "ia3_" in n or "prompt_encoder" in n or "classifier" in n or "modules_to_save" in n)
            for n in trainable
        )
        assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) < 0.3 * sum(
            p.numel() for p in model.parameters()
        )
    assert (
        run.info["parameters"]["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
        or name == "gradual-unfreeze"
    )

    # 2. save -> reload -> identical predictions
    a = tunesmith.load_run(run.path).predict_probs(TEXTS)
    b = tunesmith.load_run(run.path).predict_probs(TEXTS)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)
    probs = json.loads((run.path / "metrics.json").read_text())["test"]
    assert probs["n"] > 0

    # 3. merge / export a plain transformers folder where it applies
    if getattr(strategy, "mergeable", True):
        out = tmp_path / "export"
        result = run_cli("export", str(run.path), "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert not any("lora" in n or "ia3" in n for n, _ in plain.named_parameters())
        tok = AutoTokenizer.from_pretrained(out)
        loaded = tunesmith.load_run(run.path)
        model = loaded.load().model
        inputs = tok(TEXTS, return_tensors="pt", padding=True)
        with torch.no_grad():  # both in fp32: merged weights must reproduce the adapter model
            merged_p = torch.softmax(plain(**inputs).logits, -1)
            adapter_p = torch.softmax(model(**inputs).logits, -1)
        assert torch.allclose(merged_p, adapter_p, atol=1e-5)
    else:
        result = run_cli("export", str(run.path), "--out", str(tmp_path / "export"))
        assert result.returncode == 2 and "cannot be merged" in result.stderr


@pytest.mark.parametrize("name", BUILTIN)
def test_strategy_resumes_exactly(tmp_path, tiny_model, toy_csv, name, monkeypatch):
    """Interrupted at step 13 (a real SIGINT) and resumed: same result as a straight run."""
    straight = tunesmith.finetune(_cfg(tmp_path / "a", tiny_model, toy_csv, name, eval_every=8))
    monkeypatch.setenv("TUNESMITH_FAULT_AT_STEP", "13:INT")
    with pytest.raises(Interrupted):
        tunesmith.finetune(_cfg(tmp_path / "b", tiny_model, toy_csv, name, eval_every=8))
    monkeypatch.delenv("TUNESMITH_FAULT_AT_STEP")
    run_dir = tunesmith.list_runs(tmp_path / "b" / "runs")[0].path
    resumed = tunesmith.finetune(resume=run_dir)
    assert resumed.metrics["test"]["loss"] == pytest.approx(straight.metrics["test"]["loss"], rel=1e-5)
    assert resumed.metrics["best_step"] == straight.metrics["best_step"]


def test_linear_probe_reuses_cached_features(tmp_path, tiny_model, toy_csv, capsys):
    tunesmith.finetune(_cfg(tmp_path, tiny_model, toy_csv, "linear-probe"))
    assert "computed in" in capsys.readouterr().out
    tunesmith.finetune(_cfg(tmp_path, tiny_model, toy_csv, "linear-probe"))
    lines = capsys.readouterr().out.splitlines()
    assert sum(ln.startswith("linear-probe:") and "from cache" in ln for ln in lines) == 3  # train/validation/test
    assert any(ln.startswith("audit: frozen") and "from cache" in ln for ln in lines)  # the audit's features too


def test_discriminative_lr_groups_decay_with_depth(tiny_model):
    model, strategy, _ = _trainable_after_prepare("discriminative-lr", tiny_model)
    groups = strategy.param_groups(model, lr=1.0, weight_decay=0.01)
    lrs = sorted({round(g["lr"], 6) for g in groups})
    decay = strategy.options.layer_lr_decay
    assert lrs == sorted({round(decay**k, 6) for k in range(4)})  # head, layer 2, layer 1, embeddings
    for g in groups:
        assert g["weight_decay"] == (0.0 if all(p.ndim < 2 for p in g["params"]) else 0.01)


def test_gradual_unfreeze_schedule(tiny_model):
    model, strategy, _ = _trainable_after_prepare("gradual-unfreeze", tiny_model)
    strategy.options.every = 5
    counts = []
    for step in (0, 5, 10, 15, 20):
        strategy.on_step(model, step, 12)
        counts.append(sum(p.requires_grad for p in model.parameters()))
    assert counts == sorted(counts) and counts[0] < counts[1] < counts[2] < counts[3] == counts[4]
    assert all(p.requires_grad for p in model.parameters())


def test_a_user_defined_strategy_in_one_file(tmp_path, tiny_model, toy_csv, monkeypatch):
    """README: write one file, register it."""
    (tmp_path / "my_bitfit.py").write_text(
        "from tunesmith.strategies import Strategy, register\n"
        "class BitFit(Strategy):\n"
        "    name = 'bitfit'\n"
        "    summary = 'Only biases + head train.'\n"
        "    def prepare(self, model):\n"
        "        for n, p in model.named_parameters():\n"
        "            p.requires_grad_(n.endswith('bias') or 'classifier' in n)\n"
        "        return model\n"
        "register(BitFit)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny_config(tmp_path, tiny_model, toy_csv, strategy={"name": "my_bitfit:BitFit"}, train={"epochs": 2})
    run = tunesmith.finetune(cfg)
    assert run.status == "complete" and "bitfit" in strategy_names()
    t = run.info["parameters"]["trainable"]
    assert 0 < t < 0.2 * run.info["parameters"]["total"]
    assert len(tunesmith.load_run(run.path).predict(["good"])) == 1
    assert issubclass(get_strategy_class("bitfit"), Strategy)
    register(get_strategy_class("bitfit"))  # idempotent


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_is_lora_on_a_quantized_base(tmp_path, tiny_model, toy_csv, kind):
    """QLoRA = the lora strategy + `quantize`: the base is 4/8-bit (bitsandbytes, on CPU), adapters + head train.

    Evaluation runs between training steps (eval_every), which is what broke bitsandbytes' CPU 4-bit repacking."""
    import bitsandbytes as bnb

    cfg = tiny_config(
        tmp_path,
        tiny_model,
        toy_csv,
        strategy={"name": "lora", "r": 4, "quantize": kind, "target_modules": ["query", "value"]},
        train={"epochs": 3, "lr": 1e-2, "precision": "bf16"},
    )
    run = tunesmith.finetune(cfg)
    history = [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert losses[-1] < losses[0]
    loaded = tunesmith.load_run(run.path)
    a = loaded.predict_probs(TEXTS)
    quantized = bnb.nn.Linear4bit if kind == "nf4" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, quantized) for m in loaded.load().model.modules())
    b = tunesmith.load_run(run.path).predict_probs(TEXTS)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)
    result = run_cli("export", str(run.path), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "cannot be merged" in result.stderr
