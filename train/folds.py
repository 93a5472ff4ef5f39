"""Multilabel-stratified splits over photos, never tiles, so that no photo leaks from training into validation.

Each photo is described by binary labels, and the iterative-stratification package
(MultilabelStratifiedKFold) spreads every label evenly over the folds:

* class presence: one label per class, set when the photo holds a box of that class;
* box-count bin: exactly one of 0, 1-2, 3-5, 6+ boxes (so empty photos are spread too);
* box-size bins: one label per size bin (side sqrt(w * h) under 32, 32-64, 64-128, 128+ px) that
  any of its boxes falls in (COCO calls everything under 32 px "small": most people seen from a
  drone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COUNT_BINS = (0, 1, 3, 6)  # lower edges: 0, 1-2, 3-5, 6+
SIZE_BINS = (0, 32, 64, 128)  # lower edges of sqrt(area) in px


def _bin_names(edges: Sequence[int], unit: str = "") -> list[str]:
    names = []
    for i, lo in enumerate(edges):
        if i + 1 < len(edges):
            hi = edges[i + 1]
            names.append(f"{lo}{unit}" if hi == lo + 1 else f"{lo}-{hi - 1}{unit}")
        else:
            names.append(f"{lo}+{unit}")
    return names


@dataclass
class PhotoLabels:
    """The multilabel matrix that stratification balances.

    Attributes:
        matrix: (N, L) int8, one row per photo.
        names: L label names ("class:person", "count:3-5", "size:32-63px").
    """

    matrix: np.ndarray
    names: list[str]


def photo_labels(
    boxes: Sequence[np.ndarray],
    class_ids: Sequence[np.ndarray],
    class_names: Sequence[str],
    count_bins: Sequence[int] = COUNT_BINS,
    size_bins: Sequence[int] = SIZE_BINS,
) -> PhotoLabels:
    """Class presence, box-count bin and box-size bins of each photo.

    Args:
        boxes: Per photo, (N_i, 4) xyxy boxes in pixels.
        class_ids: Per photo, (N_i,) class ids.
        class_names: The classes.
        count_bins: Lower edges of the box-count bins (first must be 0).
        size_bins: Lower edges of the box-size bins in px (first must be 0).

    Returns:
        PhotoLabels with len(class_names) + len(count_bins) + len(size_bins) columns.
    """
    nc, ncb, nsb = len(class_names), len(count_bins), len(size_bins)
    m = np.zeros((len(boxes), nc + ncb + nsb), np.int8)
    for i, (b, c) in enumerate(zip(boxes, class_ids)):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        c = np.asarray(c, np.int64).reshape(-1)
        m[i, np.unique(c)] = 1
        m[i, nc + int(np.searchsorted(count_bins, len(b), side="right") - 1)] = 1
        if len(b):
            side = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
            m[i, nc + ncb + np.unique(np.searchsorted(size_bins, side, side="right") - 1)] = 1
    names = (
        [f"class:{n}" for n in class_names]
        + [f"count:{n}" for n in _bin_names(count_bins)]
        + [f"size:{n}" for n in _bin_names(size_bins, "px")]
    )
    return PhotoLabels(m, names)


def stratified_folds(labels: PhotoLabels, k: int, seed: int = 0) -> np.ndarray:
    """Assign each photo to one of k folds by MultilabelStratifiedKFold.

    Returns:
        (N,) int64 fold index of each photo (the fold in which it is validation).

    Raises:
        ValueError: When there are fewer photos than folds.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    n = len(labels.matrix)
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ValueError(f"folds: expected an integer of at least 2, found {k!r}")
    if n < k:
        raise ValueError(f"folds: expected at least {k} photos for {k} folds, found {n}")
    fold = np.full(n, -1, np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=int(k), shuffle=True, random_state=int(seed))
    for f, (_, val) in enumerate(splitter.split(np.zeros((n, 1)), labels.matrix)):
        fold[val] = f
    return fold


def stratified_holdout(labels: PhotoLabels, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Pick validation photos by MultilabelStratifiedShuffleSplit.

    Returns:
        (N,) bool, True for a validation photo. All False when val_fraction is 0.
    """
    n = len(labels.matrix)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in [0, 1), found {val_fraction!r}")
    val = np.zeros(n, bool)
    if val_fraction == 0 or n < 2:
        return val
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n_val = max(1, int(round(val_fraction * n)))
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=int(seed))
    _, idx = next(splitter.split(np.zeros((n, 1)), labels.matrix))
    val[idx] = True
    return val


def fold_table(
    labels: PhotoLabels,
    fold: np.ndarray,
    box_counts: np.ndarray | None = None,
    tile_counts: np.ndarray | None = None,
) -> list[dict]:
    """One row per fold: photos, boxes, tiles and how many photos carry each label.

    Args:
        labels: The photos' labels.
        fold: (N,) fold index of each photo.
        box_counts: (N,) boxes per photo, optional.
        tile_counts: (N,) tiles per photo, optional.
    """
    rows = []
    for f in range(int(fold.max()) + 1 if len(fold) else 0):
        sel = fold == f
        row: dict = {"fold": f, "photos": int(sel.sum())}
        if box_counts is not None:
            row["boxes"] = int(np.asarray(box_counts)[sel].sum())
        if tile_counts is not None:
            row["tiles"] = int(np.asarray(tile_counts)[sel].sum())
        for j, name in enumerate(labels.names):
            row[name] = int(labels.matrix[sel, j].sum())
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Rows of dicts with the same keys as an aligned text table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0].keys())
    widths = [max(len(str(k)), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(str(k).rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(str(r[k]).rjust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)
