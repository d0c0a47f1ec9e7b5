"""Generative tasks on a tiny tokenizer and random Llama / GPT-2: rendering and loss masks, lint, packing, scores."""

from __future__ import annotations

import json
import math

import pytest
import torch
from gen_fixtures import build_tiny_lm, build_tokenizer, toy_pairs

from tunesmith.tasks.generative.batches import LMData, PackedLMData, causal_lm_loss, packing_is_exact
from tunesmith.tasks.generative.formats import DEFAULT_CHAT_TEMPLATE, IGNORE, Sample, prompt_ids, render
from tunesmith.tasks.generative.generation import generation_scores, json_scores, parse_json_object
from tunesmith.tasks.generative.lint import lint


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = build_tokenizer(tmp_path_factory.mktemp("tok"))
    t.chat_template = DEFAULT_CHAT_TEMPLATE
    return t


def trained_text(tok, r) -> str:
    return tok.decode([t for t in r.labels if t != IGNORE])


# ---- rendering: what trains


def test_completion_trains_completion_and_eos_only(tok):
    s = Sample(0, prompt="What colour is the cat?", completion=" The cat is red.")
    r = render(tok, s, "causal-lm", 64, add_eos=True)
    assert trained_text(tok, r) == " The cat is red.</s>"
    assert r.ids[: len(prompt_ids(tok, s))] == prompt_ids(tok, s)  # the inference prompt, token for token
    assert r.labels[0] == IGNORE


def test_chat_trains_every_assistant_turn_and_nothing_else(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "cat?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "dog?"},
        {"role": "assistant", "content": "blue"},
    ]
    r = render(tok, Sample(0, messages=msgs), "causal-lm", 128, add_eos=True)
    pieces = tok.decode(
        [t if y != IGNORE else tok.pad_token_id for t, y in zip(r.ids, r.labels)], skip_special_tokens=False
    )
    trained = [p for p in pieces.split("<pad>") if p]
    assert trained == ["red</s>\n\n", "blue</s>\n\n"]
    assert "Be brief" not in trained_text(tok, r) and "cat?" not in trained_text(tok, r)


def test_truncation_inside_the_completion_is_flagged(tok):
    s = Sample(0, prompt="What colour is the cat? " * 6, completion=" The cat is red.")
    assert render(tok, s, "causal-lm", 20, add_eos=True).truncated_target
    assert not render(tok, s, "causal-lm", 200, add_eos=True).truncated_target


# ---- lint: the planted mistakes


def pairs(n=12):
    return [Sample(i, prompt=r["prompt"], completion=" " + r["completion"]) for i, r in enumerate(toy_pairs(n))]


def test_lint_passes_clean_data(tok):
    rep = lint(tok, pairs(), "causal-lm", 64, add_eos=True)
    assert rep.ok, rep.errors
    assert "[[" in rep.shown[0] and rep.stats["no_eos"] == 0


def test_lint_catches_missing_eos(tok):
    rep = lint(tok, pairs(), "causal-lm", 64, add_eos=False)
    assert not rep.ok and "end-of-sequence" in rep.errors[0] and "12 of 12" in rep.errors[0]


def test_lint_catches_a_template_that_drops_eos(tok):
    template = DEFAULT_CHAT_TEMPLATE.replace("{{ eos_token }}", "")
    tok2 = type(tok).from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    tok2.chat_template = template
    chats = [
        Sample(
            i, messages=[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
        )
        for i, r in enumerate(toy_pairs(5))
    ]
    rep = lint(tok2, chats, "causal-lm", 64, add_eos=True)
    assert any("end-of-sequence" in e for e in rep.errors)


def test_lint_catches_a_template_mismatch(tok):
    # Prompts pre-rendered with the Llama-2 template, while this run renders with its own template.
    data = [
        Sample(i, prompt=f"[INST] {r['prompt']} [/INST]", completion=" " + r["completion"])
        for i, r in enumerate(toy_pairs(6))
    ]
    rep = lint(tok, data, "causal-lm", 64, add_eos=True)
    assert any("Llama-2" in e and "chat template" in e for e in rep.errors)


def test_lint_catches_a_boundary_that_tokenizes_differently(tok):
    # A trailing space in the prompt: at inference the model sees " " as its own token, in training it merges.
    data = [Sample(i, prompt=r["prompt"] + " ", completion=r["completion"]) for i, r in enumerate(toy_pairs(6))]
    rep = lint(tok, data, "causal-lm", 64, add_eos=True)
    assert any("differ from the prompt tokens at inference" in e for e in rep.errors)


def test_lint_catches_truncation_and_empty_targets(tok):
    long = [Sample(0, prompt="What colour is the cat? " * 8, completion=" red")]
    assert any("truncated inside the completion" in e for e in lint(tok, long, "causal-lm", 24, True).errors)
    assert lint(tok, long, "causal-lm", 24, True, long_samples="drop").ok
    empty = [Sample(0, prompt="What colour is the cat? " * 8, completion="")]
    rep = lint(tok, empty, "causal-lm", 24, add_eos=False)
    assert any("train no token" in e or "truncated" in e for e in rep.errors)


# ---- packing


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packed_loss_equals_unpacked_loss(tmp_path, kind):
    from transformers import AutoModelForCausalLM

    folder = build_tiny_lm(tmp_path / kind, kind)
    tok = build_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert packing_is_exact(model, "cpu")
    rendered = [render(tok, s, "causal-lm", 64, True) for s in pairs(10)]
    ids, labels = [r.ids for r in rendered], [r.labels for r in rendered]
    plain, packed = LMData(ids, labels, tok.pad_token_id), PackedLMData(ids, labels, 64, tok.pad_token_id)
    assert len(packed) < len(plain) and packed.units(range(len(packed))) == plain.units(range(len(plain)))
    with torch.no_grad():
        a = causal_lm_loss(model, plain.batch(list(range(len(plain)))))
        b = causal_lm_loss(model, packed.batch(list(range(len(packed)))))
    assert math.isclose(a.item(), b.item(), rel_tol=1e-4)


# ---- scores


def test_generation_scores_on_constructed_cases():
    refs = ["The cat is red.", "The dog is blue."]
    perfect = generation_scores(refs, refs)
    assert perfect["exact_match"] == 1.0 and perfect["rougeL"] == 1.0 and perfect["bleu"] > 99 and perfect["chrf"] > 99
    wrong = generation_scores(["no", "no"], refs)
    assert wrong["exact_match"] == 0.0 and wrong["rougeL"] == 0.0


def test_json_scores():
    refs = [
        json.dumps({"name": "a", "kind": "x"}),
        json.dumps({"name": "b", "kind": "y"}),
        json.dumps({"name": "c", "kind": "z"}),
    ]
    preds = ['{"name": "a", "kind": "x"}', '```json\n{"name": "b", "kind": "q"}\n```', '{"name": "c"']
    s = json_scores(preds, refs, ["name", "kind"])
    assert s["json_valid"] == pytest.approx(2 / 3)
    assert s["field_name"] == pytest.approx(2 / 3) and s["field_kind"] == pytest.approx(1 / 3)
    assert parse_json_object("[1, 2]") is None and parse_json_object(' {"a": 1} ') == {"a": 1}
