"""The image task's data side: every source layout, broken images, splits, augmentation determinism, prefetching."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from image_fixtures import png_bytes, toy_images, write_folder, write_table  # noqa: E402

from tunesmith.config.loader import load_config  # noqa: E402
from tunesmith.errors import ConfigError, DataError  # noqa: E402
from tunesmith.tasks.images.augment import build_augment, input_size, resize_processor  # noqa: E402
from tunesmith.tasks.images.batches import ImageBatches, Pixels  # noqa: E402
from tunesmith.tasks.images.data import load_image_splits  # noqa: E402


def cfg_for(tmp_path: Path, data: dict, **sections):
    return load_config(
        {
            "task": "image-classification",
            "output_dir": str(tmp_path / "runs"),
            "data": data,
            "model": {"name": "x"},
            **sections,
        }
    )


def processor(size: int = 32):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@pytest.fixture(scope="module")
def pairs():
    return toy_images(60, seed=1)


def test_every_source_layout_gives_the_same_images(tmp_path, pairs):
    folder = write_folder(tmp_path / "folder", pairs)
    csv = write_table(tmp_path / "t" / "data.csv", pairs)
    jsonl = write_table(tmp_path / "j" / "data.jsonl", pairs)
    parquet = write_table(tmp_path / "p" / "data.parquet", pairs)
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(img), "path": None} for img, _ in pairs], "label": [y for _, y in pairs]}
    ).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    fingerprints = set()
    for spec in (folder, csv, jsonl, parquet, tmp_path / "hf"):
        s = load_image_splits(cfg_for(tmp_path, {"path": str(spec)}), progress=False)
        assert s.label_names == ["cross", "disc", "square"]
        assert len(s.train) + len(s.validation) + len(s.test) == 60
        assert not set(s.train.keys) & set(s.test.keys)
        everything = sorted(
            zip(s.train.keys + s.validation.keys + s.test.keys, s.train.labels + s.validation.labels + s.test.labels)
        )
        fingerprints.add(str(everything))
    assert len(fingerprints) == 1, "the same pixels and labels, whatever the layout"


def test_split_folders_are_used_as_given(tmp_path, pairs):
    write_folder(tmp_path / "d" / "train", pairs[:30])
    write_folder(tmp_path / "d" / "val", pairs[30:45])
    write_folder(tmp_path / "d" / "test", pairs[45:])
    s = load_image_splits(cfg_for(tmp_path, {"path": str(tmp_path / "d")}), progress=False)
    assert (len(s.train), len(s.validation), len(s.test)) == (30, 15, 15)
    assert s.validation.source.endswith("/validation")


def test_bad_images_are_skipped_counted_and_named(tmp_path, pairs):
    root = write_folder(tmp_path / "imgs", pairs)
    (root / "disc" / "truncated.png").write_bytes(png_bytes(pairs[0][0])[:40])
    (root / "disc" / "empty.jpg").write_bytes(b"")
    (root / "square" / "tiny.png").write_bytes(png_bytes(np.zeros((3, 3, 3), np.uint8)))
    (root / "square" / "notes.txt").write_text("not an image")
    # modes that must be converted, not rejected
    (root / "cross" / "cmyk.jpg").write_bytes(png_bytes(pairs[3][0], "JPEG", "CMYK"))
    (root / "cross" / "rgba.png").write_bytes(png_bytes(pairs[6][0], mode="RGBA"))
    (root / "cross" / "grey.png").write_bytes(png_bytes(pairs[9][0], mode="L"))
    s = load_image_splits(cfg_for(tmp_path, {"path": str(root)}), progress=False)
    assert len(s.train) + len(s.validation) + len(s.test) == 63
    note = next(n for n in s.notes if "left out 3 image(s)" in n)
    assert "2 unreadable" in note and "1 tiny" in note and "empty.jpg" in note and "tiny.png" in note
    assert any("1 files that are not images" in n for n in s.notes)
    modes = s.train.modes + s.validation.modes + s.test.modes
    assert {"CMYK", "RGBA", "L"} <= set(modes)
    with pytest.raises(DataError, match=r"empty\.jpg|truncated\.png"):
        load_image_splits(cfg_for(tmp_path, {"path": str(root)}, images={"bad_images": "error"}), progress=False)


def test_missing_paths_in_a_table_are_reported(tmp_path, pairs):
    import pandas as pd

    csv = write_table(tmp_path / "t" / "data.csv", pairs)
    df = pd.read_csv(csv)
    df.loc[0, "image"] = "pics/nope.png"
    df.loc[1, "image"] = None
    df.to_csv(csv, index=False)
    s = load_image_splits(cfg_for(tmp_path, {"path": str(csv)}), progress=False)
    note = next(n for n in s.notes if "left out 2" in n)
    assert "2 missing" in note and "nope.png" in note
    with pytest.raises(DataError, match="no image column 'picture'"):
        load_image_splits(cfg_for(tmp_path, {"path": str(csv)}, images={"column": "picture"}), progress=False)
    with pytest.raises(DataError, match="not found"):
        load_image_splits(cfg_for(tmp_path, {"path": str(tmp_path / "nowhere")}), progress=False)
    with pytest.raises(DataError, match="no images in class folders"):
        (tmp_path / "empty" / "a").mkdir(parents=True)
        load_image_splits(cfg_for(tmp_path, {"path": str(tmp_path / "empty")}), progress=False)


def test_near_duplicates_stay_on_one_side_of_the_split(tmp_path, pairs):
    dup = [(np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8), y) for img, y in pairs[:20]]  # brighter copies
    root = write_folder(tmp_path / "imgs", pairs + dup)
    s = load_image_splits(cfg_for(tmp_path, {"path": str(root)}), progress=False)
    from tunesmith.data.image_audit import cross_matches

    assert any("stay on one side (60 groups)" in n for n in s.notes)
    for other in (s.validation, s.test):
        assert len(cross_matches(s.train.phashes, other.phashes, 6)[0]) == 0


def test_augmentation_config_is_checked():
    with pytest.raises(ConfigError, match="unknown augmentation 'flipp'"):
        load_config({"task": "image-classification", "data": {"path": "x"}, "images": {"augment": ["flipp"]}})
    with pytest.raises(ConfigError, match="images.size"):
        load_config({"task": "image-classification", "data": {"path": "x"}, "images": {"size": 4}})
    with pytest.raises(ConfigError, match="not used by task text-classification"):
        load_config({"data": {"path": "x"}, "images": {"size": 64}})


def test_augmentation_is_seeded_by_seed_epoch_and_row_and_prefetching_changes_nothing(tmp_path, pairs):
    root = write_folder(tmp_path / "imgs", pairs)
    s = load_image_splits(cfg_for(tmp_path, {"path": str(root)}), progress=False)
    proc = processor(32)
    compose = build_augment(
        ["random_resized_crop", "hflip", {"rotation": 15}, {"color_jitter": {"brightness": 0.3}}], 32
    )
    pixels = Pixels(proc, compose, skip_resize=True, seed=7)
    rows = [0, 1, 2, 3]
    a = pixels(s.train.sources, rows, epoch=0)
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a, pixels(s.train.sources, rows, epoch=0))
    assert not torch.equal(a, pixels(s.train.sources, rows, epoch=1))
    assert torch.equal(a[2:], pixels(s.train.sources, [2, 3], epoch=0)), "a row's picture does not depend on its batch"
    assert not torch.equal(a, Pixels(proc, compose, True, seed=8)(s.train.sources, rows, epoch=0))
    plain = Pixels(proc)(s.train.sources, rows, epoch=None)
    assert not torch.equal(a, plain)

    plan = [[0, 1], [2, 3], [4, 5]]
    sync = ImageBatches(s.train, pixels, train=True, workers=0)
    ahead = ImageBatches(s.train, pixels, train=True, workers=1)
    for b in (sync, ahead):
        b.upcoming(3, plan)
    for rows in plan:
        assert torch.equal(sync.batch(rows)["pixel_values"], ahead.batch(rows)["pixel_values"])
    assert ahead.batch([7, 8])["pixel_values"].shape == (2, 3, 32, 32), "off-plan rows still decode"


def test_the_processor_is_resized_keeping_its_crop_ratio():
    from transformers import ConvNextImageProcessor, ViTImageProcessor

    vit = ViTImageProcessor(size={"height": 224, "width": 224})
    resize_processor(vit, 96)
    assert input_size(vit) == 96 and vit.size == {"height": 96, "width": 96}
    crop = ConvNextImageProcessor(size={"shortest_edge": 256}, crop_pct=None)
    crop.do_center_crop, crop.crop_size = True, {"height": 224, "width": 224}
    resize_processor(crop, 112)
    assert input_size(crop) == 112 and crop.size == {"shortest_edge": 128}
