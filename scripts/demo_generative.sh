#!/usr/bin/env bash
# The generative quickstart: teach SmolLM2-135M-Instruct (packaged GGUF) to answer with a JSON object of fixed
# keys extracted from a Debian package description; LoRA on CPU. Prints before/after figures at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if ! ls /var/lib/apt/lists/*Translation-en* >/dev/null 2>&1; then
  # apt fetches the English descriptions only when asked for them (needs root).
  apt-get update -o Acquire::Languages=en >/dev/null || { echo "error: run 'apt-get update -o Acquire::Languages=en' as root first" >&2; exit 2; }
fi
.venv/bin/python scripts/build_debian_json.py --out data/debian-json.jsonl --n 900
.venv/bin/tunesmith data lint configs/quickstart/debian-json-smollm2.yaml --show 1
.venv/bin/tunesmith train configs/quickstart/debian-json-smollm2.yaml "$@"
