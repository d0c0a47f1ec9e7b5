#!/usr/bin/env python3
"""Build a topic-classification set (text -> Debian section) from the package indexes apt keeps on this machine.

Text: a package's English summary line and the first paragraph of its long description (the
package name is left out: it often spells the section, e.g. `python3-`). Label: its Section in
the Packages index. Only sections whose descriptions speak of a topic are kept (not `libs`,
`devel`, `misc`, ...). Real text nobody here wrote or tuned to: the label-error benchmark and
test plant flips in it.

    apt-get update -o Acquire::Languages=en     # fetches Translation-en beside Packages (root)
    python scripts/build_debian_topics.py --out data/debian-topics.csv --per-section 300
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_debian_json import first_paragraph, indexes, stanzas  # noqa: E402

SECTIONS = ("games", "science", "sound", "graphics", "mail", "math", "electronics", "database", "web")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/debian-topics.csv")
    ap.add_argument("--per-section", type=int, default=300, help="rows per section at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    args = ap.parse_args()
    wanted = set(args.sections.split(","))
    found = indexes()
    if found is None:
        return 2
    section, translations = found
    by_section: dict[str, list[str]] = {s: [] for s in sorted(wanted)}
    seen_text = set()
    for t in translations:
        for f in stanzas(t):
            name, desc = f["Package"], f.get("Description-en", "")
            sec = section.get(name)
            if sec not in wanted or "\n" not in desc:
                continue
            summary, _, long = desc.partition("\n")
            para = first_paragraph(long)
            if (
                any(w in summary.lower() for w in ("transitional", "dummy", "debug symbols"))
                or not 8 <= len(para.split()) <= 80
            ):
                continue
            text = f"{summary.strip()}. {para}"
            if text.lower() in seen_text:  # -data/-common siblings often share a description
                continue
            seen_text.add(text.lower())
            by_section[sec].append(text)
    rng = random.Random(args.seed)
    rows = []
    for sec, texts in by_section.items():
        rng.shuffle(texts)
        rows += [(t, sec) for t in texts[: args.per_section]]
    rng.shuffle(rows)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    counts = {s: min(len(t), args.per_section) for s, t in by_section.items()}
    print(f"wrote {len(rows)} rows to {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
