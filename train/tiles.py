"""Cut annotated photos into training tiles exactly as the runtime tiles them at inference.

A tile keeps a box clipped at the window edge only when enough of it is visible (``min_visible``), so
the model is not taught to call a sliver of a person a person. Every window with boxes is kept, plus
a chosen number of empty windows (negatives), at random or ranked by a first model's confidence
(hard negatives). data.yaml paths are relative to its folder, so a dataset can be moved or copied.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.images import ImageReadError
from edgetile.runtime.preprocess import PAD_VALUE  # Ultralytics' letterbox grey, as the runtime pads
from edgetile.runtime.tiling import plan_tiles, validate_tiling


@dataclass
class Photo:
    """One annotated full-size photo.

    Attributes:
        photo_id: Stable name of the photo (its file stem), written to the manifest.
        load: Returns the (H, W, 3) uint8 BGR image when called.
        width: Image width in pixels.
        height: Image height in pixels.
        boxes: (N, 4) float boxes x1, y1, x2, y2 in pixels.
        class_ids: (N,) int class indices.
        split: "train" or "val" (any folder name: "all" when folds decide later).
        source: Where the photo came from (its file), written to the manifest.
    """

    photo_id: str
    load: Callable[[], np.ndarray]
    width: int
    height: int
    boxes: np.ndarray
    class_ids: np.ndarray
    split: str = "train"
    source: str = ""


def window_boxes(
    boxes: np.ndarray, class_ids: np.ndarray, window: Sequence[int], min_visible: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of one window, clipped to it and in its coordinates.

    Args:
        boxes: (N, 4) boxes in photo pixels.
        class_ids: (N,) class indices.
        window: x0, y0, x1, y1 of the window.
        min_visible: Keep a clipped box only when at least this fraction of its area is inside.

    Returns:
        ((M, 4) float32 boxes relative to the window's top-left corner, (M,) int64 class ids).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in window)
    cb = np.stack(
        [
            np.clip(b[:, 0], x0, x1),
            np.clip(b[:, 1], y0, y1),
            np.clip(b[:, 2], x0, x1),
            np.clip(b[:, 3], y0, y1),
        ],
        axis=1,
    )
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    inside = np.maximum(cb[:, 2] - cb[:, 0], 0) * np.maximum(cb[:, 3] - cb[:, 1], 0)
    keep = (inside > 0) & (inside >= min_visible * np.maximum(area, 1e-9))
    out = cb[keep] - np.array([x0, y0, x0, y0])
    return out.astype(np.float32), np.asarray(class_ids, np.int64).reshape(-1)[keep]


def crop_tile(image: np.ndarray, window: Sequence[int], tile: int) -> np.ndarray:
    """The window's pixels on a tile x tile canvas, padded at the right and bottom when smaller."""
    x0, y0, x1, y1 = (int(v) for v in window)
    crop = image[y0:y1, x0:x1]
    if crop.shape[0] == tile and crop.shape[1] == tile:
        return crop
    out = np.full((tile, tile, 3), PAD_VALUE, np.uint8)
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out


def touches_any_box(boxes: np.ndarray, window: Sequence[int]) -> bool:
    """True when any box overlaps the window at all (even a sliver): such a window is no safe negative."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in window)
    return bool(np.any((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0)))


def cut_tiles(  # noqa: C901 - one pass over photos and windows, negatives chosen over the whole dataset afterwards
    photos: Sequence[Photo],
    out_dir: str | Path,
    tile: int = 1024,
    overlap: float = 0.2,
    min_visible: float = 0.5,
    negatives: int = 0,
    negative_scores: Callable[[Photo, np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
    jpeg_quality: int = 95,
    progress: bool = False,
    problems: list[str] | None = None,
    negative_ratio: float | None = None,
) -> list[dict]:
    """Write the tiles of every photo under out_dir/images/<split>/ and labels/<split>/.

    Every window with at least one kept box is written; of the windows that no box touches at all,
    ``negatives`` are written in all, the highest-scoring first (random scores unless
    negative_scores ranks them). A window holding only a sliver of a person (less than min_visible)
    is neither: it would teach that part of a person is background.

    Args:
        photos: Annotated photos.
        out_dir: Dataset folder.
        tile: Window side in pixels.
        overlap: Fraction shared by neighbouring windows (the runtime's layout, plan_tiles).
        min_visible: Fraction of a clipped box that must stay visible for it to be kept.
        negatives: How many empty windows to keep over the whole dataset.
        negative_scores: Ranks empty windows for hard-negative mining: given a photo and its (K, 4)
            empty windows, returns (K,) scores, highest kept first. Random choice when None.
        seed: Seeds the random choice of negatives.
        jpeg_quality: Quality of the tile JPEGs.
        progress: Show a progress bar on stderr (only on a terminal).
        problems: When given, a photo that cannot be read is reported here (one line) and skipped;
            otherwise the error is raised.
        negative_ratio: When given, it replaces negatives: keep round(ratio * tiles with boxes) empty
            windows.

    Returns:
        One manifest row per tile written: tile, split, photo, source, window, x0, y0, x1, y1, boxes,
        kind ("positive", "negative" or "hard-negative") and score (the negative's rank score).
    """
    import sys

    validate_tiling(tile, overlap)
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible: expected a fraction in (0, 1], found {min_visible}")
    if negatives < 0:
        raise ValueError(f"negatives: expected a non-negative count, found {negatives}")
    if negative_ratio is not None and not negative_ratio >= 0:
        raise ValueError(f"negative_ratio: expected a non-negative ratio, found {negative_ratio}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    photos = list(photos)
    rows: list[dict] = []
    unreadable: set[int] = set()
    # Empty windows are gathered first and the chosen ones written afterwards, so the choice is over
    # the whole dataset, not greedy per photo.
    empty: list[tuple[float, int, int]] = []  # (score, photo index, window index)
    plans = []
    from tqdm import tqdm

    bar = tqdm(
        photos, desc="tiles", unit="photo", file=sys.stderr, disable=not (progress and sys.stderr.isatty())
    )
    for pi, photo in enumerate(bar):
        windows = plan_tiles(photo.width, photo.height, tile, overlap)
        plans.append(windows)
        image = None
        empty_here = []
        try:
            for wi, win in enumerate(windows):
                tb, tc = window_boxes(photo.boxes, photo.class_ids, win, min_visible)
                if len(tb) == 0:
                    if not touches_any_box(photo.boxes, win):
                        empty_here.append(wi)
                    continue
                if image is None:
                    image = _load(photo)
                rows.append(
                    _write_tile(out, photo, wi, win, crop_tile(image, win, tile), tb, tc, tile, jpeg_quality)
                )
            if empty_here and (negatives or negative_ratio):
                if negative_scores is not None:
                    # The pixels already read are lent to the scorer rather than read again.
                    lent = photo if image is None else dataclasses.replace(photo, load=lambda im=image: im)
                    scores = np.asarray(negative_scores(lent, windows[empty_here]), np.float64).reshape(-1)
                    if scores.shape != (len(empty_here),):
                        raise ValueError(
                            f"negative_scores: expected {len(empty_here)} scores, found {scores.shape}"
                        )
                else:
                    scores = rng.random(len(empty_here))
                empty.extend((float(sc), pi, wi) for sc, wi in zip(scores, empty_here))
        except ImageReadError as exc:
            if problems is None:
                raise
            problems.append(f"{photo.source or photo.photo_id}: skipped: {exc}")
            unreadable.add(pi)
            rows = [r for r in rows if r["photo"] != photo.photo_id]
    if negative_ratio is not None:
        negatives = int(round(negative_ratio * len(rows)))
    if negatives and empty:
        order = sorted(range(len(empty)), key=lambda k: -empty[k][0])
        chosen: dict[int, list[tuple[int, float]]] = {}
        for k in order:
            if empty[k][1] in unreadable:
                continue
            chosen.setdefault(empty[k][1], []).append((empty[k][2], empty[k][0]))
            if sum(len(v) for v in chosen.values()) >= negatives:
                break
        kind = "hard-negative" if negative_scores is not None else "negative"
        for pi in sorted(chosen):
            photo = photos[pi]
            try:
                image = _load(photo)
            except ImageReadError as exc:
                if problems is None:
                    raise
                problems.append(f"{photo.source or photo.photo_id}: skipped: {exc}")
                continue
            no_boxes = np.zeros((0, 4), np.float32)
            for wi, score in sorted(chosen[pi]):
                win = plans[pi][wi]
                row = _write_tile(
                    out, photo, wi, win, crop_tile(image, win, tile), no_boxes, [], tile, jpeg_quality
                )
                row.update(kind=kind, score=round(score, 6))
                rows.append(row)
    return rows


def _load(photo: Photo) -> np.ndarray:
    image = photo.load()
    if image.shape[:2] != (photo.height, photo.width):
        raise ImageReadError(
            f"expected a {photo.width}x{photo.height} image as annotated, found {image.shape[1]}x{image.shape[0]}"
        )
    return image


MANIFEST_FIELDS = [
    "tile",
    "split",
    "fold",
    "photo",
    "source",
    "window",
    "x0",
    "y0",
    "x1",
    "y1",
    "boxes",
    "kind",
    "score",
]


def write_manifest(rows: Sequence[dict], path: str | Path) -> Path:
    """Write the manifest CSV: which photo and window each tile came from."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return Path(path)


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a manifest CSV written by write_manifest."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_data_yaml(path: str | Path, train: str, val: str, names: Sequence[str], comment: str = "") -> Path:
    """An Ultralytics data.yaml with paths relative to its own folder, so the dataset can be moved."""
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines += [f"train: {train}", f"val: {val}", "names:"]
    lines += [f"  {i}: {_yaml_str(n)}" for i, n in enumerate(names)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def _yaml_str(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ .-]*", s) and s.strip() == s else json.dumps(s)


def write_tile_dataset(
    photos: Iterable[Photo],
    out_dir: str | Path,
    names: Sequence[str],
    tile: int = 1024,
    overlap: float = 0.2,
    min_visible: float = 0.5,
    negatives: int = 0,
    negative_scores: Callable[[Photo, np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
    jpeg_quality: int = 95,
    progress: bool = False,
    problems: list[str] | None = None,
) -> Path:
    """Write an Ultralytics dataset of tiles and a manifest of where each tile came from.

    Args:
        photos: Annotated photos; each photo's split ("train", "val") decides where its tiles go.
        out_dir: Folder for images/<split>, labels/<split>, data.yaml and manifest.csv.
        names: Class names, index = class id.
        tile: Window side in pixels.
        overlap: Fraction shared by neighbouring windows.
        min_visible: Fraction of a clipped box that must stay visible for it to be kept.
        negatives: How many empty windows to keep over the whole dataset.
        negative_scores: Ranks empty windows for hard-negative mining (see cut_tiles).
        seed: Seeds the random choice of negatives.
        jpeg_quality: Quality of the tile JPEGs.
        progress: Show a progress bar on stderr.
        problems: Collects one line per unreadable photo instead of raising (see cut_tiles).

    Returns:
        Path of the data.yaml written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = cut_tiles(
        list(photos),
        out,
        tile,
        overlap,
        min_visible,
        negatives,
        negative_scores,
        seed,
        jpeg_quality,
        progress,
        problems,
    )
    write_manifest(rows, out / "manifest.csv")
    splits = {r["split"] for r in rows}
    train = "images/train" if "train" in splits or not splits else f"images/{sorted(splits)[0]}"
    val = "images/val" if "val" in splits else train
    return write_data_yaml(out / "data.yaml", train, val, names)


def _write_tile(
    out: Path,
    photo: Photo,
    wi: int,
    win: np.ndarray,
    pixels: np.ndarray,
    boxes: np.ndarray,
    class_ids: Sequence[int],
    tile: int,
    jpeg_quality: int,
) -> dict:
    name = f"{photo.photo_id}_t{wi:03d}"
    img_dir, lbl_dir = out / "images" / photo.split, out / "labels" / photo.split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(img_dir / f"{name}.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
        raise OSError(f"could not write {img_dir / (name + '.jpg')}")
    lines = [
        f"{int(c)} {(b[0] + b[2]) / 2 / tile:.6f} {(b[1] + b[3]) / 2 / tile:.6f} "
        f"{(b[2] - b[0]) / tile:.6f} {(b[3] - b[1]) / tile:.6f}"
        for b, c in zip(boxes, class_ids)
    ]
    (lbl_dir / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    x0, y0, x1, y1 = (int(v) for v in win)
    return {
        "tile": name,
        "split": photo.split,
        "fold": "",
        "photo": photo.photo_id,
        "source": photo.source,
        "window": wi,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "boxes": len(boxes),
        "kind": "positive",
        "score": "",
    }
