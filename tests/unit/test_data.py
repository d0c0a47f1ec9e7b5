import json

import pandas as pd
import pytest
from conftest import toy_rows, write_csv

from tunesmith.config import DataConfig
from tunesmith.data.splits import load_splits
from tunesmith.engine.batches import plan_epoch, shard
from tunesmith.errors import DataError
from tunesmith.tasks.classification.batches import collate


def test_single_file_is_split_stratified_and_reproducible(tmp_path):
    path = write_csv(tmp_path / "d.csv", toy_rows(300))
    cfg = DataConfig(path=str(path), validation_size=0.1, test_size=0.2)
    a, b = load_splits(cfg, seed=1), load_splits(cfg, seed=1)
    assert (len(a.train), len(a.validation), len(a.test)) == (210, 30, 60)
    assert a.label_names == ["neg", "neu", "pos"]
    for split in (a.validation, a.test):  # stratified: each class exactly a third
        assert sorted(pd.Series(split.labels).value_counts().tolist()) == [len(split) // 3] * 3
    assert a.test.texts == b.test.texts and a.train.fingerprint() == b.train.fingerprint()
    c = load_splits(cfg, seed=2)
    assert c.test.texts != a.test.texts


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_other_formats(tmp_path, fmt):
    rows = toy_rows(60)
    df = pd.DataFrame(rows).rename(columns={"text": "sentence", "label": "y"})
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        df.to_parquet(path)
    else:
        import datasets

        path = tmp_path / "saved"
        datasets.Dataset.from_pandas(df).save_to_disk(str(path))
    splits = load_splits(DataConfig(path=str(path), text_column="sentence", label_column="y"), seed=0)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 60


def test_explicit_files_and_integer_labels(tmp_path):
    rows = [{"text": r["text"], "label": ["neg", "neu", "pos"].index(r["label"])} for r in toy_rows(90)]
    train = write_csv(tmp_path / "train.csv", rows[:60])
    test = write_csv(tmp_path / "test.csv", rows[60:])
    splits = load_splits(DataConfig(train=str(train), test=str(test)), seed=0)
    assert splits.label_names == ["0", "1", "2"]
    assert len(splits.test) == 30 and len(splits.train) + len(splits.validation) == 60


def test_max_samples_subsamples_stratified(tmp_path):
    path = write_csv(tmp_path / "d.csv", toy_rows(600))
    splits = load_splits(DataConfig(path=str(path), max_samples=150), seed=0)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 150
    assert any("subsampled" in n for n in splits.notes)


def test_empty_rows_are_dropped_and_reported(tmp_path):
    rows = toy_rows(60) + [{"text": "", "label": "pos"}, {"text": "   ", "label": "neg"}, {"text": "ok", "label": None}]
    splits = load_splits(DataConfig(path=str(write_csv(tmp_path / "d.csv", rows))), seed=0)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 60
    assert any("dropped 3 rows" in n for n in splits.notes)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.write_text("text,label\n"), "no rows"),
        (lambda p: p.write_text(""), "empty"),
        (lambda p: write_csv(p, [{"sentence": "a", "label": "x"}] * 4), "no text column 'text'"),
        (lambda p: write_csv(p, [{"text": f"t{i}", "label": "x"} for i in range(9)]), "all rows have the label 'x'"),
        (lambda p: p.write_bytes(b"text,label\nfine,pos\nbad \xff\xfe,neg\n"), r"line 3: not valid utf-8"),
        (lambda p: write_csv(p, toy_rows(30) + [{"text": "lonely", "label": "rare"}]), r"\['rare'\] occur only once"),
    ],
    ids=["no-rows", "empty-file", "missing-column", "single-class", "non-utf8", "singleton-label"],
)
def test_bad_data_gets_clear_error(tmp_path, setup, message):
    path = tmp_path / "bad.csv"
    setup(path)
    with pytest.raises(DataError, match=message) as e:
        load_splits(DataConfig(path=str(path)), seed=0)
    assert str(path) in str(e.value)


def test_missing_file_and_unseen_test_labels(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_splits(DataConfig(path=str(tmp_path / "nope.csv")), seed=0)
    train = write_csv(tmp_path / "train.csv", toy_rows(60))
    test = write_csv(tmp_path / "test.csv", toy_rows(9) + [{"text": "what", "label": "surprise"}])
    with pytest.raises(DataError, match=r"labels \['surprise'\] do not occur in the training data"):
        load_splits(DataConfig(train=str(train), test=str(test)), seed=0)


def test_non_utf8_can_be_replaced(tmp_path):
    path = tmp_path / "d.csv"
    body = "".join(f"{r['text']},{r['label']}\n" for r in toy_rows(30)).encode()
    path.write_bytes(b"text,label\n" + body + b"caf\xe9 good,pos\n")
    splits = load_splits(DataConfig(path=str(path), encoding_errors="replace"), seed=0)
    assert any("\ufffd" in t for s in (splits.train, splits.validation, splits.test) for t in s.texts)


def test_package_paths(tmp_path):
    with pytest.raises(DataError, match="package 'no_such_pkg_xyz' is not installed"):
        load_splits(DataConfig(path="pkg://no_such_pkg_xyz/x.csv"), seed=0)


def test_length_grouped_plan_is_deterministic_complete_and_grouped():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    a = plan_epoch(lengths, 16, seed=3, epoch=0, group_by_length=True)
    assert a == plan_epoch(lengths, 16, seed=3, epoch=0, group_by_length=True)
    assert a != plan_epoch(lengths, 16, seed=3, epoch=1, group_by_length=True)
    assert sorted(i for b in a for i in b) == list(range(1000))
    padding = lambda plan: sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in plan)
    random_plan = plan_epoch(lengths, 16, seed=3, epoch=0, group_by_length=False)
    assert padding(a) < 0.2 * padding(random_plan)


def test_shards_partition_a_global_batch_and_collate_pads_to_longest():
    batch = list(range(10))
    assert sorted(shard(batch, 0, 2) + shard(batch, 1, 2)) == batch
    ids = [[5, 6, 7], [5], [5, 6]]
    out = collate(ids, [0, 1, 2], pad_id=0, labels=[1, 0, 1], multiple=1)
    assert out["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0], [5, 6, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert out["labels"].tolist() == [1, 0, 1]
    assert collate(ids, [1, 2], pad_id=0)["input_ids"].shape == (2, 8)  # rounded up to a multiple of 8
