"""Atomic writes: all or nothing, with the permissions any other file would get."""

import os

import pytest

from tunesmith.utils import atomic_dir, atomic_write_figure, atomic_write_text


def test_atomic_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "m").st_mode & 0o777 == 0o755


def test_plots_follow_the_umask_and_leave_no_temporary(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    old = os.umask(0o022)
    try:
        atomic_write_figure(fig, tmp_path / "curve.png")
    finally:
        os.umask(old)
        plt.close(fig)
    assert os.stat(tmp_path / "curve.png").st_mode & 0o777 == 0o644  # mkstemp alone made run-folder PNGs 0600
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == [
        "curve.png"
    ]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "a.txt", 123)  # not text: fails while writing
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
