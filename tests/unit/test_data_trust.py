"""Loader mistakes users really make: label spelling variants, other CSV delimiters (issue #12 items 2 and 4)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import toy_rows, write_csv

from tunesmith.config import AuditConfig, DataConfig, PrepareConfig
from tunesmith.data.audit import audit
from tunesmith.data.loaders import label_key, label_variants, load_table
from tunesmith.data.prepare import prepare
from tunesmith.data.splits import load_splits
from tunesmith.errors import DataError


def _variant_rows(n: int = 90) -> list[dict]:
    """Every third 'pos' row spelt 'POS ' and one 'neg' spelt with a full-width letter: what spreadsheets produce."""
    rows = toy_rows(n)
    seen = 0
    for r in rows:
        if r["label"] == "pos":
            seen += 1
            if seen % 3 == 0:
                r["label"] = "POS "
    next(r for r in rows if r["label"] == "neg")["label"] = "ｎｅｇ"
    return rows


def test_label_key_folds_case_spaces_and_unicode_form():
    assert label_key("  COMPUTERS ") == label_key("computers") == label_key("Ｃomputers")
    assert label_key("café") == label_key("cafe\u0301".replace("e\u0301", "é")) and label_key("a  b") == "a b"
    assert label_key("pos") != label_key("positive")
    v = label_variants(pd.Series(["pos", "pos", "POS", "neg"]).value_counts())
    assert v == {"pos": {"pos": 2, "POS": 1}}
    assert label_variants(pd.Series(["pos", "POS", "POS"]).value_counts(), preferred=["pos"]) == {
        "pos": {"POS": 2, "pos": 1}
    }


def test_label_variants_stop_the_loader_with_their_counts(tmp_path):
    path = write_csv(tmp_path / "d.csv", _variant_rows())
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(path=str(path)), seed=0)
    msg = str(err.value)
    assert (
        "\n" not in msg
        and "'pos' (20 rows) vs 'POS' (10 rows)" in msg
        and "'neg' (29 rows) vs 'ｎｅｇ' (1 rows)" in msg
    )
    assert "data.normalize_labels: true" in msg


def test_normalize_labels_merges_and_says_so(tmp_path):
    path = write_csv(tmp_path / "d.csv", _variant_rows())
    s = load_splits(DataConfig(path=str(path), normalize_labels=True), seed=0)
    assert s.label_names == ["neg", "neu", "pos"]
    assert sum(len(x) for x in (s.train, s.validation, s.test)) == 90
    assert any("merged label variants" in n and "'POS' -> 'pos'" in n for n in s.notes)


def test_label_variants_across_files_and_in_the_audit(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_rows(60))
    test = write_csv(tmp_path / "test.csv", [{**r, "label": r["label"].upper()} for r in toy_rows(12, seed=1)])
    with pytest.raises(DataError, match=r"'pos' \(20 rows\) vs 'POS' \(4 rows\)"):
        load_splits(DataConfig(train=str(train), test=str(test)), seed=0)
    report = audit(pd.read_csv(train), {"test": pd.read_csv(test)}, options=AuditConfig(label_errors=False))
    assert report.label_variants["pos"] == {"pos": 20, "POS": 4}
    assert report.blocking and report.blocking[0].startswith("label variants:")
    assert report.counts()["label_variants"] == 3


def test_prepare_merges_label_variants_only_when_asked(tmp_path):
    path = write_csv(tmp_path / "d.csv", _variant_rows(120))
    no_near = AuditConfig(near_duplicates=False, label_errors=False)
    with pytest.raises(DataError, match="normalize_labels"):
        prepare(DataConfig(path=str(path)), PrepareConfig(balance="none"), no_near, out=tmp_path / "ds")
    res = prepare(
        DataConfig(path=str(path), normalize_labels=True), PrepareConfig(balance="none"), no_near, out=tmp_path / "ds"
    )
    assert res.manifest["label_names"] == ["neg", "neu", "pos"]
    steps = [s for s in res.manifest["cleaning"] if s["rule"] == "label_variants"]
    assert steps and steps[0]["rows"] == 14 and "'POS' -> 'pos'" in steps[0]["detail"]


@pytest.mark.parametrize("sep,name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_other_delimiters_are_sniffed_and_said(tmp_path, sep, name):
    rows = toy_rows(60)
    rows[4]["text"] = "well, this one has commas, and more commas"  # a comma parse would break on this line
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    df = load_table(str(path))
    assert list(df.columns) == ["text", "label"] and len(df) == 60 and df["text"][4].startswith("well, this")
    assert any(f"read as {name}-delimited" in n for n in df.attrs["tunesmith_notes"])
    s = load_splits(DataConfig(path=str(path)), seed=0)
    assert any(f"{name}-delimited" in n for n in s.notes)
    # no commas at all: a comma parse "works" but gives one column; still sniffed
    plain = tmp_path / "plain.csv"
    pd.DataFrame(toy_rows(30)).to_csv(plain, index=False, sep=sep)
    assert list(load_table(str(plain)).columns) == ["text", "label"]


def test_delimiter_can_be_set_and_a_bad_guess_names_it(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(toy_rows(30)).to_csv(path, index=False, sep=";")
    assert list(load_table(str(path), delimiter=";").columns) == ["text", "label"]
    assert load_table(str(path), delimiter=",").shape[1] == 1  # told: not second-guessed
    comma = write_csv(tmp_path / "c.csv", toy_rows(30))
    assert "tunesmith_notes" not in load_table(str(comma)).attrs  # the usual case says nothing
    broken = tmp_path / "b.csv"
    broken.write_text('text;label\n"a;b;pos\nfine;neg\nx;y;z;w\n')
    with pytest.raises(DataError, match="set data.delimiter"):
        load_table(str(broken))


def test_a_huge_row_gets_our_truncation_line_not_the_transformers_warning(capfd):
    from tunesmith.models.loading import load_tokenizer, resolve_model

    rows = toy_rows(60)
    rows[3]["text"] = " ".join(["word"] * 200_000)
    rows[7]["text"] = " ".join(["word"] * 300)
    tok = load_tokenizer(resolve_model("minilm"))  # a real tokenizer (model_max_length 512), from its package
    capfd.readouterr()
    r = audit(pd.DataFrame(rows), None, options=AuditConfig(label_errors=False), tokenizer=tok, max_length=128)
    out, err = capfd.readouterr()
    assert "indexing errors" not in out + err and "Token indices sequence length" not in out + err
    s = r.lengths["train"]
    assert s["truncated_rows"] == 2 and s["max"] == 200_002 and s["truncated_tokens_max"] == 200_002 - 128
    (line,) = [w for w in r.warnings if "truncated" in w]
    assert line.startswith("train: 2 of 60 texts (3.3%) are longer than max_length 128") and "199,874 at most" in line
