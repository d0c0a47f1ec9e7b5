"""Exact and near-duplicate detection (MinHash + LSH from `datasketch`), within one set and across sets.

Texts are compared after `normalize_text` (unicode NFKC, case folding, collapsed whitespace), so
"Great movie!" and "  great   MOVIE! " are exact duplicates. Near duplicates are pairs whose
shingle sets have a Jaccard similarity of at least the threshold: LSH proposes candidates, and
every candidate is verified on the exact shingle sets, so a reported pair is never an LSH
false positive.

Positions here are 0-based indices into the lists passed in; callers turn them into row numbers.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The comparison key of a text: NFKC, case-folded, whitespace collapsed and stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(key: str, size: int, unit: str = "char") -> set[bytes]:
    """Character (or word) n-grams of a normalised text; a text shorter than one shingle is its own shingle."""
    items = key if unit == "char" else key.split(" ")
    if len(items) <= size:
        grams = [items]
    else:
        grams = [items[i : i + size] for i in range(len(items) - size + 1)]
    joiner = "" if unit == "char" else " "
    return {(g if isinstance(g, str) else joiner.join(g)).encode("utf-8", "surrogatepass") for g in grams}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def exact_groups(keys: list[str]) -> list[list[int]]:
    """Groups (of at least two positions) whose keys are identical, in order of first occurrence."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        where[key].append(i)
    return [rows for rows in where.values() if len(rows) > 1]


class NearIndex:
    """MinHash LSH over the distinct keys of one set; answers "which keys are near this text?".

    Built once per set: `datasketch.MinHash.bulk` sketches every distinct key, `MinHashLSH`
    buckets them. Candidates are checked against the exact shingle sets before they are returned.
    """

    def __init__(
        self, keys: list[str], threshold: float, num_perm: int, shingle_size: int, unit: str = "char", seed: int = 1
    ):
        from datasketch import MinHash, MinHashLSH

        self.threshold, self.num_perm, self.size, self.unit, self.seed = threshold, num_perm, shingle_size, unit, seed
        self.keys = list(dict.fromkeys(keys))  # distinct, first-occurrence order
        self.id_of = {key: i for i, key in enumerate(self.keys)}
        self.sets = [shingles(k, shingle_size, unit) for k in self.keys]
        self.sketches = MinHash.bulk(self.sets, num_perm=num_perm, seed=seed)
        # Verification removes false positives, so the bands lean towards recall.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.3, 0.7))
        with self.lsh.insertion_session() as session:
            for i, sketch in enumerate(self.sketches):
                session.insert(i, sketch, check_duplication=False)

    def sketch(self, keys: list[str]) -> tuple[list[set], list]:
        from datasketch import MinHash

        sets = [shingles(k, self.size, self.unit) for k in keys]
        return sets, MinHash.bulk(sets, num_perm=self.num_perm, seed=self.seed)

    def near(self, shingle_set: set, sketch) -> list[tuple[int, float]]:
        """(distinct key id, Jaccard) of every indexed key at or above the threshold."""
        found = []
        for cand in self.lsh.query(sketch):
            sim = jaccard(shingle_set, self.sets[cand])
            if sim >= self.threshold:
                found.append((cand, sim))
        return found


@dataclass
class NearCluster:
    rows: list[int]
    """Positions of every row in the cluster (exact copies of its members included)."""
    distinct: int
    """How many different normalised texts the cluster holds (at least 2)."""
    min_similarity: float
    """Lowest verified Jaccard similarity of the pairs that joined the cluster."""


def near_clusters(keys: list[str], index: NearIndex) -> list[NearCluster]:
    """Clusters of near-duplicate rows within one set (connected components of verified pairs)."""
    parent = list(range(len(index.keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i, (sset, sketch) in enumerate(zip(index.sets, index.sketches)):
        for j, sim in index.near(sset, sketch):
            if j > i:
                pairs.append((i, j, sim))
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    low: dict[int, float] = {}
    for i, _, sim in pairs:
        root = find(i)
        low[root] = min(low.get(root, 1.0), sim)
    members: dict[int, list[int]] = defaultdict(list)
    for k in range(len(index.keys)):
        members[find(k)].append(k)
    rows_of: dict[int, list[int]] = defaultdict(list)
    for pos, key in enumerate(keys):
        rows_of[index.id_of[key]].append(pos)
    clusters = []
    for root, ids in members.items():
        if len(ids) > 1:
            rows = sorted(r for k in ids for r in rows_of[k])
            clusters.append(NearCluster(rows, len(ids), round(low.get(root, index.threshold), 4)))
    clusters.sort(key=lambda c: c.rows[0])
    return clusters


@dataclass
class Match:
    other: int
    """Position in the set that was checked (e.g. the test set)."""
    train: int
    """Position of the most similar row of the reference set (e.g. the training set)."""
    kind: str
    """`exact` (same normalised text) or `near` (Jaccard at or above the threshold)."""
    similarity: float


def cross_matches(ref_keys: list[str], ref_index: NearIndex | None, other_keys: list[str]) -> list[Match]:
    """For every row of `other_keys`, its exact or (with an index) best near match in the reference set."""
    first: dict[str, int] = {}
    for pos, key in enumerate(ref_keys):
        first.setdefault(key, pos)
    matches: list[Match] = []
    pending = []
    for pos, key in enumerate(other_keys):
        if key in first:
            matches.append(Match(pos, first[key], "exact", 1.0))
        elif ref_index is not None:
            pending.append(pos)
    if pending:
        sets, sketches = ref_index.sketch([other_keys[p] for p in pending])
        for pos, sset, sketch in zip(pending, sets, sketches):
            found = ref_index.near(sset, sketch)
            if found:
                kid, sim = max(found, key=lambda f: f[1])
                matches.append(Match(pos, first[ref_index.keys[kid]], "near", round(sim, 4)))
    matches.sort(key=lambda m: m.other)
    return matches
