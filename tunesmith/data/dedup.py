"""Exact and near-duplicate detection (MinHash + LSH banding), within one set and across sets.

Exact duplicates share a `normalize_text` key (NFKC, case folding, collapsed whitespace): "Great movie!"
and "  great   MOVIE! ". Near duplicates are compared on the `near_key`, which also drops punctuation,
symbols (emoji too), control/format characters and accents, and are pairs where either reaches the threshold:

- the Jaccard similarity of their shingle sets (character n-grams by default), or
- for texts of at least `WORD_MIN` words, their word similarity LCS / (|a| + |b| - LCS) (LCS: the longest common
  subsequence of words), a Jaccard similarity that respects word order. A dropped or replaced word takes a 6-word
  tweet's shingle Jaccard to about 0.6, its word similarity to 0.83 / 0.71; shuffled words are not near. Shorter
  texts are left to the shingles: "not good at all" minus "not" is another text, and texts of two or three words
  coincide by chance in any large corpus.

Candidates come from MinHash signatures (`datasketch.MinHash`), banded as `datasketch.MinHashLSH` would for a
threshold `LSH_MARGIN` lower, over shingle sets and over word sets. Every candidate is verified exactly (shingle
Jaccard and a word-multiset bound by sparse set algebra, then the LCS where the bound allows): a reported pair is
never an LSH false positive; its similarity is the larger of the two. Positions are 0-based indices into the lists.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .textkeys import WORD_MIN, near_key, shingles, word_similarity

LSH_MARGIN = 0.1
"""Bands are set this far below the threshold: at 0.7 itself (b=16, r=8) they find ~60% of the pairs at 0.7;
at 0.6 (b=21, r=6) 93% of those and 98% of the pairs at 0.75."""


def exact_groups(keys: list[str]) -> list[list[int]]:
    """Groups (of at least two positions) whose keys are identical, in order of first occurrence."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        where[key].append(i)
    return [rows for rows in where.values() if len(rows) > 1]


# MinHash LSH proposes, sparse set algebra verifies.
_CHUNK = 32768  # candidate pairs verified per step (bounds the memory of the gathered sparse rows)
_BLOCK = 1 << 20  # bucket members (candidates before deduplication) gathered per block of rows


def _signatures(sets: list, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, one row per set (crc32 of each item: datasketch mixes it before permuting)."""
    from datasketch import MinHash

    if not sets:
        return np.zeros((0, num_perm), dtype=np.uint64)
    sketches = MinHash.bulk(sets, num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    return np.vstack([m.hashvalues for m in sketches]).astype(np.uint64)


class _Vocabulary(dict):
    """Item -> column; looking a new item up gives it the next column (`get` does not)."""

    def __missing__(self, item) -> int:
        self[item] = col = len(self)
        return col


def _count_matrix(items: list, vocab: _Vocabulary, grow: bool):
    """Sparse rows of item counts over `vocab` (grown when `grow`; else unknown items, never shared, are left out)."""
    from scipy import sparse

    flat = [x for bag in items for x in bag]
    rows = np.repeat(np.arange(len(items)), [len(bag) for bag in items])
    cols = np.fromiter(map(vocab.__getitem__ if grow else lambda x: vocab.get(x, -1), flat), np.int64, len(flat))
    rows, cols = rows[cols >= 0], cols[cols >= 0]
    shape = (len(items), max(len(vocab), 1))
    return sparse.coo_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=shape).tocsr()


class _Bands:
    """LSH over MinHash signatures: b bands of r rows (what `datasketch.MinHashLSH` picks), bucketed with numpy.

    Rows that agree on a whole band are candidates; a band is hashed to 64 bits (a collision only adds a candidate).
    """

    def __init__(self, signatures: np.ndarray, threshold: float, num_perm: int):
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.3, 0.7))  # verified after: lean to recall
        self.b, self.r = lsh.b, lsh.r
        self.codes = self.encode(signatures)
        self.order = np.argsort(self.codes, axis=0, kind="stable")
        self.sorted = np.take_along_axis(self.codes, self.order, axis=0)

    def encode(self, signatures: np.ndarray) -> np.ndarray:
        codes = np.zeros((len(signatures), self.b), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(self.b):
                band = signatures[:, k * self.r : (k + 1) * self.r]
                h = np.full(len(signatures), 0xCBF29CE484222325, dtype=np.uint64)
                for j in range(self.r):
                    h = (h ^ band[:, j]) * np.uint64(0x100000001B3)  # FNV-1a over 32-bit words
                codes[:, k] = h
        return codes

    def locate(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first position, bucket size) of each row of band codes in every band, both (rows, b)."""
        lo, n = np.empty(codes.shape, dtype=np.int64), np.empty(codes.shape, dtype=np.int64)
        for k in range(self.b):
            lo[:, k] = np.searchsorted(self.sorted[:, k], codes[:, k], "left")
            n[:, k] = np.searchsorted(self.sorted[:, k], codes[:, k], "right") - lo[:, k]
        return lo, n

    def expand(self, lo: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, indexed row) of every bucket member located by `locate` (rows of lo/n are the query rows)."""
        rows, bands = np.nonzero(n)
        size = n[rows, bands]
        positions = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size) + np.repeat(lo[rows, bands], size)
        return np.repeat(rows, size), self.order[positions, np.repeat(bands, size)]


def _distinct(q: np.ndarray, j: np.ndarray, width: int) -> np.ndarray:
    """The distinct (q, j) pairs, sorted, as an (n, 2) array."""
    codes = np.sort(q.astype(np.int64) * width + j)
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))] if len(codes) else codes
    return np.stack([codes // width, codes % width], axis=1)


@dataclass
class _Sketched:
    """Texts as the index compares them (the word fields cover texts of at least WORD_MIN words)."""

    sets: list[set]  # shingle sets
    words: list[list[str] | None]  # word lists, None below WORD_MIN
    shingle_rows: object  # sparse 0/1 rows of the shingle sets, over the index's shingle vocabulary
    word_rows: object  # sparse word counts of the texts with words, over the index's word vocabulary
    word_of: np.ndarray  # row of each text in word_rows / word_signatures, -1 without words
    sizes: np.ndarray  # shingles of each text
    lengths: np.ndarray  # words of each text (0 without words)
    signatures: np.ndarray
    word_signatures: np.ndarray


class NearIndex:
    """MinHash LSH over the distinct keys of one set; answers "which keys are near these texts?".

    Built once per set (signatures of each distinct key's near-key shingles and words, banded); candidates
    are verified exactly (see the module docstring). `words=False` compares shingles only.
    """

    def __init__(
        self,
        keys: list[str],
        threshold: float,
        num_perm: int,
        shingle_size: int,
        unit: str = "char",
        seed: int = 1,
        *,
        words: bool = True,
    ):
        self.threshold, self.num_perm, self.size, self.unit, self.seed = threshold, num_perm, shingle_size, unit, seed
        self.words = words
        self.keys = list(dict.fromkeys(keys))  # distinct, first-occurrence order
        self.id_of = {key: i for i, key in enumerate(self.keys)}
        self._shingle_vocab, self._word_vocab = _Vocabulary(), _Vocabulary()
        self.own = self._sketch(self.keys, grow=True)
        self.sets = self.own.sets
        band_threshold = max(0.3, threshold - LSH_MARGIN)
        self.bands = _Bands(self.own.signatures, band_threshold, num_perm)
        self.word_bands = _Bands(self.own.word_signatures, band_threshold, num_perm) if words else None

    @classmethod
    def for_audit(cls, keys: list[str], cfg) -> NearIndex:
        """The index the `audit:` settings (an AuditConfig) describe: one for the audit, leak-proof splits and prepare."""
        c = cfg
        return cls(keys, c.near_threshold, c.num_perm, c.shingle_size, c.shingle_unit, c.seed, words=c.near_words)

    def _sketch(self, keys: list[str], grow: bool = False) -> _Sketched:
        near = [near_key(k) for k in keys]
        sets = [shingles(k, self.size, self.unit) for k in near]
        words = [w if self.words and len(w) >= WORD_MIN else None for w in (k.split(" ") for k in near)]
        with_words = [i for i, w in enumerate(words) if w is not None]
        word_of = np.full(len(keys), -1, dtype=np.int64)
        word_of[with_words] = np.arange(len(with_words))
        word_lists = [words[i] for i in with_words]
        word_sets = [{w.encode("utf-8", "surrogatepass") for w in ws} for ws in word_lists]
        return _Sketched(
            sets,
            words,
            _count_matrix(sets, self._shingle_vocab, grow),
            _count_matrix(word_lists, self._word_vocab, grow),
            word_of,
            np.array([len(x) for x in sets], dtype=np.int64),
            np.array([len(w) if w is not None else 0 for w in words], dtype=np.int64),
            _signatures(sets, self.num_perm, self.seed),
            _signatures(word_sets, self.num_perm, self.seed),
        )

    def _verify(self, probe: _Sketched, cand: np.ndarray, skip=None):
        """Yield (probe position, key id, exact similarity) of candidates at or above the threshold; `skip(i, j)`
        spares a pair its LCS (the word multiset Jaccard bounds the word similarity from above)."""
        own, t = self.own, self.threshold
        for lo in range(0, len(cand), _CHUNK):
            q, j = cand[lo : lo + _CHUNK, 0], cand[lo : lo + _CHUNK, 1]
            a, b = probe.shingle_rows[q], own.shingle_rows[j]
            shared = np.asarray(a.multiply(b).sum(axis=1)).ravel()
            char = shared / (probe.sizes[q] + own.sizes[j] - shared)
            bound = np.zeros(len(q))
            wq, wj = probe.word_of[q], own.word_of[j]
            both = np.flatnonzero((wq >= 0) & (wj >= 0))
            if len(both):
                wa, wb = probe.word_rows[wq[both]], own.word_rows[wj[both]]
                common = np.asarray(wa.minimum(wb).sum(axis=1)).ravel()
                bound[both] = common / (probe.lengths[q[both]] + own.lengths[j[both]] - common)
            for k in np.flatnonzero((char >= t) | (bound >= t)).tolist():
                x, y, sim = int(q[k]), int(j[k]), float(char[k])
                if bound[k] > sim and (skip is None or not skip(x, y)):
                    sim = max(sim, word_similarity(probe.words[x], own.words[y]))
                if sim >= t:
                    yield x, y, sim

    def _candidates(self, probe: _Sketched, within: bool):
        """Distinct candidate pairs (probe position, key id) in blocks of about `_BLOCK` bucket members (huge buckets of
        templated texts cost time, not memory); `within`: the probe is the index itself, pairs i < j only."""
        lo, n = self.bands.locate(self.bands.codes if within else self.bands.encode(probe.signatures))
        per_row = n.sum(axis=1)
        word_rows, own_word_keys = np.flatnonzero(probe.word_of >= 0), np.flatnonzero(self.own.word_of >= 0)
        wb = self.word_bands
        if wb is not None:
            wlo, wn = wb.locate(wb.codes if within else wb.encode(probe.word_signatures))
            per_row[word_rows] += wn.sum(axis=1)
        total = np.cumsum(per_row)
        cuts = np.searchsorted(total, np.arange(_BLOCK, total[-1] if len(total) else 0, _BLOCK))
        bounds = np.unique(np.concatenate(([0], cuts + 1, [len(per_row)])).clip(0, len(per_row)))
        for r0, r1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            q, j = self.bands.expand(lo[r0:r1], n[r0:r1])
            qs, js = [q + r0], [j]
            if wb is not None:
                sel = np.flatnonzero((word_rows >= r0) & (word_rows < r1))
                wq, wj = wb.expand(wlo[sel], wn[sel])
                qs.append(word_rows[sel][wq])
                js.append(own_word_keys[wj])
            q, j = np.concatenate(qs), np.concatenate(js)
            if within:
                keep = j > q
                q, j = q[keep], j[keep]
            if len(q):
                yield _distinct(q, j, len(self.keys))

    def pairs(self, skip=None):
        """Yield (i, j, similarity), i < j, of the indexed keys at or above the threshold (`skip`: see `_verify`)."""
        for cand in self._candidates(self.own, within=True):
            yield from self._verify(self.own, cand, skip)

    def query(self, keys: list[str]) -> list[list[tuple[int, float]]]:
        """For each `normalize_text` key (of another set), (distinct key id, similarity) of the indexed keys near it."""
        probe = self._sketch(keys)
        out: list[list[tuple[int, float]]] = [[] for _ in keys]
        for cand in self._candidates(probe, within=False):
            for q, j, sim in self._verify(probe, cand):
                out[q].append((j, sim))
        return out


@dataclass
class NearCluster:
    rows: list[int]
    """Positions of every row in the cluster (exact copies of its members included)."""
    distinct: int
    """How many different normalised texts the cluster holds (at least 2)."""
    min_similarity: float
    """Lowest verified similarity of the pairs that joined the cluster."""


def near_clusters(keys: list[str], index: NearIndex) -> list[NearCluster]:
    """Clusters of near-duplicate rows within one set (connected components of verified pairs)."""
    parent = list(range(len(index.keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i, j, sim in index.pairs(skip=lambda i, j: find(i) == find(j)):  # joined pairs need no word check
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
    """`exact` (same normalised text) or `near` (shingle or word similarity of near keys at or above the threshold)."""
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
        for pos, found in zip(pending, ref_index.query([other_keys[p] for p in pending])):
            if found:
                kid, sim = max(found, key=lambda f: f[1])
                matches.append(Match(pos, first[ref_index.keys[kid]], "near", round(sim, 4)))
    matches.sort(key=lambda m: m.other)
    return matches
