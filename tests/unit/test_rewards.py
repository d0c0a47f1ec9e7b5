"""Rewards for reward-tuning (GRPO): the built-in components, user functions, group advantages, faithfulness."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tunesmith.errors import ConfigError, DataError
from tunesmith.tasks.generative.generation import faithfulness, faithfulness_scores, generation_scores
from tunesmith.tasks.preference.rewards import build_rewards, group_advantages


def spec(kind, weight=1.0, keys=None, fn=None, max_words=None, name=None):
    return SimpleNamespace(kind=kind, weight=weight, keys=keys, fn=fn, max_words=max_words, name=name)


def one(s, completions, prompts=None, references=None) -> list[float]:
    r = build_rewards([s])
    n = len(completions)
    return r.score(completions, prompts or [""] * n, references or [None] * n)[r.names[0]]


# --------------------------------------------------------------------------------------------
# built-ins


def test_json_schema_is_graded_from_invalid_to_complete():
    got = one(
        spec("json_schema", keys=["name", "city"]),
        ["not json", '{"other": 1}', '{"name": "Ada"}', '```json\n{"name": "Ada", "city": "London", "x": 0}\n```'],
    )
    assert got == [0.0, 0.25, 0.5, 1.0]


def test_exact_whole_text_and_per_json_field():
    assert one(spec("exact"), ["  Paris ", "Lyon"], references=["paris", "Paris"]) == [1.0, 0.0]
    ref = json.dumps({"name": "Ada", "city": "London"})
    got = one(spec("exact"), ['{"name": "ada", "city": "Paris"}', ref, "no object"], references=[ref] * 3)
    assert got == [0.5, 1.0, 0.0]


def test_rouge_is_rouge_l_f1():
    got = one(spec("rouge"), ["the cat sat", "a dog ran", "the cat"], references=["the cat sat"] * 3)
    assert got[0] == pytest.approx(1.0) and got[1] == 0.0
    assert got[2] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))  # P = 1, R = 2/3


def test_exact_and_rouge_need_references():
    for kind in ("exact", "rouge"):
        with pytest.raises(DataError, match=rf"reward\[1\] \({kind}\).*1 of 2 prompts"):
            one(spec(kind), ["a", "b"], references=["a", None])


def test_length_is_one_up_to_max_words_then_falls_to_zero_at_twice():
    got = one(spec("length", max_words=4), ["a b c", "a b c d", "a b c d e f", "a " * 8, "a " * 20])
    assert got == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_faithfulness_reward_is_zero_when_nothing_to_judge():
    prompt = "Ada Lovelace lives in London."
    got = one(spec("faithfulness"), ['{"name": "Ada Lovelace", "city": "Paris"}', "prose"], prompts=[prompt] * 2)
    assert got == [0.5, 0.0]


# --------------------------------------------------------------------------------------------
# composing, naming, checking


def test_total_is_the_weighted_sum():
    r = build_rewards([spec("json_schema", weight=2.0, keys=["a"]), spec("length", weight=0.5, max_words=1)])
    parts = r.score(['{"a": 1}', "x y"], ["", ""], [None, None])
    assert r.weights == [2.0, 0.5]
    assert r.total(parts) == pytest.approx([2.0 * 1.0 + 0.5 * 0.0, 2.0 * 0.0 + 0.5 * 0.0])
    assert r.total({"json_schema": [0.5], "length": [1.0]}) == [1.5]


def test_names_are_unique():
    r = build_rewards([spec("length", max_words=3), spec("exact"), spec("length", max_words=9)])
    assert r.names == ["length_1", "exact", "length_3"]
    r = build_rewards([spec("exact", name="length"), spec("length", max_words=3)])
    assert r.names == ["length", "length_2"]
    with pytest.raises(ConfigError, match=r"reward\[2\]\.name.*reward\[1\]"):
        build_rewards([spec("exact", name="x"), spec("rouge", name="x")])


def test_config_mistakes_name_the_component():
    with pytest.raises(ConfigError, match="empty"):
        build_rewards([])
    with pytest.raises(ConfigError, match=r"reward\[2\]\.kind.*'bleu'.*json_schema"):
        build_rewards([spec("exact"), spec("bleu")])
    with pytest.raises(ConfigError, match=r"reward\[1\].*keys"):
        build_rewards([spec("json_schema")])
    with pytest.raises(ConfigError, match=r"reward\[1\].*max_words"):
        build_rewards([spec("length")])
    with pytest.raises(ConfigError, match=r"reward\[1\]\.fn.*module:function"):
        build_rewards([spec("python")])
    with pytest.raises(ConfigError, match=r"reward\[1\]\.fn: cannot import 'no_such_rewards:f'.*no_such_rewards\.py"):
        build_rewards([spec("python", fn="no_such_rewards:f")])


# --------------------------------------------------------------------------------------------
# the user's own function

USER = """
def short(completions, prompts, references):
    return [1.0 / (1 + len(c)) for c in completions]

def wrong_length(completions, prompts, references):
    return [1.0]

def nan(completions, prompts, references):
    return [float("nan")] * len(completions)

def words(completions, prompts, references):
    return ["high"] * len(completions)

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_t.py").write_text(USER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_rewards_t.py"


def test_python_reward_from_the_path_and_from_a_file(user_module):
    r = build_rewards([spec("python", fn="my_rewards_t:short"), spec("python", fn=f"{user_module}:short", name="f")])
    assert r.names == ["short", "f"]
    parts = r.score(["", "abc"], ["p", "p"], [None, None])
    assert parts == {"short": [1.0, 0.25], "f": [1.0, 0.25]}


@pytest.mark.parametrize("fn", ["wrong_length", "nan", "words"])
def test_python_reward_with_a_bad_answer_raises_naming_it(user_module, fn):
    r = build_rewards([spec("python", fn=f"my_rewards_t:{fn}")])
    with pytest.raises(DataError, match=rf"reward function {fn} \(my_rewards_t:{fn}\)"):
        r.score(["a", "b"], ["p", "p"], [None, None])


def test_python_reward_that_is_missing_or_not_callable(user_module):
    with pytest.raises(ConfigError, match=r"reward\[1\]\.fn: cannot import 'my_rewards_t:absent'"):
        build_rewards([spec("python", fn="my_rewards_t:absent")])
    with pytest.raises(ConfigError, match="not a function"):
        build_rewards([spec("python", fn="my_rewards_t:NOT_A_FUNCTION")])


# --------------------------------------------------------------------------------------------
# group-relative advantages


def test_group_advantages_normalise_each_group():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 10.0, 5.0, 0.0, 5.0, 0.0])
    adv = group_advantages(rewards, k=4).view(3, 4)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(adv[[0, 2]].std(dim=1), torch.ones(2), atol=1e-3)  # unbiased std, as TRL
    assert torch.equal(adv[1], torch.zeros(4))  # all equal: no signal, and no NaN
    want = (rewards[:4] - rewards[:4].mean()) / (rewards[:4].std() + 1e-4)
    assert torch.allclose(adv[0], want)


def test_group_advantages_unscaled_only_centre():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    assert torch.allclose(group_advantages(rewards, k=3, scale=False), torch.tensor([-1.0, 0, 1, 0, 0, 0]))
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.9]), k=1), torch.zeros(2))


# --------------------------------------------------------------------------------------------
# faithfulness


SOURCE = "Invoice  from ACME Corp, dated 2024-03-01. Total due: 150 EUR."


def test_faithfulness_counts_copied_values_not_invented_ones():
    copied = json.dumps({"vendor": "Acme corp", "date": "2024-03-01", "total": 150})
    assert faithfulness(copied, SOURCE) == 1.0  # keys None: the string values only
    assert faithfulness(copied, SOURCE, ["vendor", "total"]) == 1.0
    invented = json.dumps({"vendor": "Acme Corporation", "date": "2024-03-01", "total": 15, "notes": ["EUR", "paid"]})
    assert faithfulness(invented, SOURCE) == 0.5  # "Acme Corporation", "paid" invented; "2024-03-01", "EUR" copied
    assert faithfulness(invented, SOURCE, ["total"]) == 0.0  # 15 is not the 150 of the text


def test_faithfulness_is_none_without_an_extraction():
    assert faithfulness("Acme Corp", SOURCE) is None
    assert faithfulness("[1, 2]", SOURCE) is None
    assert faithfulness('{"n": 3, "ok": true}', SOURCE) is None
    assert faithfulness('{"vendor": "Acme"}', SOURCE, ["date"]) is None


def test_faithfulness_scores_and_generation_scores_with_sources():
    preds = ['{"vendor": "ACME Corp"}', '{"vendor": "Globex"}', "no json"]
    refs = ['{"vendor": "ACME Corp"}'] * 3
    assert faithfulness_scores(preds, [SOURCE] * 3, ["vendor"]) == {
        "faithful_rate": 0.5,
        "faithful_judged": pytest.approx(2 / 3),
    }
    assert faithfulness_scores(["x"], [SOURCE])["faithful_rate"] is None
    plain = generation_scores(preds, refs, ["vendor"])
    with_sources = generation_scores(preds, refs, ["vendor"], sources=[SOURCE] * 3)
    assert "faithful_rate" not in plain
    assert set(with_sources) - set(plain) == {"faithful_rate", "faithful_judged"}
    assert with_sources["faithful_rate"] == 0.5
    assert set(generation_scores(preds, refs, sources=[SOURCE] * 3)) == set(generation_scores(preds, refs))
