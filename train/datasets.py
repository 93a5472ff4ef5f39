"""From annotated full-size photos to an Ultralytics tile dataset: splits or folds, negatives, a manifest.

``build_tile_dataset`` is what ``edgetile dataset tiles`` runs:

1. read VOC, YOLO or COCO annotations (bad ones are reported and skipped, never repaired);
2. split photos, not tiles: a multilabel-stratified hold-out, or K stratified folds;
3. cut every photo into the runtime's windows, keeping clipped boxes that stay visible enough;
4. keep every window with boxes and N empty ones, random or ranked by a first model (hard negatives);
5. write images/, labels/, data.yaml (one per fold), manifest.csv, folds.csv and problems.txt.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetile.runtime.evaluation.annotations import AnnotatedPhoto, Dataset, load_dataset

from .folds import fold_table, format_table, photo_labels, stratified_folds, stratified_holdout
from .from_review import RejectedBoxScorer, read_hard_negatives
from .tiles import Photo, cut_tiles, write_data_yaml, write_manifest


@dataclass(frozen=True)
class TileOptions:
    """How photos become tiles.

    Attributes:
        tile: Window side in photo pixels (the runtime's --tile).
        overlap: Fraction shared by neighbouring windows (the runtime's --overlap).
        min_visible: Keep a box clipped by a window only when this fraction of it stays visible.
        negatives: Empty windows to keep over the whole dataset; None: negative_ratio of the tiles
            with boxes.
        negative_ratio: Empty windows per tile with boxes when negatives is None.
        seed: Seeds the split and the random negatives.
        jpeg_quality: Quality of the tile JPEGs.
    """

    tile: int = 1024
    overlap: float = 0.2
    min_visible: float = 0.5
    negatives: int | None = None
    negative_ratio: float = 0.25
    seed: int = 0
    jpeg_quality: int = 95


@dataclass
class TileDatasetReport:
    """What build_tile_dataset wrote.

    Attributes:
        data_yaml: The dataset's data.yaml (fold 0 when folds were made).
        fold_yamls: One data.yaml per fold (empty without folds).
        tiles: Tiles written.
        positives: Tiles with boxes.
        negatives: Empty tiles.
        photos: Photos tiled.
        problems: One line per bad annotation or unreadable photo (also in problems.txt).
        table: Per split or fold: photos, boxes, tiles and label counts.
    """

    data_yaml: Path
    fold_yamls: list[Path] = field(default_factory=list)
    tiles: int = 0
    positives: int = 0
    negatives: int = 0
    photos: int = 0
    problems: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.tiles} tile(s) from {self.photos} photo(s): {self.positives} with boxes, {self.negatives} empty; "
            f"{len(self.problems)} problem(s)\n{format_table(self.table)}\ndata: {self.data_yaml}"
            + (
                f" (+ {len(self.fold_yamls)} fold files in {self.fold_yamls[0].parent})"
                if self.fold_yamls
                else ""
            )
        )


def to_photos(photos: Sequence[AnnotatedPhoto], split: str | Sequence[str] = "train") -> list[Photo]:
    """Tiler photos from annotated photos; ids are file stems, made unique with the parent folder."""
    stems: dict[str, int] = {}
    for p in photos:
        stems[p.photo_id] = stems.get(p.photo_id, 0) + 1
    splits = [split] * len(photos) if isinstance(split, str) else list(split)
    out = []
    for p, s in zip(photos, splits):
        pid = p.photo_id if stems[p.photo_id] == 1 else f"{p.path.parent.name}_{p.photo_id}"
        out.append(Photo(pid, p.load, p.width, p.height, p.boxes, p.class_ids, s, str(p.path)))
    return out


class HardNegativeScorer:
    """Scores empty windows by a first model: p = 1 - prod(1 - s_i) over its detections in the window.

    An ONNX model or TensorRT engine runs through the runtime's own tiled path on the whole photo (one
    pass covers every window; a detection belongs to the windows holding its centre); an Ultralytics
    .pt runs on each window's crop. Use as a context manager.

    Args:
        model: .onnx, .engine or .pt.
        tile: Window side (the same as the dataset's).
        overlap: Window overlap.
        conf: Detections below this score are ignored.
        imgsz: Model input for a .pt (default: the size it was trained at).
    """

    def __init__(
        self, model: str | Path, tile: int, overlap: float, conf: float = 0.1, imgsz: int | None = None
    ) -> None:
        self.model_path = Path(model)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"--hard-negatives: model file not found: {model}")
        if not 0.0 < conf < 1.0:
            raise ValueError(f"conf: expected a score in (0, 1), found {conf!r}")
        self.tile, self.overlap, self.conf, self.imgsz = tile, overlap, conf, imgsz
        self._detector = None
        self._yolo = None
        if self.model_path.suffix == ".pt":
            from ultralytics import YOLO

            self._yolo = YOLO(str(self.model_path))
        else:
            from edgetile.runtime.detector import DetectConfig, Detector

            self._detector = Detector(
                str(self.model_path), config=DetectConfig(tile=tile, overlap=overlap, conf=conf)
            )

    def __call__(self, photo: Photo, windows: np.ndarray) -> np.ndarray:
        image = photo.load()
        w = np.asarray(windows, np.float64).reshape(-1, 4)
        if self._detector is not None:
            dets = self._detector.detect(image)
            cx = (dets.xyxy[:, 0] + dets.xyxy[:, 2]) / 2
            cy = (dets.xyxy[:, 1] + dets.xyxy[:, 3]) / 2
            inside = (
                (cx[None] >= w[:, :1])
                & (cx[None] < w[:, 2:3])
                & (cy[None] >= w[:, 1:2])
                & (cy[None] < w[:, 3:4])
            )
            miss = np.where(inside, 1.0 - dets.scores[None].astype(np.float64), 1.0)
            return 1.0 - miss.prod(axis=1)
        from .tiles import crop_tile

        crops = [crop_tile(image, win.astype(int), self.tile) for win in w]
        scores = []
        # The size it was trained at, not Ultralytics' predict default of 640.
        imgsz = self.imgsz or (getattr(self._yolo, "ckpt", None) or {}).get("train_args", {}).get("imgsz")
        kw = {"imgsz": imgsz} if imgsz else {}
        for start in range(0, len(crops), 16):
            for r in self._yolo.predict(crops[start : start + 16], conf=self.conf, verbose=False, **kw):
                s = r.boxes.conf.cpu().numpy().astype(np.float64) if r.boxes is not None else np.zeros(0)
                scores.append(1.0 - np.prod(1.0 - s))
        return np.asarray(scores)

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()

    def __enter__(self) -> HardNegativeScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_tile_dataset(
    src: str | Path | Dataset,
    out: str | Path,
    options: TileOptions | None = None,
    format: str = "auto",
    class_names: Sequence[str] | None = None,
    folds: int = 0,
    val_fraction: float = 0.2,
    hard_negatives: str | Path | None = None,
    hard_conf: float = 0.1,
    progress: bool = False,
) -> TileDatasetReport:
    """Cut annotated photos into an Ultralytics tile dataset with a stratified split or K folds.

    Args:
        src: Annotated photos (a path for load_dataset, or a Dataset already read).
        out: Output folder.
        options: Tiling and negatives.
        format: Annotation format of src ("auto", "voc", "yolo", "coco").
        class_names: The classes (see load_dataset).
        folds: K >= 2 makes K multilabel-stratified folds over photos; 0 makes one stratified hold-out.
        val_fraction: Without folds, the fraction of photos held out for validation (0: none).
        hard_negatives: A first model ranking the empty windows (see HardNegativeScorer).
        hard_conf: Detections of that model below this score are ignored.
        progress: Progress bars on stderr.

    A ``hard_negatives.json`` beside the annotations (written by ``edgetile dataset from-review``:
    boxes an operator rejected) ranks the empty windows around those boxes first; with a model too,
    the two scores add.

    Returns:
        The report; problems are also written to out/problems.txt.
    """
    opt = options or TileOptions()
    ds = src if isinstance(src, Dataset) else load_dataset(src, format, class_names)
    if not ds.photos:
        raise ValueError(
            f"src: expected annotated photos, found none usable ({len(ds.problems)} problem(s)"
            + (f"; first: {ds.problems[0]}" if ds.problems else "")
            + ")"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = photo_labels([p.boxes for p in ds.photos], [p.class_ids for p in ds.photos], ds.class_names)
    if folds:
        fold = stratified_folds(labels, folds, opt.seed)
        splits: list[str] = ["all"] * len(ds.photos)
    else:
        val = stratified_holdout(labels, val_fraction, opt.seed)
        fold = val.astype(np.int64)  # 0 train, 1 val: the table's rows
        splits = ["val" if v else "train" for v in val]
    photos = to_photos(ds.photos, splits)
    problems = list(ds.problems)
    scorer = HardNegativeScorer(hard_negatives, opt.tile, opt.overlap, hard_conf) if hard_negatives else None
    rejected = None
    if ds.root is not None:  # a Dataset made in memory has no folder to hold hard_negatives.json
        root = Path(ds.root)
        rejected = read_hard_negatives(root if root.is_dir() else root.parent)
    rank = scorer
    if rejected is not None:
        by_boxes = RejectedBoxScorer(rejected, opt.seed)
        rank = (
            by_boxes
            if scorer is None
            else (lambda photo, windows: scorer(photo, windows) + by_boxes(photo, windows))
        )
    try:
        rows = cut_tiles(
            photos,
            out,
            opt.tile,
            opt.overlap,
            opt.min_visible,
            opt.negatives or 0,
            rank,
            opt.seed,
            opt.jpeg_quality,
            progress,
            problems,
            negative_ratio=opt.negative_ratio if opt.negatives is None else None,
        )
    finally:
        if scorer is not None:
            scorer.close()
    fold_of = {p.photo_id: int(f) for p, f in zip(photos, fold)}
    for r in rows:
        r["fold"] = fold_of[r["photo"]] if folds else ""
    write_manifest(rows, out / "manifest.csv")
    tiles_per_photo = np.array([sum(1 for r in rows if r["photo"] == p.photo_id) for p in photos])
    boxes_per_photo = np.array([len(p.boxes) for p in photos])
    table = fold_table(labels, fold, boxes_per_photo, tiles_per_photo)
    report = TileDatasetReport(
        out / "data.yaml",
        tiles=len(rows),
        positives=sum(1 for r in rows if r["kind"] == "positive"),
        photos=len(photos) - (len(problems) - len(ds.problems)),
        problems=problems,
    )
    report.negatives = report.tiles - report.positives
    if folds:
        folder = out / "folds"
        folder.mkdir(exist_ok=True)
        for f in range(folds):
            train = [r for r in rows if r["fold"] != f]
            val_rows = [r for r in rows if r["fold"] == f]
            for name, part in (("train", train), ("val", val_rows)):
                (folder / f"fold{f}_{name}.txt").write_text(
                    "".join(f"./../images/all/{r['tile']}.jpg\n" for r in part)
                )
            report.fold_yamls.append(
                write_data_yaml(
                    folder / f"fold{f}.yaml",
                    f"fold{f}_train.txt",
                    f"fold{f}_val.txt",
                    ds.class_names,
                    comment=f"fold {f} of {folds}: validation = the photos of fold {f}, training = all others",
                )
            )
        for row in table:
            row["split"] = f"fold{row['fold']}"
        # Ultralytics resolves './' in a list relative to the list's own folder, so the same lists
        # serve both this data.yaml and folds/fold0.yaml.
        write_data_yaml(
            out / "data.yaml",
            "folds/fold0_train.txt",
            "folds/fold0_val.txt",
            ds.class_names,
            comment=f"fold 0 of {folds}; train --fold K picks folds/foldK.yaml",
        )
    else:
        for row in table:
            row["split"] = "val" if row["fold"] == 1 else "train"
        has_val = any(r["split"] == "val" for r in rows)
        write_data_yaml(
            out / "data.yaml",
            "images/train",
            "images/val" if has_val else "images/train",
            ds.class_names,
            comment="" if has_val else "no photos held out: validation runs on the training tiles",
        )
    report.table = [{"split": r.pop("split"), **{k: v for k, v in r.items() if k != "fold"}} for r in table]
    _write_csv(out / ("folds.csv" if folds else "splits.csv"), report.table)
    (out / "problems.txt").write_text("".join(line + "\n" for line in problems))
    return report


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    import csv

    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def print_report(report: TileDatasetReport, max_problems: int = 20) -> None:
    """Problems (first few), then the summary and table, on stderr."""
    for line in report.problems[:max_problems]:
        print(f"problem: {line}", file=sys.stderr)
    if len(report.problems) > max_problems:
        print(f"... {len(report.problems) - max_problems} more in problems.txt", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
