#!/usr/bin/env python3
"""Build the multi-task demo data from the Debian package indexes apt keeps on this machine.

Text: a package's English summary line and the first paragraph of its long description, without the package
name. Labels, all from the indexes (never written by hand):
  section.csv  text, section     the archive section, the N most common sections (the small primary task)
  aux.csv      text, kind, arch  kind: library / development files / documentation / data / program (from the
                                 section and the name); arch: `all` (architecture-independent) or `any`
aux.csv holds other packages than section.csv, so training on it cannot leak section's test rows.

    apt-get update -o Acquire::Languages=en     # fetches Translation-en beside Packages (root)
    python scripts/build_debian_tasks.py --out data/ --primary 1600 --aux 3000
    tunesmith train configs/examples/multitask-debian.yaml && tunesmith compare-tasks runs/<run>
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_debian_json import LISTS, first_paragraph, indexes, kind, stanzas  # noqa: E402


def build(out: Path, primary: int = 1600, aux: int = 3000, sections: int = 10, seed: int = 0) -> dict[str, Path]:
    """section.csv and aux.csv in `out` (written once: existing files are kept); SystemExit(2) without the indexes."""
    files = {"section": out / "section.csv", "aux": out / "aux.csv"}
    if all(p.is_file() for p in files.values()):
        return files
    found = indexes()
    if found is None:
        raise SystemExit(2)
    section, translations = found
    arch = {}
    for p in sorted(glob.glob(f"{LISTS}/*_main_binary-*_Packages*")):
        for f in stanzas(p):
            arch.setdefault(f["Package"], "all" if f.get("Architecture") == "all" else "any")
    rows, seen = [], set()
    for t in translations:
        for f in stanzas(t):
            name, desc = f["Package"], f.get("Description-en", "")
            if name in seen or not section.get(name) or "\n" not in desc:
                continue
            seen.add(name)
            summary, _, long = desc.partition("\n")
            para = first_paragraph(long)
            if "transitional" in summary.lower() or not 8 <= len(para.split()) <= 60:
                continue
            rows.append(
                {
                    "text": f"{summary.strip()}. {para}",
                    "section": section[name],
                    "kind": kind(name, section[name]),
                    "arch": arch.get(name, "any"),
                }
            )
    df = pd.DataFrame(rows).drop_duplicates("text").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    top = df["section"].value_counts().index[:sections]
    pool = df[df["section"].isin(top)].groupby("section", group_keys=False).head(primary // len(top) + 1)
    pool = pool.sample(n=min(primary, len(pool)), random_state=seed)
    rest = df.drop(pool.index).head(aux)
    out.mkdir(parents=True, exist_ok=True)
    for path, frame in ((files["section"], pool[["text", "section"]]), (files["aux"], rest[["text", "kind", "arch"]])):
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data")
    ap.add_argument(
        "--primary", type=int, default=1600, help="rows of section.csv (split 300 / 300 / 1,000 by the example config)"
    )
    ap.add_argument("--aux", type=int, default=3000, help="rows of aux.csv")
    ap.add_argument("--sections", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    files = build(Path(args.out), args.primary, args.aux, args.sections, args.seed)
    for path in files.values():
        df = pd.read_csv(path)
        print(
            f"{path}: {len(df)} rows, " + ", ".join(f"{c} {df[c].nunique()} classes" for c in df.columns if c != "text")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
