"""Stratified splits that keep groups whole: rows of one source (or one near-duplicate cluster) stay on one side."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config.schema import AuditConfig
from ..errors import DataError
from .dedup import NearIndex, near_clusters
from .textkeys import normalize_text


def near_duplicate_groups(t: pd.DataFrame, group_column: str | None, near: AuditConfig | None) -> np.ndarray:
    """A group id per row: rows share an id when they share a `group` value or sit in one near-duplicate cluster."""
    n = len(t)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(rows) -> None:
        rows = list(rows)
        for r in rows[1:]:
            a, b = find(rows[0]), find(r)
            if a != b:
                parent[max(a, b)] = min(a, b)

    if group_column:
        for _, rows in t.groupby("group", dropna=True).indices.items():
            union(rows)
    if near is not None and n:
        keys = t["text"].map(normalize_text).tolist()
        index = NearIndex.for_audit(keys, near)
        for cluster in near_clusters(keys, index):
            union(cluster.rows)
        for rows in pd.Series(range(n)).groupby(keys).indices.values():  # exact copies (if kept) too
            union(rows)
    return np.array([find(i) for i in range(n)])


def grouped_split(t: pd.DataFrame, share: float, groups: np.ndarray | None, seed: int, src: str, what: str):
    """Split `share` of the rows off `t`, stratified by label; with `groups`, no group is cut in two.

    Returns (rest, split_off, groups of rest). Group splits use `StratifiedGroupKFold` with
    round(1/share) folds and take one fold, so the size is close to, not exactly, `share`.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    if groups is None or len(set(groups)) == len(groups):
        try:
            keep, off = train_test_split(np.arange(len(t)), test_size=share, random_state=seed, stratify=t["label"])
        except ValueError as err:
            raise DataError(
                f"{src}: cannot make a stratified {what} split ({err}); add rows or raise prepare.min_label_rows"
            ) from None
    else:
        folds = max(2, round(1 / share))
        if len(set(groups)) < folds:
            raise DataError(
                f"{src}: only {len(set(groups))} groups; a grouped {what} split needs at least {folds}; use fewer, larger splits or more groups"
            )
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        keep, off = next(cv.split(np.zeros(len(t)), t["label"], groups))
    keep, off = np.sort(keep), np.sort(off)
    rest = t.iloc[keep].reset_index(drop=True)
    return rest, t.iloc[off].reset_index(drop=True), (groups[keep] if groups is not None else None)
