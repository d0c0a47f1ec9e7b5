#!/usr/bin/env bash
# Install, then run the whole test suite (tiny random models, one end-to-end run on MiniLM, 2-process DDP).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
