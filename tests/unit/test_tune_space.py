"""The `tune:` section and the search space (groundwork of `tunesmith tune`, issue #16)."""

from __future__ import annotations

import optuna
import pytest

from tunesmith.config.loader import load_config
from tunesmith.errors import ConfigError
from tunesmith.tools.tune_space import check_space, sample, search_space, trial_dict

BASE = {"data": {"train": "x.csv"}, "model": {"name": "minilm"}, "strategy": {"name": "lora", "r": 8}}


def cfg_with(space: dict, **tune):
    return load_config({**BASE, "tune": {"space": space, **tune}})


@pytest.fixture(autouse=True)
def _data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("text,label\na,x\nb,y\n")


@pytest.mark.parametrize(
    "spec, says",
    [
        ({"float": [1e-3, 1e-5]}, "is empty"),
        ({"float": [0.0, 1.0], "log": True}, "must be positive"),
        ({"categorical": ["full"]}, "at least two choices"),
        ({"int": [1.5, 3]}, "whole numbers"),
        ({"float": [1, 2], "bins": 3}, "unknown setting"),
        ({"float": [1, 2], "int": [1, 2]}, "exactly one"),
    ],
)
def test_impossible_specs_are_one_line_errors(spec, says):
    with pytest.raises(ConfigError, match=says):
        cfg_with({"train.lr": spec})


def test_yaml_numbers_without_a_dot_are_numbers():
    (p,) = cfg_with({"train.lr": {"float": ["1e-5", "1e-3"], "log": True}}).tune.params()
    assert (p.low, p.high) == (1e-5, 1e-3)


def test_unknown_keys_and_keys_of_the_wrong_strategy_fail_before_any_trial():
    cfg = cfg_with({"train.lrr": {"float": [1e-5, 1e-3]}})
    with pytest.raises(ConfigError, match="lrr"):
        check_space(cfg, search_space(cfg))
    cfg = cfg_with({"strategy.name": {"categorical": ["full", "lora"]}, "strategy.r": {"int": [4, 32]}})
    with pytest.raises(ConfigError, match="strategy.name=full"):
        check_space(cfg, search_space(cfg))


def test_keys_that_move_rows_between_splits_are_refused():
    for key in ("seed", "data.validation_size", "data.max_samples"):
        cfg = cfg_with({key: {"int": [1, 3]} if key != "data.validation_size" else {"float": [0.1, 0.3]}})
        with pytest.raises(ConfigError, match="same splits"):
            check_space(cfg, search_space(cfg))


def test_conditional_keys_sample_only_valid_configs():
    space = {
        "strategy.name": {"categorical": ["full", "lora"]},
        "strategy.r": {"int": [4, 32], "log": True, "when": {"strategy.name": "lora"}},
        "strategy.target_modules": {"categorical": [None, ["all-linear"]], "when": {"strategy.name": "lora"}},
        "train.lr": {"float": [1e-5, 1e-3], "log": True},
    }
    cfg = cfg_with(space)
    params = search_space(cfg)
    check_space(cfg, params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = sample(trial, params, {"strategy.name": "lora"})
        built = load_config(trial_dict(cfg, values))
        seen.add(built.strategy.name)
        if built.strategy.name == "full":
            assert set(values) == {"strategy.name", "train.lr"}
        else:
            assert 4 <= built.strategy.options.r <= 32
            assert built.strategy.options.target_modules in (None, ["all-linear"])
        study.tell(trial, 0.0)
    assert seen == {"full", "lora"}


def test_default_space_comes_from_the_strategy():
    keys = [p.key for p in search_space(load_config(BASE))]
    assert {"train.lr", "train.warmup_ratio", "train.epochs", "strategy.r", "strategy.alpha"} <= set(keys)
    full = [p for p in search_space(load_config({**BASE, "strategy": {"name": "full"}})) if p.key == "train.lr"]
    assert full[0].high <= 1e-4  # full fine-tuning searches lower learning rates than LoRA


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_both_pruners_stop_a_trial_far_below_the_others_and_keep_one_like_them(tmp_path, pruner):
    from tunesmith.tools.tune_trial import open_study

    cfg = cfg_with({"train.lr": {"float": [1e-4, 1e-3]}}, pruner=pruner, startup_trials=2)
    meta = {"storage": f"sqlite:///{tmp_path / 's.db'}", "study": pruner, "directions": ["maximize"]}
    study = open_study(meta, cfg)

    def run(score, evaluations=8):
        """A trial reporting `score(evaluation)` as the loop does; the evaluation at which it was pruned, or None."""
        t = study.ask()
        for e in range(1, evaluations + 1):
            t.report(score(e), e)
            if t.should_prune():
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                return e
        study.tell(t, score(evaluations))
        return None

    for k in range(8):  # good trials, each a little different
        assert run(lambda e, k=k: 0.5 + 0.02 * e + 0.001 * k) is None or pruner == "hyperband"
    assert run(lambda e: 0.1) is not None  # far below every earlier trial at every evaluation: stopped early
    assert run(lambda e: 0.6 + 0.03 * e) is None  # better than all of them: runs to its end
