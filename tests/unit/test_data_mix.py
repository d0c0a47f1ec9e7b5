"""Weighted dataset mixes (`data.mix`) for generative tasks: loading per source, the weighted plan, a tiny run, mistakes."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from gen_fixtures import ANSWER, build_tiny_lm, toy_pairs, write_jsonl

from tunesmith import finetune
from tunesmith.config import load_config
from tunesmith.engine.batches import plan_steps
from tunesmith.engine.context import Context
from tunesmith.engine.mixing import Mixture
from tunesmith.errors import ConfigError, DataError
from tunesmith.tasks.generative.mix import load_mix_splits, mix_names, mixture, rows_by_source
from tunesmith.tasks.registry import build_task


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def tokenizer(llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama)


def colours(n: int) -> list[dict]:
    """'What colour is the cat?' -> ' The cat is red.'"""
    return [{"prompt": r["prompt"], "completion": " " + r["completion"]} for r in toy_pairs(n)]


def animals(n: int, long_every: int = 0) -> list[dict]:
    """'Which animal is red?' -> ' The cat.' (every `long_every`-th answer too long for 32 tokens)."""
    rows = []
    for i in range(n):
        a, c = list(ANSWER.items())[i % len(ANSWER)]
        long = long_every and i % long_every == 0
        rows.append(
            {"prompt": f"Which animal is {c}?", "completion": f" The {a}." + (" and so on" * 12 if long else "")}
        )
    return rows


def mix_config(tmp_path, model, sources, task="causal-lm", **data) -> dict:
    return {
        "name": "mix",
        "task": task,
        "output_dir": str(tmp_path / "runs"),
        # the toy prompts repeat by design: the leak-proof grouping and the leakage block are off (as in
        # tests/integration/test_generative_runs.py)
        "data": {"mix": sources, "max_length": 64, "group_near_duplicates": False, **data},
        "audit": {"block_on_leakage": False},
        "model": {"name": str(model)},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "lr": 3e-3, "batch_size": 8, "precision": "fp32", "patience": None, "log_every": 5},
        "generate": {"samples": 2, "max_new_tokens": 4},
        "tracking": {"backend": "none"},
    }


@pytest.fixture
def two_sources(tmp_path):
    """colours (60 rows, weight 0.7) and animals (120 rows, weight 0.3): the small source is the heavy one."""
    a = write_jsonl(tmp_path / "colours.jsonl", colours(60))
    b = write_jsonl(tmp_path / "animals.jsonl", animals(120))
    return [{"path": str(a), "weight": 0.7}, {"path": str(b), "weight": 0.3}]


def source_of(sample) -> str:
    """Which file a sample came from, read off its text (independent of the loader's bookkeeping)."""
    return "colours" if sample.prompt.startswith("What colour") else "animals"


# ---- (a) a run on a tiny random Llama


def test_a_mixed_run_trains_the_configured_shares_and_reports_the_test_loss_per_source(
    tmp_path, llama, two_sources, capsys
):
    run = finetune(load_config(mix_config(tmp_path, llama, two_sources)))
    out = capsys.readouterr().out
    m = run.metrics
    mix = m["mix"]
    assert list(mix) == ["colours", "animals"]
    assert mix["colours"]["rows"] == 48 and mix["animals"]["rows"] == 96
    steps_per_epoch = (48 + 96) // 8
    for name, weight in (("colours", 0.7), ("animals", 0.3)):
        assert mix[name]["configured"] == pytest.approx(weight)
        assert abs(mix[name]["share"] - weight) <= 1 / steps_per_epoch  # one draw per epoch, not 48/144 = 0.33
        assert math.isfinite(mix[name]["test_loss"]) and mix[name]["test_loss"] < mix[name]["before_test_loss"]
    assert sum(x["examples"] for x in mix.values()) == m["steps"] * 8
    assert "mix: colours 70% (48 train rows), animals 30% (96 train rows); each step drawn" in out
    assert "mix source" in out and "72.2%" in out
    report = (run.path / "report.md").read_text()
    assert "## Data mix" in report and "| colours | 48 | 0.7000 |" in report
    info = json.loads((run.path / "run.json").read_text())
    assert info["data"]["splits"]["test"]["mix"] == {"colours": 6, "animals": 12}
    assert info["mix"]["per"] == "step" and info["mix"]["shares"]["colours"] == pytest.approx(0.7)


# ---- (b) the loaded splits and the weighted plan


def test_each_source_is_split_on_its_own_and_its_samples_remember_it(tmp_path, llama, two_sources):
    splits = load_mix_splits(load_config(mix_config(tmp_path, llama, two_sources)))
    assert splits.mix["colours"] | {"path": None} == {
        "path": None,
        "weight": pytest.approx(0.7),
        "train": 48,
        "validation": 6,
        "test": 6,
    }
    assert (splits.mix["animals"]["train"], splits.mix["animals"]["test"]) == (96, 12)
    for split in (splits.train, splits.validation, splits.test):
        assert split.origins == [source_of(s) for s in split.samples]
    assert {source_of(s) for s in splits.test.samples[:2]} == {"colours", "animals"}  # generate.samples see both
    assert any("mix animals" in n and "120 rows -> train 96 / validation 12 / test 12" in n for n in splits.notes)

    # seeded per source name: reordering the sources leaves every source's split as it was
    again = load_mix_splits(load_config(mix_config(tmp_path, llama, two_sources[::-1])))
    for name in ("colours", "animals"):
        assert [s.prompt for s, o in zip(again.test.samples, again.test.origins) if o == name] == [
            s.prompt for s, o in zip(splits.test.samples, splits.test.origins) if o == name
        ]
    capped = load_mix_splits(load_config(mix_config(tmp_path, llama, two_sources, max_samples=30)))
    assert [sum(v[k] for k in ("train", "validation", "test")) for v in capped.mix.values()] == [30, 30]


@pytest.mark.parametrize("accum", [1, 2])
def test_the_planned_steps_realise_the_shares_and_draw_each_batch_from_one_source(
    tmp_path, llama, tokenizer, two_sources, accum
):
    cfg = load_config(mix_config(tmp_path, llama, two_sources))
    task = build_task(cfg)
    data = task.load_data()
    train = task.encode(data, tokenizer)["train"]
    mixed = mixture(train, data.splits.train, data.splits.mix, accum)
    assert isinstance(mixed, Mixture) and mixed.per == ("step" if accum == 1 else "micro-batch")
    totals, draws_total = Counter(), 0
    for epoch in range(4):
        steps = plan_steps(mixed, 8, accum, cfg.seed, epoch, True, 1)  # the loop's plan: the mixture's own
        assert len(steps) == 144 // (8 * accum) and all(len(step) == accum for step in steps)
        draws = [rows for step in steps for rows in step]  # one draw per step (accum 1) or micro-batch (accum 2)
        counts = Counter()
        for rows in draws:
            sources = {source_of(data.splits.train.samples[r]) for r in rows}
            assert len(sources) == 1 and len(rows) == 8
            counts[sources.pop()] += 1
        assert abs(counts["colours"] - 0.7 * len(draws)) <= 1  # up to one draw per epoch
        totals.update(counts)
        draws_total += len(draws)
    assert abs(totals["colours"] / draws_total - 0.7) <= 4 / draws_total


def test_rows_dropped_by_encoding_keep_their_sources(tmp_path, llama, tokenizer):
    """data.long_samples: drop removes samples while encoding: the rows after it still map to the right source."""
    a = write_jsonl(tmp_path / "colours.jsonl", colours(40))
    b = write_jsonl(tmp_path / "animals.jsonl", animals(40, long_every=3))
    sources = [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 1}]
    cfg = load_config(mix_config(tmp_path, llama, sources, max_length=24, long_samples="drop"))
    task = build_task(cfg)
    data = task.load_data()
    train = task.encode(data, tokenizer)["train"]
    assert len(train) < len(data.splits.train)  # some animals answers were dropped
    groups = rows_by_source(data.splits.train, train, list(data.splits.mix))
    assert sorted(r for g in groups for r in g) == list(range(len(train)))
    for name, rows in zip(data.splits.mix, groups):
        prefix = "What colour" if name == "colours" else "Which animal"
        assert rows and all(prefix in tokenizer.decode(train.ids[r]) for r in rows)


def test_seq2seq_trains_on_the_mixture_too(tmp_path, llama, tokenizer, two_sources):
    from accelerate import Accelerator

    cfg = load_config(mix_config(tmp_path, llama, two_sources, task="seq2seq"))
    task = build_task(cfg)
    batches = task.encode(task.load_data(), tokenizer)
    ctx = Context(Accelerator(cpu=True), cfg)
    train = task.train_batches(None, batches, None, ctx)
    assert isinstance(train, Mixture) and [len(g) for g in train.groups] == [48, 96]
    assert ctx.record["mix"]["shares"] == {"colours": pytest.approx(0.7), "animals": pytest.approx(0.3)}


def test_default_names_are_stems_unless_two_stems_clash(tmp_path, llama):
    cfg = load_config(
        mix_config(tmp_path, llama, [{"path": "a/x.jsonl"}, {"path": "b/x.jsonl"}, {"path": "c/y.jsonl", "name": "z"}])
    )
    assert mix_names(cfg.data.mix) == ["a/x.jsonl", "b/x.jsonl", "z"]


# ---- (c) mistakes: one line each, before anything trains


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: {"data": {"mix": s[:1]}}, "two or more sources"),
        (lambda s: {"data": {"mix": [{**x, "name": "same"} for x in s]}}, "share a name"),
        (lambda s: {"data": {"mix": s, "path": s[0]["path"]}}, "either `mix`"),
        (lambda s: {"data": {"mix": [s[0], {**s[1], "weight": 0}]}}, "weight must be positive"),
        (lambda s: {"data": {"mix": s, "packing": True}}, "set data.packing: false"),
        (lambda s: {"task": "text-classification"}, "data.mix is not used by task text-classification"),
    ],
)
def test_config_mistakes_are_one_clear_error(tmp_path, llama, two_sources, change, match):
    raw = mix_config(tmp_path, llama, two_sources)
    for section, value in change(two_sources).items():
        raw[section] = {**raw[section], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=match) as err:
        load_mix_splits(load_config(raw))  # packing is refused when the mix is read
    assert "\n" not in str(err.value)


def test_file_mistakes_name_the_entry_and_the_file(tmp_path, llama, two_sources):
    def error(sources) -> str:
        with pytest.raises(DataError) as err:
            load_mix_splits(load_config(mix_config(tmp_path, llama, sources)))
        assert "\n" not in str(err.value)
        return str(err.value)

    missing = str(tmp_path / "nope.jsonl")
    assert error([two_sources[0], {"path": missing}]).startswith(f"data.mix[1]: {missing}: no such file")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert error([two_sources[0], {"path": str(empty)}]).startswith(f"data.mix[1]: {empty}: ")
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}] * 20,
    )
    both = error([two_sources[0], {"path": str(chat)}])
    assert two_sources[0]["path"] in both and str(chat) in both and "completion" in both and "chat" in both
