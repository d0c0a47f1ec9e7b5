"""Data hygiene for generative tasks: leak-proof splits and the duplicate/leakage audit on prompt + response."""

from __future__ import annotations

import pytest
from gen_fixtures import build_tokenizer, toy_pairs, write_jsonl

from tunesmith import load_config
from tunesmith.errors import DataError
from tunesmith.tasks import build_task
from tunesmith.tasks.generative.formats import chat_template_for, sample_text


def _config(tmp_path, **data):
    return load_config({"task": "causal-lm", "data": {"max_length": 64, **data}, "model": {"name": str(tmp_path)}})


def test_one_file_is_split_with_duplicates_on_one_side(tmp_path):
    rows = [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(120)]  # ~8 distinct pairs
    data = build_task(_config(tmp_path, path=str(write_jsonl(tmp_path / "p.jsonl", rows)))).load_data()
    s = data.splits
    texts = {name: {sample_text(x) for x in split.samples} for name, split in (("train", s.train), ("test", s.test))}
    assert texts["train"] and texts["test"] and not texts["train"] & texts["test"]
    assert any("near duplicates stay on one side" in n for n in data.notes)
    assert len(s.train) + len(s.validation) + len(s.test) == 120


def test_the_audit_blocks_a_test_file_that_repeats_training_samples(tmp_path):
    rows = [{"prompt": f"Describe item {i}.", "completion": f" Item {i} is number {i * 7}."} for i in range(40)]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:30])
    test = write_jsonl(tmp_path / "test.jsonl", rows[25:])  # 5 of 15 test rows are training rows
    valid = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "Describe item x.", "completion": " Item x is a letter."}])
    cfg = _config(tmp_path, train=str(train), validation=str(valid), test=str(test))
    task = build_task(cfg)
    tok = build_tokenizer(tmp_path / "tok")
    tok.chat_template = chat_template_for(tok, None)  # what the task's load_tokenizer does
    with pytest.raises(DataError, match="test"):
        task.check_data(task.load_data(), tok)
    cfg.audit.block_on_leakage = False
    findings = build_task(cfg).check_data(task.load_data(), tok)
    assert findings.record["audit"] and any(line.startswith("audit:") for line in findings.lines)


def test_a_split_made_by_tunesmith_never_trips_its_own_leakage_check(tmp_path):
    """Near duplicates around the threshold: the split groups them with the audit's own settings (not the run's
    seed), so the audit of that split finds nothing to block (it did on the Debian demo data)."""
    import random

    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma tau omega".split()
    base = [" ".join(rng.choices(words, k=12)) for _ in range(40)]
    rows = []
    for i in range(240):
        text = base[i % 40].split()
        for _ in range(rng.randint(0, 4)):  # 0-4 words changed: Jaccard of shingles from ~1 down past 0.7
            text[rng.randrange(len(text))] = rng.choice(words)
        rows.append({"prompt": "Summarise: " + " ".join(text), "completion": f" {text[0]} {text[-1]}"})
    cfg = load_config(
        {
            "task": "causal-lm",
            "seed": 0,
            "data": {"path": str(write_jsonl(tmp_path / "n.jsonl", rows)), "max_length": 512},
            "model": {"name": str(tmp_path)},
        }
    )
    task = build_task(cfg)
    data = task.load_data()
    tok = build_tokenizer(tmp_path / "tok")
    tok.chat_template = chat_template_for(tok, None)
    findings = task.check_data(data, tok)  # raises DataError on leakage
    assert findings.record["audit"]["train.near_duplicate_clusters"] > 0
