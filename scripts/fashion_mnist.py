"""Write a class-folder image tree from Debian's `dataset-fashion-mnist` (Zalando's Fashion-MNIST, MIT licence).

    python scripts/fashion_mnist.py --out data/fashion-mnist --per-class 300 --test-per-class 100

gives data/fashion-mnist/{train,test}/<label>/<n>.png (28x28 grey PNGs), a stratified sample of the 60k training
and 10k test images, the same for the same --seed. The idx files come from /usr/share/datasets/fashion-mnist
(`apt-get install dataset-fashion-mnist`) or --source.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np

LABELS = ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
SOURCES = [Path("/usr/share/datasets/fashion-mnist"), Path(".cache/debian/usr/share/datasets/fashion-mnist")]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(10)]))


def write(out: Path, images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
    from PIL import Image

    for r in rows:
        d = out / LABELS[labels[r]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[r], mode="L").save(d / f"{r:05d}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/fashion-mnist")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=os.environ.get("FASHION_MNIST_DIR"))
    a = p.parse_args()
    found = [Path(a.source)] if a.source else [s for s in SOURCES if (s / "train-images-idx3-ubyte.gz").is_file()]
    if not found or not (found[0] / "train-images-idx3-ubyte.gz").is_file():
        print(
            "fashion-mnist: idx files not found; run `apt-get install dataset-fashion-mnist` (or pass --source DIR)",
            file=sys.stderr,
        )
        return 2
    src, out = found[0], Path(a.out)
    marker = out / f".sample-{a.per_class}-{a.test_per_class}-{a.seed}"
    if marker.is_file():
        print(f"fashion-mnist: {out} already holds this sample")
        return 0
    rng = np.random.default_rng(a.seed)
    tmp = out.with_name(out.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    for split, prefix, n in (("train", "train", a.per_class), ("test", "t10k", a.test_per_class)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        write(tmp / split, images, labels, sample(labels, n, rng))
    (tmp / marker.name).write_text("")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"fashion-mnist: wrote {10 * a.per_class} training and {10 * a.test_per_class} test images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
