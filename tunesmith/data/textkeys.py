"""The keys texts are compared by: `normalize_text` (exact duplicates), `near_key` (near duplicates), their
shingles and word similarity. `dedup` builds its indexes on them."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
WORD_MIN = 4
"""Fewest words that both texts need before their word sequences are compared."""
_ACCENTS = ((0x300, 0x36F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
"""Blocks of combining diacritical marks (what NFKD splits off accented Latin, Greek and Cyrillic letters)."""


def normalize_text(text: str) -> str:
    """The comparison key of a text: NFKC, case-folded, whitespace collapsed and stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class _NearTable(dict):
    """`str.translate` table of `near_key`, filled per code point on first sight."""

    def __missing__(self, cp: int) -> str | None:
        ch, cat = chr(cp), unicodedata.category(chr(cp))
        # Deleted: punctuation, symbols, control/format/private/unassigned characters, combining accents.
        drop = cat[0] in "PSC" or (cat == "Mn" and any(lo <= cp <= hi for lo, hi in _ACCENTS))
        self[cp] = out = " " if ch.isspace() else None if drop else ch
        return out


_NEAR_TABLE = _NearTable()


def near_key(key: str) -> str:
    """What near-duplicate comparison sees of a `normalize_text` key: letters, digits, other marks, single spaces
    ("don't" -> "dont", "café" -> "cafe"; emoji, curly quotes, zero-width spaces gone); if none is left, the key."""
    s = unicodedata.normalize("NFKD", key).translate(_NEAR_TABLE)
    s = " ".join(unicodedata.normalize("NFC", s).split())
    return s or key


def shingles(key: str, size: int, unit: str = "char") -> set[bytes]:
    """Character (or word) n-grams of a normalised text; a text shorter than one shingle is its own shingle."""
    if unit == "char":
        return {key[i : i + size].encode("utf-8", "surrogatepass") for i in range(max(1, len(key) - size + 1))}
    items = key.split(" ")
    return {
        " ".join(items[i : i + size]).encode("utf-8", "surrogatepass") for i in range(max(1, len(items) - size + 1))
    }


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists (bit-parallel, Hyyrö 2004: O(|b|) big-int steps)."""
    masks: dict[str, int] = {}
    for i, w in enumerate(a):
        masks[w] = masks.get(w, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for w in b:
        u = v & masks.get(w, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def word_similarity(a: list[str], b: list[str]) -> float:
    """LCS / (|a| + |b| - LCS): the Jaccard similarity of two word sequences, words counted only in order."""
    common = lcs_length(a, b)
    union = len(a) + len(b) - common
    return common / union if union else 1.0
