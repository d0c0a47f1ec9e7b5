"""Image audit: exact keys across formats, perceptual near duplicates (recall on planted edits, no false positives among
distinct pictures), leakage blocking, conflicting labels, label errors, size/mode statistics, the written report."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, PngImagePlugin

from tunesmith.config.schema import AuditConfig
from tunesmith.data.image_audit import (
    PHASH_DISTANCE,
    ImageSet,
    audit_images,
    cross_matches,
    image_keys,
    near_duplicate_groups_images,
    near_duplicate_pairs,
)
from tunesmith.errors import ConfigError

FAST = AuditConfig(label_errors=False)
NAMES = ["cat", "dog", "fox"]


def smooth(rng, side=32) -> Image.Image:
    """A picture with low-frequency structure (as photos have) plus pixel noise."""
    base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
    a = np.asarray(base).astype(int) + rng.integers(-20, 21, (side, side, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def shapes(rng, side=32) -> Image.Image:
    img = Image.new("RGB", (side, side), tuple(int(x) for x in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, side - 8, 2))
        box = [x, y, x + int(rng.integers(6, 20)), y + int(rng.integers(6, 20))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            box, fill=tuple(int(v) for v in rng.integers(0, 256, 3))
        )
    return img


def reencode(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


EDITS = {
    "jpeg q60": lambda im: reencode(im, "JPEG", quality=60).convert("RGB"),
    "brightness +10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "brightness -10%": lambda im: ImageEnhance.Brightness(im).enhance(0.9),
    "crop 1px + resize": lambda im: im.crop((1, 1, 32, 32)).resize((32, 32), Image.BICUBIC),
    "resize 2x": lambda im: im.resize((64, 64), Image.BICUBIC),
}


def image_set(name: str, images: list, labels: list[int], refs: list[str] | None = None, **kw) -> ImageSet:
    keys, hashes = zip(*(image_keys(im) for im in images)) if images else ((), ())
    return ImageSet(
        name,
        list(keys),
        np.array(hashes, dtype=np.uint64),
        list(labels),
        [im.size for im in images],
        [im.mode for im in images],
        refs or [f"{name}/{i}.png" for i in range(len(images))],
        **kw,
    )


def test_exact_key_ignores_format_mode_and_metadata():
    rng = np.random.default_rng(0)
    img = smooth(rng)
    key = image_keys(img)[0]
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another tool")
    assert image_keys(reencode(img, "PNG"))[0] == key
    assert image_keys(reencode(img, "PNG", pnginfo=info))[0] == key
    assert image_keys(reencode(img, "WEBP", lossless=True))[0] == key
    grey = img.convert("L")
    assert image_keys(reencode(grey, "PNG"))[0] == image_keys(grey.convert("RGB"))[0]  # L file vs RGB file
    jpeg = reencode(img, "JPEG", quality=90)
    key_j, hash_j = image_keys(jpeg)
    assert key_j != key and bin(hash_j ^ image_keys(img)[1]).count("1") <= PHASH_DISTANCE
    assert image_keys(img.resize((33, 32)))[0] != key  # size is part of the key


def test_planted_near_duplicates_are_found_and_distinct_pictures_are_not():
    rng = np.random.default_rng(1)
    distinct = [smooth(rng) for _ in range(150)] + [shapes(rng) for _ in range(50)]
    hashes = np.array([image_keys(im)[1] for im in distinct], np.uint64)
    pairs, _ = near_duplicate_pairs(hashes, PHASH_DISTANCE)
    assert len(pairs) == 0  # 19,900 distinct pairs, none within the distance

    recall = {}
    for name, edit in EDITS.items():
        edited = np.array([image_keys(edit(im))[1] for im in distinct[::4]], np.uint64)
        other, train, _ = cross_matches(hashes, edited, PHASH_DISTANCE)
        assert (train == other * 4).all()  # each edit matches its own original, never another picture
        recall[name] = len(other) / len(edited)
    assert min(v for k, v in recall.items() if "crop" not in k) >= 0.95 and recall["crop 1px + resize"] >= 0.5, recall


def test_hash_search_agrees_with_brute_force():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**63, 200, dtype=np.uint64) << np.uint64(1)
    for d in (0, 3, 6, 9, 12):
        flipped = [
            int(b) ^ sum(1 << int(k) for k in rng.choice(64, int(rng.integers(0, d + 3)), replace=False))
            for b in base[:80]
        ]
        h = np.concatenate([base, np.array(flipped, np.uint64), base[:10]])
        full = np.bitwise_count(h[:, None] ^ h[None, :])
        pairs, dist = near_duplicate_pairs(h, d)
        assert (full[pairs[:, 0], pairs[:, 1]] == dist).all() and (dist <= d).all()
        groups = near_duplicate_groups_images([str(i) for i in range(len(h))], h, d)
        i, j = np.nonzero(full <= d)
        assert (groups[i] == groups[j]).all()  # every close pair shares a group
        other, train, best = cross_matches(h[:200], h[200:], d)
        cross = full[200:, :200]
        expected = np.nonzero(cross.min(axis=1) <= d)[0]
        assert (other == expected).all() and (best == cross.min(axis=1)[expected]).all()
        assert (train == cross.argmin(axis=1)[expected]).all()


def test_groups_keep_exact_and_near_duplicates_together():
    rng = np.random.default_rng(3)
    imgs = [smooth(rng) for _ in range(6)]
    imgs += [reencode(imgs[0], "WEBP", lossless=True), EDITS["jpeg q60"](imgs[1]), imgs[0]]
    keys, hashes = zip(*(image_keys(im) for im in imgs))
    groups = near_duplicate_groups_images(list(keys), np.array(hashes, np.uint64))
    assert groups.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 0]


def test_leakage_blocks_by_exact_and_near_match_unless_allowed():
    rng = np.random.default_rng(4)
    train_imgs = [smooth(rng) for _ in range(30)]
    test_imgs = [smooth(rng) for _ in range(8)] + [
        reencode(train_imgs[3], "WEBP", lossless=True),
        EDITS["jpeg q60"](train_imgs[5]),
    ]
    sets = {
        "train": image_set("train", train_imgs, [i % 3 for i in range(30)]),
        "test": image_set("test", test_imgs, [0] * 10),
    }
    report = audit_images(sets, NAMES, FAST)
    counts = report.counts()
    assert counts["test.leaked_rows"] == 2 and counts["leakage.test_in_train"] == 2 and counts["blocking"] == 1
    (msg,) = report.blocking
    assert "2 of 10 test images" in msg and "1 exact, 1 near" in msg and "test/8.png ~ train train/3.png" in msg
    pairs = {p["row"]: p for p in report.leakage[0].pairs}
    assert pairs[9]["kind"] == "exact" and pairs[9]["reference_row"] == 4 and pairs[10]["kind"] == "near"
    assert report.pairs[0]["kind"] == "leak (near)"  # the figure shows near leaks first
    assert not audit_images(sets, NAMES, AuditConfig(label_errors=False, block_on_leakage=False)).blocking
    assert not audit_images(sets, NAMES, AuditConfig(label_errors=False, leakage_tolerance=0.25)).blocking
    exact_only = audit_images(sets, NAMES, AuditConfig(label_errors=False, near_duplicates=False))
    assert exact_only.counts()["test.leaked_rows"] == 1


def test_duplicates_conflicting_labels_and_near_clusters_in_train():
    rng = np.random.default_rng(5)
    imgs = [smooth(rng) for _ in range(10)]
    imgs += [imgs[0].copy(), imgs[1], EDITS["brightness +10%"](imgs[2])]
    labels = [i % 3 for i in range(10)] + [0, 2, 0]  # rows 12 and 13 copy rows 2 and 3 with other labels
    report = audit_images({"train": image_set("train", imgs, labels)}, NAMES, FAST)
    d = report.duplicates["train"]
    assert d.exact_groups == [[1, 11], [2, 12]] and d.exact_conflicts == [[2, 12]] and d.redundant_rows == 2
    assert d.near_clusters == [[3, 13]] and d.near_conflicts == [[3, 13]]
    counts = report.counts()
    assert counts["train.exact_duplicate_rows"] == 2 and counts["train.exact_conflicts"] == 1
    assert counts["train.near_duplicate_clusters"] == 1 and not report.leakage and not report.blocking
    assert any("same picture with different labels" in w for w in report.warnings)
    assert report.pairs[0]["row"] == 3 and report.pairs[0]["other_row"] == 13


def test_label_errors_on_separable_features():
    rng = np.random.default_rng(6)
    n = 240
    labels = [i % 3 for i in range(n)]
    centres = rng.normal(0, 1, (3, 16)) * 4
    features = centres[labels] + rng.normal(0, 1, (n, 16))
    flipped = [7, 50, 101, 150, 199, 230]
    for i in flipped:
        labels[i] = (labels[i] + 1) % 3
    imgs = [Image.new("RGB", (32, 32), (i, i, i)) for i in range(n)]
    sets = {"train": image_set("train", imgs, labels)}
    report = audit_images(sets, NAMES, AuditConfig(near_duplicates=False), features={"train": features})
    ln = report.label_noise
    rows = {issue.row - 1 for issue in ln.issues}
    assert set(flipped) <= rows and len(rows) <= len(flipped) + 3, rows
    assert ln.issues[0].text.startswith("train/") and ln.model == "features" and ln.kappa > 0.9
    assert report.counts()["label_issues"] == len(ln.issues)
    assert "no backbone features" in audit_images(sets, NAMES, AuditConfig()).label_noise.skipped


def test_label_errors_skipped_when_the_split_leaks_and_stop_at_leakage():
    rng = np.random.default_rng(7)
    imgs = [smooth(rng) for _ in range(20)]
    sets = {"train": image_set("train", imgs, [i % 2 for i in range(20)]), "test": image_set("test", imgs[:1], [0])}
    report = audit_images(sets, NAMES, AuditConfig(), {"train": rng.normal(size=(20, 4))}, stop_at_leakage=True)
    assert report.blocking and "leaks" in report.label_noise.skipped


def test_size_and_mode_statistics_and_balance():
    rng = np.random.default_rng(8)
    imgs = [smooth(rng) for _ in range(5)] + [smooth(rng, 16)]
    s = image_set("train", imgs, [0, 0, 0, 0, 0, 1], skipped={"unreadable": ["a.png (truncated)"]})
    s.modes = ["RGB", "RGB", "L", "CMYK", "RGBA", "P"]
    s.sizes[2] = (6000, 5000)  # the loader measures sizes; a large one needs no large test image
    report = audit_images({"train": s}, NAMES, FAST)
    st = report.stats["train"]
    assert st.modes == {"RGB": 2, "L": 1, "CMYK": 1, "RGBA": 1, "P": 1}
    assert st.width == {"min": 16, "median": 32.0, "max": 6000} and st.tiny == [6] and st.large == [3]
    counts = report.counts()
    assert counts["train.tiny_images"] == 1 and counts["train.large_images"] == 1 and counts["train.skipped"] == 1
    assert report.balance["train"] == {"cat": 5, "dog": 1} and counts["train.imbalance_ratio"] == 5.0
    assert any("fox" in w for w in report.warnings) and any("1 unreadable" in w for w in report.warnings)


def test_report_saves_markdown_json_and_pairs_figure(tmp_path):
    rng = np.random.default_rng(9)
    train = [smooth(rng) for _ in range(6)]
    test = [EDITS["jpeg q60"](train[0]), smooth(rng)]
    images = {"train": dict(enumerate(train)), "test": dict(enumerate(test))}
    sets = {
        "train": image_set("train", train, [0, 1] * 3, source="data/train"),
        "test": image_set("test", test, [0, 1]),
    }
    report = audit_images(sets, NAMES, FAST, open_image=lambda split, ref: images[split][int(ref.split("/")[1][:-4])])
    written = report.save(tmp_path, "audit")
    assert [p.name for p in written] == ["audit.md", "audit.json", "audit_pairs.png"]
    md = (tmp_path / "audit.md").read_text()
    assert "**BLOCKING** leakage" in md and "| train | 6 |" in md and "audit_pairs.png" in md
    data = json.loads((tmp_path / "audit.json").read_text())
    assert data["counts"]["test.leaked_rows"] == 1 and data["sources"]["train"] == "data/train"
    assert Image.open(tmp_path / "audit_pairs.png").format == "PNG"
    no_images = audit_images(sets, NAMES, FAST).save(tmp_path / "plain")
    assert len(no_images) == 2 and "pairs.png" not in no_images[0].read_text()


def test_audit_needs_a_training_set_and_a_sane_distance():
    with pytest.raises(ValueError, match="train"):
        audit_images({"test": image_set("test", [], [])}, NAMES, FAST)
    with pytest.raises(ConfigError, match="between 0 and 16"):
        audit_images({"train": image_set("train", [], [])}, NAMES, FAST, max_distance=20)
