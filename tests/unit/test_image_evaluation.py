"""Image evaluation on tiny generated images: corruptions, robustness, pixel baseline, slices, the error grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tunesmith.evaluate.images import (
    CORRUPTIONS,
    brightness_buckets,
    corrupt,
    corruption_examples,
    error_grid,
    features_baseline,
    image_robustness,
    luminance,
    pixel_baseline,
    pixel_features,
    plot_per_class,
    size_buckets,
)
from tunesmith.evaluate.robustness import plot_robustness
from tunesmith.evaluate.slices import slice_metrics

LABELS = ["dark-square", "mid-circle", "bright-triangle"]
BACKGROUND = [50, 128, 205]


def _image(label: int, rng: np.random.Generator, side: int = 24) -> Image.Image:
    """Class = background level + shape; position and colour jitter so no two images are the same."""
    level = BACKGROUND[label] + int(rng.integers(-8, 9))
    img = Image.new("RGB", (side, side), (level, level, level))
    draw = ImageDraw.Draw(img)
    x, y = (int(v) for v in rng.integers(3, 9, size=2))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    if label == 0:
        draw.rectangle([x, y, x + 10, y + 10], fill=colour)
    elif label == 1:
        draw.ellipse([x, y, x + 11, y + 11], fill=colour)
    else:
        draw.polygon([(x, y + 11), (x + 11, y + 11), (x + 5, y)], fill=colour)
    return img


def _toy(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    return [_image(int(c), rng) for c in y], y


@pytest.fixture(scope="module")
def toy():
    return _toy(20, seed=0)


def _by_brightness(images, y):
    """A classifier that only looks at mean luminance, thresholds halfway between the class means."""
    lum = np.array([luminance(i) for i in images])
    means = sorted(lum[y == c].mean() for c in range(3))
    cuts = [(means[0] + means[1]) / 2, (means[1] + means[2]) / 2]

    def predict(batch):
        pred = np.searchsorted(cuts, [luminance(i) for i in batch])
        return np.eye(3)[pred] * 0.9 + 0.1 / 3

    return predict


def test_corruptions_are_deterministic_and_change_the_image(toy):
    img = toy[0][0]
    clean = np.asarray(img)
    for name in CORRUPTIONS:
        a, b = np.asarray(corrupt(img, name, seed=1, row=5)), np.asarray(corrupt(img, name, seed=1, row=5))
        assert a.shape == clean.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, clean), f"{name} left the image unchanged"
    other = np.asarray(corrupt(img, "noise", seed=2, row=5))
    assert not np.array_equal(other, np.asarray(corrupt(img, "noise", seed=1, row=5)))
    assert luminance(corrupt(img, "darker")) < luminance(img) - 40
    assert luminance(corrupt(img, "brighter")) > luminance(img) + 40


def test_robustness_drops_under_brightness_not_under_blur(toy, tmp_path):
    images, y = toy
    predict = _by_brightness(images, y)
    report = image_robustness(images, y, predict, LABELS, seed=0, samples=30, resamples=200)
    assert report["n"] == 30 and report["clean"]["accuracy"] == 1.0
    assert set(report["perturbations"]) == set(CORRUPTIONS)
    darker, blur = report["perturbations"]["darker"], report["perturbations"]["blur"]
    assert darker["accuracy_drop"] > 0.4 and darker["flipped"] > 0.4
    assert darker["macro_f1_drop_low"] > 0  # a real drop: the interval excludes zero
    assert abs(blur["accuracy_drop"]) < 0.05 and blur["images_changed"] == 1.0
    assert blur["macro_f1_drop_low"] <= blur["macro_f1_drop"] <= blur["macro_f1_drop_high"]
    for p in report["perturbations"].values():  # the keys markdown.robustness_section and plot_robustness read
        assert {"macro_f1", "accuracy", "macro_f1_drop", "accuracy_drop", "flipped", "texts_changed"} <= set(p)
    plot_robustness(report, tmp_path / "robustness.png", "toy")
    assert (tmp_path / "robustness.png").stat().st_size > 0
    reused = image_robustness(images, y, predict, LABELS, seed=0, samples=30, clean_probs=predict(images), resamples=0)
    assert reused["perturbations"]["darker"]["accuracy"] == darker["accuracy"]


def test_pixel_baseline_learns_a_separable_set(toy):
    images, y = toy
    test_images, y_test = _toy(10, seed=1)
    metrics = pixel_baseline(images, y, test_images, y_test, LABELS, seed=0, size=8)
    assert metrics["n"] == 30 and metrics["accuracy"] >= 0.9 and set(metrics["per_class"]) == set(LABELS)
    assert pixel_features(images[:2], size=8).shape == (2, 8 * 8 * 3)
    rng = np.random.default_rng(0)
    noise = features_baseline(rng.normal(size=(60, 5)), y, rng.normal(size=(30, 5)), y_test, LABELS)
    assert noise["accuracy"] < 0.7  # random features stay near chance: the baseline is not leaking labels


def test_size_buckets_are_balanced_and_named():
    sizes = [(20 + i, 20 + i) for i in range(30)]
    names = size_buckets(sizes)
    counts = {n: names.count(n) for n in set(names)}
    assert counts == {"<=29x29": 10, "<=39x39": 10, ">39x39": 10}
    assert names[0] == "<=29x29" and names[-1] == ">39x39"
    assert size_buckets([(32, 32)] * 5) == ["any size"] * 5
    y = np.arange(30) % 3
    assert set(slice_metrics(y, y, names, 3, min_size=5)["slices"]) == set(counts)


def test_brightness_buckets_are_terciles():
    images = [Image.new("RGB", (8, 8), (v, v, v)) for v in range(10, 250, 8)]  # 30 levels
    names = brightness_buckets(images)
    assert {n: names.count(n) for n in set(names)} == {"dark": 10, "mid": 10, "bright": 10}
    assert names[0] == "dark" and names[-1] == "bright" and names[15] == "mid"
    assert brightness_buckets(images, buckets=2).count("dark") == 15


def test_error_grid_shows_the_most_confident_errors(toy, tmp_path):
    images, y = toy
    probs = np.eye(3)[y] * 0.8 + 0.1  # all right ...
    wrong = {4: (2, 0.95), 30: (0, 0.60), 50: (1, 0.99), 10: (1, 0.45)}  # ... except these: row -> (pred, p)
    for row, (pred, p) in wrong.items():
        probs[row] = (1 - p) / 2
        probs[row, pred] = p
    shown = error_grid(images, y, probs, LABELS, tmp_path / "errors.png", n=3)
    assert [s["row"] for s in shown] == [50, 4, 30]
    assert shown[0] == {"row": 50, "true": LABELS[y[50]], "predicted": LABELS[1], "p": pytest.approx(0.99)}
    with Image.open(tmp_path / "errors.png") as png:
        assert png.format == "PNG" and png.width > 100
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert error_grid(images, y, np.eye(3)[y], LABELS, tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()


def test_extra_figures(toy, tmp_path):
    images, y = toy
    corruption_examples(images[0], tmp_path / "corruptions.png")
    metrics = features_baseline(pixel_features(images, 8), y, pixel_features(images, 8), y, LABELS)
    plot_per_class(metrics, tmp_path / "per_class.png")
    assert (tmp_path / "corruptions.png").exists() and (tmp_path / "per_class.png").exists()
