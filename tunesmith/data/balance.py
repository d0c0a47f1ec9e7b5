"""Class balance for the training split: loss weights, or random over/under-sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd


def class_weights(labels: list, label_names: list[str]) -> list[float]:
    """`balanced` weights (n_rows / (n_classes * rows_of_class)) in the order of `label_names`.

    Pass them to the loss (e.g. `torch.nn.CrossEntropyLoss(weight=torch.tensor(w))`). A label with
    no training row gets weight 0 (it cannot be learned anyway).
    """
    from sklearn.utils.class_weight import compute_class_weight

    present = [name for name in label_names if name in set(labels)]
    weights = dict(
        zip(
            present,
            compute_class_weight("balanced", classes=np.array(present, dtype=object), y=np.array(labels, dtype=object)),
        )
    )
    return [round(float(weights.get(name, 0.0)), 6) for name in label_names]


def resample(df: pd.DataFrame, label_column: str, method: str, seed: int) -> pd.DataFrame:
    """`oversample`: draw extra rows (with replacement) of every class up to the largest;
    `undersample`: keep a random subset of every class down to the smallest. Row order is shuffled."""
    from sklearn.utils import resample as draw

    counts = df[label_column].value_counts()
    target = int(counts.max() if method == "oversample" else counts.min())
    parts = []
    for i, (_label, group) in enumerate(df.groupby(label_column, sort=True)):
        if method == "oversample":
            extra = (
                draw(group, replace=True, n_samples=target - len(group), random_state=seed + i)
                if len(group) < target
                else group.iloc[:0]
            )
            parts += [group, extra]
        else:
            parts.append(draw(group, replace=False, n_samples=target, random_state=seed + i))
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
