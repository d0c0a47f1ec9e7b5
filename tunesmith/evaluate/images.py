"""Image-classification evaluation: corruption robustness, pixel/feature baselines, image slices, error grids.

Task-agnostic: images come in as a sequence of PIL images (`images[i]`; a lazy sequence that opens files
on indexing works too, and robustness and the error grid only index the rows they use), labels as ints,
and the model as `predict(list[PIL.Image]) -> probabilities [n, k]`. The outputs have the same shapes as
the text ones (`robustness.robustness`, `baseline.tfidf_baseline`, `slices.length_buckets`), so
metrics.json, markdown and plots treat image runs like text runs.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from ..utils import atomic_write_figure
from .metrics import classification_metrics
from .robustness import sample_rows
from .stats import metric_value, paired_delta

# One moderate severity each, applied at the image's stored resolution (before the model's own resize): a
# model that passes these is not fragile to everyday camera/compression variation, and one that fails shows
# which kind. Severities are in pixels/intensity levels, so blur and noise are partly undone when a large
# image is shrunk to the model's input size; brightness and JPEG hold at any size.
CORRUPTIONS = {
    "blur": "Gaussian blur, sigma 1.5 px",
    "noise": "Gaussian noise, std 0.08 of the range (~20/255) per channel",
    "darker": "brightness -0.25 of the range (~64/255), contrast unchanged",
    "brighter": "brightness +0.25 of the range (~64/255), contrast unchanged",
    "jpeg_q20": "JPEG re-encoding at quality 20",
    "low_res": "downscale to 1/2 (area), upscale back (bilinear)",
}


def _transform(A, name: str):
    import cv2

    return {
        "blur": lambda: A.GaussianBlur(blur_limit=0, sigma_limit=(1.5, 1.5), p=1.0),
        "noise": lambda: A.GaussNoise(std_range=(0.08, 0.08), mean_range=(0.0, 0.0), per_channel=True, p=1.0),
        "darker": lambda: A.RandomBrightnessContrast(brightness_limit=(-0.25, -0.25), contrast_limit=(0, 0), p=1.0),
        "brighter": lambda: A.RandomBrightnessContrast(brightness_limit=(0.25, 0.25), contrast_limit=(0, 0), p=1.0),
        "jpeg_q20": lambda: A.ImageCompression(compression_type="jpeg", quality_range=(20, 20), p=1.0),
        "low_res": lambda: A.Downscale(
            scale_range=(0.5, 0.5),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=1.0,
        ),
    }[name]()


class Corruptor:
    """Applies one named corruption; the result is a pure function of (image, seed, row), whatever the call order.

    Only the noise is random, but every corruption is seeded per image the same way, so adding a random
    severity later keeps the guarantee.
    """

    def __init__(self, name: str):
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
        import albumentations as A

        self.name = name
        self.compose = A.Compose([_transform(A, name)])

    def __call__(self, image, seed: int = 0, row: int = 0):
        from PIL import Image

        digest = hashlib.blake2b(f"{seed}|{self.name}|{row}".encode(), digest_size=4).digest()
        self.compose.set_random_seed(int.from_bytes(digest, "little"))
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return Image.fromarray(np.ascontiguousarray(self.compose(image=pixels)["image"]), mode="RGB")


def corrupt(image, name: str, seed: int = 0, row: int = 0):
    """One image under one corruption (a new RGB PIL image); see CORRUPTIONS for the severities."""
    return Corruptor(name)(image, seed, row)


def image_robustness(
    images: Sequence,
    y,
    predict: Callable,
    label_names: list[str],
    seed: int = 0,
    samples: int = 500,
    clean_probs: np.ndarray | None = None,
    resamples: int = 1000,
) -> dict:
    """{n, clean: {macro_f1, accuracy}, perturbations: {corruption: metrics, drops, flipped, changed, CI}}.

    The shape of `robustness.robustness` (so `plot_robustness` and markdown read it) plus, per corruption, a
    paired-bootstrap interval of the macro-F1 drop and its permutation p-value (`resamples=0` skips them): on
    a few hundred images a 2-point drop can be noise. The same stratified sample is used for every
    corruption; `clean_probs` (for all rows) saves the clean pass when the caller already has it.
    """
    k = len(label_names)
    rows = sample_rows(y, samples, seed)
    y = np.asarray(y)[rows]
    clean_images = [images[int(i)].convert("RGB") for i in rows]
    clean_pred = (np.asarray(clean_probs)[rows] if clean_probs is not None else predict(clean_images)).argmax(1)
    clean = {m: float(metric_value(m, y, clean_pred, k)) for m in ("macro_f1", "accuracy")}
    out = {"n": int(len(rows)), "clean": clean, "perturbations": {}}
    for name, description in CORRUPTIONS.items():
        fn = Corruptor(name)
        changed = [fn(img, seed, int(i)) for img, i in zip(clean_images, rows)]
        pred = np.asarray(predict(changed)).argmax(1)
        scores = {m: float(metric_value(m, y, pred, k)) for m in ("macro_f1", "accuracy")}
        share = float(
            np.mean([np.asarray(a).tobytes() != np.asarray(b).tobytes() for a, b in zip(clean_images, changed)])
        )
        entry = {
            **scores,
            "macro_f1_drop": clean["macro_f1"] - scores["macro_f1"],
            "accuracy_drop": clean["accuracy"] - scores["accuracy"],
            "flipped": float((pred != clean_pred).mean()),
            "images_changed": share,
            "texts_changed": share,  # the text key, so markdown.robustness_section reads image runs unchanged
            "description": description,
        }
        if resamples:
            d = paired_delta(y, clean_pred, pred, k, "macro_f1", resamples=resamples, seed=seed)
            entry.update({"macro_f1_drop_low": 0.0 - d["high"], "macro_f1_drop_high": 0.0 - d["low"], "p": d["p"]})
        out["perturbations"][name] = entry
    return out


def pixel_features(images: Sequence, size: int = 16) -> np.ndarray:
    """[n, size*size*3] float32 in [0, 1]: each image as RGB, resized (antialiased) to size x size, flattened."""
    from PIL import Image

    out = np.empty((len(images), size * size * 3), dtype=np.float32)
    for i in range(len(images)):
        small = images[i].convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    return out


def pixel_baseline(
    train_images: Sequence, y_train, test_images: Sequence, y_test, label_names: list[str], seed: int = 0, size=16
) -> dict:
    """Logistic regression on raw downsampled pixels: what `classification_metrics` returns on the test set.

    The image counterpart of the TF-IDF baseline: the floor a fine-tuned model must clear by a wide margin.
    When it comes close, the labels follow colour or layout (a shortcut), not content.
    """
    return features_baseline(
        pixel_features(train_images, size), y_train, pixel_features(test_images, size), y_test, label_names, seed
    )


def features_baseline(train_features, y_train, test_features, y_test, label_names: list[str], seed: int = 0) -> dict:
    """Standardized logistic regression on given features (e.g. a frozen backbone's): `classification_metrics`.

    On frozen-backbone features this is a linear probe fitted in seconds: what fine-tuning adds beyond it is
    what the training bought.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    )
    pipe.fit(np.asarray(train_features, dtype=np.float64), np.asarray(y_train))
    x_test = np.asarray(test_features, dtype=np.float64)
    probs = np.zeros((len(x_test), len(label_names)))
    probs[:, pipe.classes_] = pipe.predict_proba(x_test)
    return classification_metrics(y_test, probs, label_names)


def size_buckets(sizes: list[tuple[int, int]], buckets: int = 3) -> list[str]:
    """Each image's size bucket by pixel count ("<=28x28", "<=64x48", ">64x48"), cut at quantiles.

    sizes are PIL's (width, height). The cut points are real sizes of the set (the most common size with
    that pixel count names it), so the names say what the images look like; ties keep a size in one bucket.
    """
    pixels = np.array([w * h for w, h in sizes], dtype=np.int64)
    if not len(pixels):
        return []
    cuts = np.quantile(pixels, np.linspace(0, 1, buckets + 1)[1:-1], method="lower") if buckets > 1 else []
    edges = sorted({int(e) for e in cuts if e < pixels.max()})
    if not edges:
        return ["any size"] * len(sizes)
    named = {e: Counter((w, h) for w, h in sizes if w * h == e).most_common(1)[0][0] for e in edges}
    names = [f"<={named[e][0]}x{named[e][1]}" for e in edges] + [f">{named[edges[-1]][0]}x{named[edges[-1]][1]}"]
    return [names[int(np.searchsorted(edges, p, side="left"))] for p in pixels]


def luminance(image) -> float:
    """Mean luma (ITU-R 601, 0-255), what "dark" or "bright" means for a photo."""
    return float(np.asarray(image.convert("L"), dtype=np.float32).mean())


def brightness_buckets(images: Sequence, buckets: int = 3) -> list[str]:
    """Each image's mean-luminance bucket, cut at quantiles: "dark", "mid", "bright" for terciles.

    Under- and over-exposed photos are where models fail first; slicing by it finds that without metadata.
    Two buckets are "dark"/"bright"; other counts are named "brightness i/n" (1 darkest).
    """
    lum = np.array([luminance(images[i]) for i in range(len(images))])
    if not len(lum):
        return []
    cuts = np.quantile(lum, np.linspace(0, 1, buckets + 1)[1:-1], method="lower") if buckets > 1 else []
    edges = sorted({float(e) for e in cuts if e < lum.max()})
    n = len(edges) + 1
    names = {1: ["any brightness"], 2: ["dark", "bright"], 3: ["dark", "mid", "bright"]}.get(
        n, [f"brightness {i + 1}/{n}" for i in range(n)]
    )
    return [names[int(np.searchsorted(edges, v, side="left"))] for v in lum]


def confident_errors(y, probs: np.ndarray, n: int = 16) -> np.ndarray:
    """Row indices of the n wrong predictions with the highest predicted probability, most confident first."""
    y, probs = np.asarray(y), np.asarray(probs)
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    return wrong[np.argsort(-conf, kind="stable")[:n]]


def error_grid(images: Sequence, y, probs: np.ndarray, label_names: list[str], path, n: int = 16, title="") -> list:
    """A PNG grid of the n most confident test errors, captioned "true -> predicted (p)"; returns those rows.

    Confident mistakes are where label noise and real blind spots show: looking at 16 of them says more than
    a confusion matrix. Returns [{"row", "true", "predicted", "p"}] in the grid's order; with no errors it
    writes nothing and returns [].
    """
    probs = np.asarray(probs)
    rows = confident_errors(y, probs, n)
    if not len(rows):
        return []
    shown = []
    for r in rows:
        p = int(probs[r].argmax())
        shown.append(
            {"row": int(r), "true": label_names[int(y[r])], "predicted": label_names[p], "p": float(probs[r, p])}
        )
    tiles = []
    for s in shown:
        tiles.append((_thumbnail(images[s["row"]]), f"{_short(s['true'])} -> {_short(s['predicted'])} ({s['p']:.2f})"))
    _grid(tiles, path, title or f"most confident errors ({len(shown)})")
    return shown


def corruption_examples(image, path, seed: int = 0, title: str = "") -> None:
    """One image clean and under every corruption, side by side: shows the reader what each severity means."""
    tiles = [(_thumbnail(image), "clean")]
    tiles += [(_thumbnail(Corruptor(name)(image, seed)), name) for name in CORRUPTIONS]
    _grid(tiles, path, title or "corruptions (robustness)", cols=len(tiles))


def plot_per_class(metrics: dict, path, title: str = "", limit: int = 40) -> None:
    """Horizontal bars of per-class accuracy (recall) from `classification_metrics`, worst first, with support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = sorted(metrics["per_class"].items(), key=lambda kv: kv[1]["recall"])[:limit]
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.3 * len(per)))
    ax.barh([f"{_short(name)} (n={int(v['support'])})" for name, v in per], [v["recall"] for _, v in per])
    ax.axvline(metrics["accuracy"], color="k", ls="--", lw=1)
    ax.set_xlim(0, 1), ax.set_xlabel("accuracy (recall) per class"), ax.invert_yaxis()
    ax.set_title(title or "per-class accuracy (dashed: overall)", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)


def _thumbnail(image, side: int = 160) -> np.ndarray:
    small = image.convert("RGB")
    small.thumbnail((side, side))  # shrinks only: tiny images stay tiny and are enlarged by imshow
    return np.asarray(small)


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _grid(tiles: list[tuple[np.ndarray, str]], path, title: str, cols: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = cols or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (pixels, caption) in zip(axes.ravel(), tiles):
        ax.imshow(pixels, interpolation="nearest" if max(pixels.shape[:2]) < 64 else "antialiased")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    plt.close(fig)
