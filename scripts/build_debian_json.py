#!/usr/bin/env python3
"""Build the JSON-extraction demo dataset from the Debian package indexes apt keeps on this machine.

Input text: a package's English description (`Translation-en`: the summary line and the first
paragraph of the long description), prefixed with the package name. Target: a JSON object whose
values all come from the index fields, never written by hand:
  name     Package                         (copied from the text)
  summary  the description's first line    (copied from the text)
  section  Section from the Packages index (inferred: the text does not say it)
  kind     derived from Section and the name: library | development files | documentation | data | program

    apt-get update -o Acquire::Languages=en     # fetches Translation-en beside Packages (root)
    python scripts/build_debian_json.py --out data/debian-json.jsonl --n 900
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

LISTS = "/var/lib/apt/lists"
INSTRUCTION = "Describe this Debian package as a JSON object with exactly the keys name, summary, section, kind."


def stanzas(path: str):
    """Parse a (possibly compressed) Debian control-format index with apt's own decompressor."""
    text = subprocess.run(
        ["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True, text=True, errors="replace"
    ).stdout
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line[1:]
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            yield fields


def kind(name: str, section: str) -> str:
    if name.endswith("-dev") or section == "libdevel":
        return "development files"
    if name.endswith("-doc") or section == "doc":
        return "documentation"
    if section in ("libs", "oldlibs") or name.startswith("lib"):
        return "library"
    if name.endswith(("-data", "-common")) or section in ("fonts", "localization"):
        return "data"
    return "program"


def first_paragraph(long: str) -> str:
    para = long.split("\n.\n")[0] if "\n.\n" in long else long
    return " ".join(para.split())


def indexes() -> tuple[dict[str, str], list[str]] | None:
    """({package: section} from the Packages indexes, the Translation-en index files); None (said why) without them."""
    translations = sorted(glob.glob(f"{LISTS}/*_debian_dists_bookworm_main_i18n_Translation-en*"))
    packages = sorted(glob.glob(f"{LISTS}/*_debian_dists_bookworm_main_binary-*_Packages*"))
    if not translations or not packages:
        translations = sorted(glob.glob(f"{LISTS}/*_main_i18n_Translation-en*"))
        packages = sorted(glob.glob(f"{LISTS}/*_main_binary-*_Packages*"))
    if not translations or not packages:
        print(
            f"error: no apt Packages/Translation-en indexes in {LISTS}; run `apt-get update -o Acquire::Languages=en` (as root) first",
            file=sys.stderr,
        )
        return None
    section = {}
    for p in packages:
        for f in stanzas(p):
            section.setdefault(f["Package"], f.get("Section", "").split("/")[-1])
    return section, translations


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/debian-json.jsonl")
    ap.add_argument("--n", type=int, default=900, help="packages to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-words", type=int, default=60, help="skip descriptions whose first paragraph is longer")
    args = ap.parse_args()

    found = indexes()
    if found is None:
        return 2
    section, translations = found
    rows = []
    seen = set()
    for t in translations:
        for f in stanzas(t):
            name, desc = f["Package"], f.get("Description-en", "")
            if name in seen or name not in section or not section[name] or "\n" not in desc:
                continue
            seen.add(name)
            summary, _, long = desc.partition("\n")
            para = first_paragraph(long)
            if "transitional" in summary.lower() or not 8 <= len(para.split()) <= args.max_words:
                continue
            target = {
                "name": name,
                "summary": summary.strip(),
                "section": section[name],
                "kind": kind(name, section[name]),
            }
            text = f"{name}: {summary.strip()}\n{para}"
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"{INSTRUCTION}\n\n{text}"},
                        {"role": "assistant", "content": json.dumps(target, ensure_ascii=False)},
                    ],
                    "section": target["section"],
                    "kind": target["kind"],
                }
            )
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.n]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, args.out)
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(
        f"wrote {len(rows)} samples ({len(seen)} described packages, {len(set(r['section'] for r in rows))} sections, kinds {kinds}) to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
