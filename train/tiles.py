"""Cut annotated photos into training tiles exactly as the runtime tiles them at inference.

A tile keeps a box clipped at the window edge only when enough of it is visible (``min_visible``), so
the model is not taught to call a sliver of a person a person. Every window with boxes is kept, plus
a chosen number of empty windows (negatives).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.tiling import plan_tiles

PAD_VALUE = 114  # Ultralytics' letterbox grey, also what the runtime pads with


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
        split: "train" or "val".
    """

    photo_id: str
    load: Callable[[], np.ndarray]
    width: int
    height: int
    boxes: np.ndarray
    class_ids: np.ndarray
    split: str = "train"


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
        [np.clip(b[:, 0], x0, x1), np.clip(b[:, 1], y0, y1), np.clip(b[:, 2], x0, x1), np.clip(b[:, 3], y0, y1)],
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
) -> Path:
    """Write an Ultralytics dataset of tiles and a manifest of where each tile came from.

    Args:
        photos: Annotated photos.
        out_dir: Folder for images/{train,val}, labels/{train,val}, data.yaml and manifest.csv.
        names: Class names, index = class id.
        tile: Window side in pixels.
        overlap: Fraction shared by neighbouring windows.
        min_visible: Fraction of a clipped box that must stay visible for it to be kept.
        negatives: How many empty windows to keep in all (per split, in proportion to its photos).
        negative_scores: Ranks empty windows for hard-negative mining: given a photo and its (K, 4)
            empty windows, returns (K,) scores, highest kept first. Random choice when None.
        seed: Seeds the random choice of negatives.
        jpeg_quality: Quality of the tile JPEGs.
        progress: Show a progress bar on stderr.

    Returns:
        Path of the data.yaml written.
    """
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible: expected a fraction in (0, 1], found {min_visible}")
    if negatives < 0:
        raise ValueError(f"negatives: expected a non-negative count, found {negatives}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    photos = list(photos)
    rows: list[dict] = []
    # Empty windows are gathered first and the chosen ones written afterwards, so the choice is over
    # the whole dataset, not greedy per photo.
    empty: list[tuple[float, int, np.ndarray]] = []  # (score, photo index, window)
    it: Iterable = enumerate(photos)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(photos), desc="tiles", unit="photo")
    for pi, photo in it:
        windows = plan_tiles(photo.width, photo.height, tile, overlap)
        image = None
        empty_here = []
        for wi, win in enumerate(windows):
            tb, tc = window_boxes(photo.boxes, photo.class_ids, win, min_visible)
            if len(tb) == 0:
                empty_here.append(win)
                continue
            if image is None:
                image = photo.load()
            rows.append(_write_tile(out, photo, wi, win, crop_tile(image, win, tile), tb, tc, tile, jpeg_quality))
        if empty_here and negatives:
            ew = np.stack(empty_here)
            scores = negative_scores(photo, ew) if negative_scores is not None else rng.random(len(ew))
            empty.extend((float(s), pi, w) for s, w in zip(scores, ew))
    if negatives and empty:
        order = sorted(range(len(empty)), key=lambda k: -empty[k][0])[:negatives]
        chosen: dict[int, list[np.ndarray]] = {}
        for k in order:
            chosen.setdefault(empty[k][1], []).append(empty[k][2])
        for pi, wins in chosen.items():
            photo = photos[pi]
            image = photo.load()
            all_w = plan_tiles(photo.width, photo.height, tile, overlap)
            for win in wins:
                wi = int(np.nonzero((all_w == win).all(axis=1))[0][0])
                no_boxes = np.zeros((0, 4), np.float32)
                rows.append(
                    _write_tile(out, photo, wi, win, crop_tile(image, win, tile), no_boxes, [], tile, jpeg_quality)
                )
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["tile", "split", "photo", "window", "x0", "y0", "x1", "y1", "boxes"])
        w.writeheader()
        w.writerows(rows)
    splits = {r["split"] for r in rows}
    yaml_lines = [f"path: {out.resolve()}", "train: images/train"]
    yaml_lines.append("val: images/val" if "val" in splits else "val: images/train")
    yaml_lines.append("names:")
    yaml_lines += [f"  {i}: {n}" for i, n in enumerate(names)]
    (out / "data.yaml").write_text("\n".join(yaml_lines) + "\n")
    return out / "data.yaml"


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
        "tile": name, "split": photo.split, "photo": photo.photo_id, "window": wi,
        "x0": x0, "y0": y0, "x1": x1, "y1": y1, "boxes": len(boxes),
    }
