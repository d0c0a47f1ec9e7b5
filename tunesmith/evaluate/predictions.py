"""test_predictions.csv of a classification run: one row per test item, the label, the prediction, every probability."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CR = "\ue000"  # a private-use character stands in for "\r" while parsing


def read_predictions(path: Path) -> pd.DataFrame:
    """test_predictions.csv; also right for files written before texts were quoted (a bare "\r" split rows)."""
    import io

    raw = Path(path).read_bytes().decode("utf-8").replace("\r", CR)  # read_text() would turn "\r" into "\n"
    df = pd.read_csv(
        io.StringIO(raw), keep_default_na=False, dtype={"label": str, "predicted": str, "text": str, "image": str}
    )
    if "text" not in df.columns and "image" in df.columns:  # an image run names each test image instead
        df["text"] = df["image"]
    df["text"] = df["text"].str.replace(CR, "\r", regex=False)
    return df
