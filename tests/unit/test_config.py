import ast
import inspect
from pathlib import Path

import pytest
import yaml

from tunesmith.config import Config, config_to_dict, load_config
from tunesmith.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "configs").rglob("*.yml"))
assert SHIPPED, "no shipped configs found"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_exist():
    assert len(SHIPPED) >= 1


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # The header says how to run it.
    assert "tunesmith train" in path.read_text().split("\n\n")[0]
    # Round trip: the resolved config is itself a valid config.
    assert config_to_dict(load_config(config_to_dict(cfg))) == config_to_dict(cfg)


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    p = write(tmp_path, "data:\n  path: x.csv\ntrain:\n  epochs: 1\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "line 5" in msg and "'lrr'" in msg and "did you mean 'lr'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'.*did you mean 'train'"):
        load_config(write(tmp_path, "data: {path: x.csv}\ntrian: {lr: 1}\n"))


def test_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3: train.batch_size must be int, got 'many'"):
        load_config(write(tmp_path, "data: {path: x.csv}\ntrain:\n  batch_size: many\n"))


def test_literal_choice_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="train.precision='bf61' is not one of.*did you mean 'bf16'"):
        load_config(write(tmp_path, "data: {path: x.csv}\ntrain: {precision: bf61}\n"))


def test_malformed_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line \d+: malformed YAML"):
        load_config(write(tmp_path, "data:\n  path: [x.csv\ntrain: {\n"))


def test_overrides_are_typed(tmp_path):
    p = write(tmp_path, "data: {path: x.csv}\nstrategy: {name: lora}\n")
    cfg = load_config(p, ["train.lr=3e-4", "strategy.r=16", "train.max_grad_norm=null", "data.labels=[a,b]"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.strategy.options.r == 16
    assert cfg.train.max_grad_norm is None
    assert cfg.data.labels == ["a", "b"]


def test_bad_override_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'lrate' in train; did you mean 'lr'"):
        load_config({"data": {"path": "x.csv"}}, ["train.lrate=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config({"data": {"path": "x.csv"}}, ["train.lr"])


def test_unknown_strategy_and_strategy_option():
    with pytest.raises(ConfigError, match="unknown strategy 'lroa'; did you mean 'lora'"):
        load_config({"data": {"path": "x.csv"}, "strategy": {"name": "lroa"}})
    with pytest.raises(ConfigError, match="unknown key 'rank' in strategy"):
        load_config({"data": {"path": "x.csv"}, "strategy": {"name": "lora", "rank": 4}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({}, "no data given"),
        ({"data": {"path": "a.csv", "train": "b.csv"}}, "either `path`"),
        ({"data": {"path": "a.csv", "validation_size": 0.6, "test_size": 0.5}}, "must be below 1"),
        ({"data": {"path": "a.csv"}, "train": {"lr": -1}}, "train.lr must be positive"),
        ({"data": {"path": "a.csv"}, "train": {"batch_size": 0}}, "train.batch_size must be at least 1"),
        ({"data": {"path": "a.csv"}, "train": {"metric": "f1"}}, "unknown metric 'f1'"),
    ],
)
def test_impossible_combinations(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_every_config_field_has_a_docstring():
    """The dataclass field docstrings are the settings reference: none may be missing."""
    import tunesmith.config.hygiene as hygiene
    import tunesmith.config.schema as module
    import tunesmith.strategies.freeze as freeze
    import tunesmith.strategies.lora as lora

    for mod in (module, hygiene, freeze, lora):
        tree = ast.parse(inspect.getsource(mod))
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            body = cls.body
            for i, node in enumerate(body):
                if isinstance(node, ast.AnnAssign) and not _is_section(node):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    has_doc = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    assert has_doc, f"{mod.__name__}.{cls.name}.{node.target.id} has no docstring"


def _is_section(node) -> bool:
    return isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "field"


def test_resolved_config_is_yaml_serialisable():
    cfg = load_config({"data": {"path": "a.csv"}, "strategy": {"name": "freeze", "layers": 1}})
    text = yaml.safe_dump(config_to_dict(cfg))
    assert "layers: 1" in text


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"data": {"path": "a.csv", "packing": True}},
            "data.packing is not used by task text-classification .*causal-lm",
        ),
        (
            {"task": "causal-lm", "data": {"path": "a.jsonl"}, "eval": {"calibration": False}},
            "eval.calibration is not used by task causal-lm .*text-classification",
        ),
        (
            {"task": "seq2seq", "data": {"path": "a.jsonl"}, "model": {"chat_template": "default"}},
            "model.chat_template is not used by task seq2seq",
        ),
        (
            {"task": "seq2seq", "data": {"path": "a.jsonl"}, "train": {"class_weights": "balanced"}},
            "train.class_weights is not used by task seq2seq",
        ),
        (
            {"task": "text-classification", "data": {"path": "a.csv"}, "generate": {"samples": 3}},
            "generate.samples is not used by task text-classification",
        ),
        (
            {"task": "causal-lm", "data": {"path": "a.jsonl"}, "train": {"metric": "macro_f1"}},
            "unknown metric 'macro_f1' for task causal-lm",
        ),
        ({"task": "casual-lm", "data": {"path": "a.jsonl"}}, "unknown task 'casual-lm'; did you mean 'causal-lm'"),
    ],
)
def test_task_keys_belong_to_their_task(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_task_keys_at_their_defaults_and_saved_run_configs_load(tmp_path):
    """A default spelled out changes nothing; a saved run's config.yaml (every key) loads with strict=False."""
    cfg = load_config({"task": "causal-lm", "data": {"path": "a.jsonl"}, "eval": {"calibration": True}})
    assert cfg.train.metric == "loss"
    saved = tmp_path / "config.yaml"
    saved.write_text(
        yaml.safe_dump({**config_to_dict(cfg), "eval": {**config_to_dict(cfg)["eval"], "baseline": False}})
    )
    with pytest.raises(ConfigError, match="eval.baseline is not used by task causal-lm"):
        load_config(saved)
    assert load_config(saved, strict=False).eval.baseline is False


def test_a_task_line_number_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: causal-lm\ndata:\n  path: a.jsonl\n  packing: true\n  label_column: y\n")
    with pytest.raises(ConfigError, match=r"c.yaml line 5: data.label_column is not used by task causal-lm"):
        load_config(path)
