"""Accuracy on full-size photos through the runtime's tiled path: COCO mAP and the Lacmus metric.

Two families of numbers are reported, because users compare against both:

* COCO mAP@0.5, mAP@0.75 and mAP@0.5:0.95 by pycocotools itself, with ``maxDets`` raised to
  (1, 100, 1000 or more) so that the hundreds of boxes a tiled photo can yield all count (COCO's
  default of 100 silently drops the rest).
* The Lacmus competition metric: Pascal VOC all-point AP at IoU 0.5 and F1 over the detections
  scoring at least 0.05. Its reference script matches each photo's detections in submission order
  (not by score): a detection is a true positive when its best-IoU ground-truth box of the same class
  reaches IoU 0.5 and is not matched yet, otherwise a false positive; every box on a photo without
  people is a false positive. Boxes are continuous pixel coordinates (no "+1" pixel convention).

Recall, precision and F1 at the operating threshold use the same matching. Per-photo detections are
kept in the result, so another operating threshold is scored again without running the model.

NumPy only at import; pycocotools and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..boxes import pairwise_overlap
from ..images import ImageReadError
from ..results import Detections
from .annotations import AnnotatedPhoto, Dataset

LACMUS_SCORE_THR = 0.05
LACMUS_IOU = 0.5
COCO_MAX_DETS = (1, 100, 1000)


class _DetectorLike(Protocol):
    names: Mapping[int, str]

    def detect(self, image: np.ndarray, timings: dict[str, float] | None = None) -> Detections: ...


@dataclass
class PhotoDetections:
    """What the model found on one photo, kept so that other thresholds can be scored without it.

    Attributes:
        photo: The annotated photo.
        detections: Every detection the detector returned, in its order (descending score), with
            class ids already mapped to the dataset's classes.
    """

    photo: AnnotatedPhoto
    detections: Detections


@dataclass
class EvalResult:
    """Accuracy of a detector on a set of full-size photos.

    Attributes:
        map50: COCO AP at IoU 0.5 (pycocotools, maxDets raised), averaged over classes.
        map75: COCO AP at IoU 0.75.
        map50_95: COCO AP averaged over IoU 0.5:0.05:0.95.
        lacmus_ap50: Pascal VOC all-point AP at IoU 0.5 over detections scoring >= 0.05, matched in
            submission order (the Lacmus competition rule), averaged over classes with ground truth.
        lacmus_f1: F1 at IoU 0.5 over the same detections.
        recall: True positives / ground-truth boxes at the operating threshold (IoU 0.5).
        precision: True positives / detections at the operating threshold.
        f1: Harmonic mean of recall and precision at the operating threshold.
        score_thr: The operating threshold.
        tp: True positives at the operating threshold.
        fp: False positives at the operating threshold.
        gt_boxes: Ground-truth boxes over all photos.
        per_photo: Detections of each photo, for re-scoring and reports.
        class_names: The dataset's classes.
        coco_stats: pycocotools' 12 summary numbers (AP and AR by IoU, area and maxDets).
        coco_max_dets: The maxDets used.
        curve: (K, 3) float64 rows of score, recall, precision of the pooled detections at IoU 0.5,
            by descending score: the PR curve.
        problems: One line per photo that could not be evaluated (unreadable image); such photos
            are not in the numbers.
        notes: How classes were matched and other facts a reader needs.
    """

    map50: float
    map75: float
    map50_95: float
    lacmus_ap50: float
    lacmus_f1: float
    recall: float
    precision: float
    f1: float
    score_thr: float
    tp: int
    fp: int
    gt_boxes: int
    per_photo: list[PhotoDetections] = field(repr=False)
    class_names: list[str] = field(default_factory=list)
    coco_stats: list[float] = field(default_factory=list, repr=False)
    coco_max_dets: tuple[int, ...] = COCO_MAX_DETS
    curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rescore(self, score_thr: float) -> EvalResult:
        """The same detections scored at another operating threshold (no model run)."""
        return score_detections(
            self.per_photo, self.class_names, score_thr, problems=self.problems, notes=self.notes
        )

    def to_dict(self) -> dict:
        """JSON-ready numbers (no detections)."""
        keys = (
            "map50",
            "map75",
            "map50_95",
            "lacmus_ap50",
            "lacmus_f1",
            "recall",
            "precision",
            "f1",
            "score_thr",
            "tp",
            "fp",
            "gt_boxes",
        )
        out: dict = {k: _json_num(getattr(self, k)) for k in keys}
        out["photos"] = len(self.per_photo)
        out["detections"] = int(sum(len(p.detections) for p in self.per_photo))
        out["class_names"] = list(self.class_names)
        out["coco_max_dets"] = list(self.coco_max_dets)
        out["coco_stats"] = [_json_num(v) for v in self.coco_stats]
        out["problems"] = list(self.problems)
        out["notes"] = list(self.notes)
        return out

    def summary(self) -> str:
        """A few lines for a terminal."""
        return (
            f"photos {len(self.per_photo)}, ground-truth boxes {self.gt_boxes}\n"
            f"COCO   mAP@0.5 {self.map50:.4f}  mAP@0.75 {self.map75:.4f}  mAP@0.5:0.95 {self.map50_95:.4f}"
            f"  (maxDets {list(self.coco_max_dets)})\n"
            f"Lacmus AP@0.5 {self.lacmus_ap50:.4f}  F1 {self.lacmus_f1:.4f}  (score >= {LACMUS_SCORE_THR})\n"
            f"at score >= {self.score_thr:g}: recall {self.recall:.4f}  precision {self.precision:.4f}  "
            f"F1 {self.f1:.4f}  (TP {self.tp}, FP {self.fp}, FN {self.gt_boxes - self.tp})"
        )

    def write_pr_curve(self, path: str | Path, title: str | None = None) -> Path:
        """Draw the precision-recall curve (IoU 0.5) with the operating point marked, as a PNG."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
        try:
            if len(self.curve):
                ax.plot(self.curve[:, 1], self.curve[:, 2], lw=1.5, label="all detections, IoU 0.5")
                rec, prec = _envelope(self.curve[:, 1], self.curve[:, 2])
                ax.plot(rec, prec, lw=1, ls="--", label="interpolated (VOC all-point)")
            ax.plot(
                [self.recall],
                [self.precision],
                "o",
                ms=8,
                label=f"score >= {self.score_thr:g}: R {self.recall:.3f} P {self.precision:.3f}",
            )
            ax.set_xlim(0, 1.01)
            ax.set_ylim(0, 1.01)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.grid(alpha=0.3)
            ax.set_title(
                title
                or f"mAP@0.5 {self.map50:.3f}  mAP@0.75 {self.map75:.3f}  Lacmus AP {self.lacmus_ap50:.3f}"
            )
            ax.legend(loc="lower left", fontsize=8)
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out)
        finally:
            plt.close(fig)
        return out


def _json_num(v: float | int) -> float | int | None:
    if isinstance(v, (int, np.integer)):
        return int(v)
    return None if not math.isfinite(float(v)) else round(float(v), 6)


# ---------------------------------------------------------------------------------------------------
# Matching and VOC AP


def match_in_order(det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_thr: float = LACMUS_IOU) -> np.ndarray:
    """True positives of one photo and one class, matching detections in the order given.

    Each detection takes its best-IoU ground-truth box; it is a true positive when that IoU is at
    least iou_thr and the box is not taken yet, otherwise a false positive (the Lacmus and Pascal VOC
    rule: a duplicate does not fall back to its second-best box). On a photo without ground truth
    every detection is a false positive.

    Args:
        det_boxes: (N, 4) detections, in submission order.
        gt_boxes: (M, 4) ground truth.
        iou_thr: IoU a true positive needs.

    Returns:
        (N,) bool, True for a true positive.
    """
    n = len(det_boxes)
    tp = np.zeros(n, bool)
    if n == 0 or len(gt_boxes) == 0:
        return tp
    ious = pairwise_overlap(
        np.asarray(det_boxes, np.float64).reshape(-1, 4), np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    )
    taken = np.zeros(len(gt_boxes), bool)
    best = ious.argmax(axis=1)
    for i in range(n):
        j = best[i]
        if ious[i, j] >= iou_thr and not taken[j]:
            tp[i] = True
            taken[j] = True
    return tp


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Pascal VOC all-point AP (VOC2010 and later): area under the monotone precision envelope.

    Args:
        recall: (K,) recall after each detection, by descending score.
        precision: (K,) precision after each detection.
    """
    if len(recall) == 0:
        return 0.0
    mrec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, np.float64), [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _envelope(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mpre = np.maximum.accumulate(np.asarray(precision, np.float64)[::-1])[::-1]
    return np.asarray(recall), mpre


@dataclass
class _Pooled:
    """Per-class pooled matches: scores and true-positive flags of every detection, and GT counts."""

    scores: dict[int, list[np.ndarray]]
    tps: dict[int, list[np.ndarray]]
    gts: dict[int, int]


def _pool(per_photo: Sequence[PhotoDetections], min_score: float) -> _Pooled:
    pooled = _Pooled({}, {}, {})
    for pd in per_photo:
        gt, gc = pd.photo.boxes, pd.photo.class_ids
        d = pd.detections
        keep = d.scores >= min_score
        db, ds, dc = d.xyxy[keep], d.scores[keep], d.class_ids[keep]
        for c in np.unique(np.concatenate([gc, dc])).tolist():
            g = gt[gc == c]
            m = dc == c
            pooled.gts[c] = pooled.gts.get(c, 0) + len(g)
            pooled.scores.setdefault(c, []).append(ds[m])
            pooled.tps.setdefault(c, []).append(match_in_order(db[m], g))
    return pooled


def _class_curve(pooled: _Pooled, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, recall, precision) of one class after each detection, by descending score."""
    s = np.concatenate(pooled.scores.get(c, [np.zeros(0, np.float32)]))
    t = np.concatenate(pooled.tps.get(c, [np.zeros(0, bool)]))
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    ctp = np.cumsum(t)
    cfp = np.cumsum(~t)
    n_gt = pooled.gts.get(c, 0)
    recall = ctp / n_gt if n_gt else np.zeros(len(t))
    precision = ctp / np.maximum(ctp + cfp, 1)
    return s, recall, precision


def lacmus_metrics(
    per_photo: Sequence[PhotoDetections], min_score: float = LACMUS_SCORE_THR
) -> tuple[float, float]:
    """Lacmus AP@0.5 (VOC all-point, averaged over classes with ground truth) and F1, at min_score.

    Returns:
        (ap, f1); ap is NaN when no photo has ground truth.
    """
    pooled = _pool(per_photo, min_score)
    aps = []
    for c, n_gt in sorted(pooled.gts.items()):
        if n_gt:
            _, rec, prec = _class_curve(pooled, c)
            aps.append(voc_ap(rec, prec))
    tp, fp, n_gt = _counts(pooled)
    return (float(np.mean(aps)) if aps else float("nan")), _f1(tp, fp, n_gt)[2]


def operating_point(
    per_photo: Sequence[PhotoDetections], score_thr: float
) -> tuple[int, int, int, float, float, float]:
    """Counts and rates at one threshold, without the COCO evaluation (cheap enough for a sweep).

    Returns:
        (true positives, false positives, ground-truth boxes, recall, precision, F1) at IoU 0.5.
    """
    tp, fp, n_gt = _counts(_pool(per_photo, score_thr))
    return (tp, fp, n_gt, *_f1(tp, fp, n_gt))


def _counts(pooled: _Pooled) -> tuple[int, int, int]:
    tp = int(sum(int(np.sum(np.concatenate(v))) for v in pooled.tps.values() if v))
    dets = int(sum(sum(len(x) for x in v) for v in pooled.tps.values()))
    return tp, dets - tp, int(sum(pooled.gts.values()))


def _f1(tp: int, fp: int, n_gt: int) -> tuple[float, float, float]:
    recall = tp / n_gt if n_gt else float("nan")
    precision = tp / (tp + fp) if tp + fp else (1.0 if n_gt == 0 else 0.0)
    if not math.isfinite(recall) or recall + precision == 0:
        return recall, precision, 0.0 if math.isfinite(recall) else float("nan")
    return recall, precision, 2 * recall * precision / (recall + precision)


# ---------------------------------------------------------------------------------------------------
# COCO


def coco_map(
    per_photo: Sequence[PhotoDetections], class_names: Sequence[str], max_dets: Sequence[int] = COCO_MAX_DETS
) -> tuple[list[float], tuple[int, ...]]:
    """pycocotools' 12 summary numbers for the detections, maxDets raised so no box is dropped.

    Args:
        per_photo: Detections and ground truth of each photo.
        class_names: The classes (category id = index + 1).
        max_dets: The three maxDets; the last is raised to the most detections on any photo.

    Returns:
        (stats, the maxDets used). stats[0] is mAP@0.5:0.95, stats[1] mAP@0.5, stats[2] mAP@0.75,
        NaN where pycocotools reports -1 (no ground truth) and 0 when there are no detections.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    most = max((len(p.detections) for p in per_photo), default=0)
    md = (int(max_dets[0]), int(max_dets[1]), max(int(max_dets[2]), most))
    gt_doc = coco_ground_truth(per_photo, class_names)
    dets = coco_detections(per_photo)
    if not gt_doc["annotations"]:
        return [float("nan")] * 12, md
    if not dets:
        return [0.0] * 12, md
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        # the stubs' dataset type demands every COCO field (segmentation, supercategory...); bbox
        # evaluation reads only those coco_ground_truth writes
        gt.dataset = gt_doc  # type: ignore[assignment]
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = list(md)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float("nan") if v < 0 else float(v) for v in ev.stats], md


def coco_ground_truth(
    per_photo: Sequence[PhotoDetections | AnnotatedPhoto], class_names: Sequence[str]
) -> dict:
    """The ground truth as a COCO dataset dict: image id = position + 1, category id = class + 1."""
    images: list[dict] = []
    anns: list[dict] = []
    for i, p in enumerate(per_photo):
        photo = p.photo if isinstance(p, PhotoDetections) else p
        images.append(
            {"id": i + 1, "file_name": photo.path.name, "width": photo.width, "height": photo.height}
        )
        for b, c in zip(photo.boxes.astype(np.float64), photo.class_ids):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_detections(per_photo: Sequence[PhotoDetections]) -> list[dict]:
    """Detections as COCO results: image id = position + 1, category id = class + 1, bbox x, y, w, h."""
    out = []
    for i, p in enumerate(per_photo):
        d = p.detections
        for b, s, c in zip(d.xyxy.astype(np.float64), d.scores, d.class_ids):
            out.append(
                {
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "score": float(s),
                }
            )
    return out


# ---------------------------------------------------------------------------------------------------


def score_detections(
    per_photo: Sequence[PhotoDetections],
    class_names: Sequence[str],
    score_thr: float = LACMUS_SCORE_THR,
    problems: Iterable[str] = (),
    notes: Iterable[str] = (),
    max_dets: Sequence[int] = COCO_MAX_DETS,
) -> EvalResult:
    """Score detections that are already known (from a run, a CSV, another tool).

    Args:
        per_photo: Each photo with its detections (class ids in the dataset's numbering).
        class_names: The dataset's classes.
        score_thr: Operating threshold for recall, precision and F1.
        problems: Carried into the result.
        notes: Carried into the result.
        max_dets: COCO maxDets (the last one is raised to the most detections on a photo).
    """
    if not 0.0 <= float(score_thr) <= 1.0:
        raise ValueError(f"score_thr: expected a number in [0, 1], found {score_thr!r}")
    per_photo = list(per_photo)
    stats, md = coco_map(per_photo, class_names, max_dets)
    lap, lf1 = lacmus_metrics(per_photo, LACMUS_SCORE_THR)
    pooled = _pool(per_photo, score_thr)
    tp, fp, n_gt = _counts(pooled)
    recall, precision, f1 = _f1(tp, fp, n_gt)
    # The PR curve pools every class (micro), like the operating point.
    all_pooled = _pool(per_photo, 0.0)
    s = np.concatenate([np.concatenate(v) for v in all_pooled.scores.values()] or [np.zeros(0)])
    t = np.concatenate([np.concatenate(v) for v in all_pooled.tps.values()] or [np.zeros(0, bool)])
    order = np.argsort(-s, kind="stable")
    ctp = np.cumsum(t[order])
    total_gt = max(int(sum(all_pooled.gts.values())), 1)
    curve = (
        np.stack([s[order].astype(np.float64), ctp / total_gt, ctp / np.arange(1, len(order) + 1)], axis=1)
        if len(order)
        else np.zeros((0, 3))
    )
    return EvalResult(
        map50=stats[1],
        map75=stats[2],
        map50_95=stats[0],
        lacmus_ap50=lap,
        lacmus_f1=lf1,
        recall=recall,
        precision=precision,
        f1=f1,
        score_thr=float(score_thr),
        tp=tp,
        fp=fp,
        gt_boxes=n_gt,
        per_photo=per_photo,
        class_names=list(class_names),
        coco_stats=stats,
        coco_max_dets=md,
        curve=curve,
        problems=list(problems),
        notes=list(notes),
    )


def class_mapping(
    model_names: Mapping[int, str], class_names: Sequence[str]
) -> tuple[dict[int, int], list[str]]:
    """How the model's class ids map onto the dataset's.

    By name when every dataset class is among the model's names; else by index when both have the
    same number of classes (LADD calls its people "Pedestrian", a model may say "person"); the
    choice is returned as notes.

    Returns:
        (model id -> dataset id, notes). Model classes absent from the dataset are not in the map.

    Raises:
        ValueError: When neither rule applies.
    """
    by_name = {str(n): int(i) for i, n in model_names.items()}
    if all(n in by_name for n in class_names):
        mapping = {by_name[n]: k for k, n in enumerate(class_names)}
        extra = sorted(set(model_names) - set(mapping))
        notes = (
            [f"model classes not in the dataset are ignored: {[model_names[i] for i in extra]}"]
            if extra
            else []
        )
        return mapping, notes
    if len(model_names) == len(class_names):
        pairs = ", ".join(f"{model_names[i]!r}={class_names[i]!r}" for i in sorted(model_names))
        return {i: i for i in sorted(model_names)}, [f"classes matched by index (model=dataset): {pairs}"]
    raise ValueError(
        f"classes: expected the dataset's classes {list(class_names)} among the model's "
        f"{[model_names[i] for i in sorted(model_names)]}, or as many classes in both; found neither"
    )


def evaluate(
    detector: _DetectorLike,
    dataset: Dataset,
    score_thr: float = LACMUS_SCORE_THR,
    progress: bool = False,
) -> EvalResult:
    """Run the detector's tiled path on every full-size photo of the dataset and score it.

    The mAPs need the low-scoring detections too: build the detector with a confidence threshold
    at or below min(score_thr, 0.05), e.g. ``DetectConfig(conf=0.001)``.

    Args:
        detector: A runtime Detector (anything with .detect(image) -> Detections and .names).
        dataset: Annotated photos (edgetile.runtime.evaluation.annotations.load_dataset).
        score_thr: Operating threshold for recall, precision and F1.
        progress: Show a progress bar on stderr (only on a terminal).

    Returns:
        The EvalResult; photos that could not be read are listed in its problems and left out.

    Raises:
        ValueError: When the detector's own threshold hides detections the metrics need, or its
            classes cannot be matched with the dataset's.
    """
    cfg = getattr(detector, "config", None)
    need = min(float(score_thr), LACMUS_SCORE_THR)
    if cfg is not None and float(cfg.conf) > need:
        raise ValueError(
            f"detector conf: expected at most {need:g} (score_thr and the Lacmus 0.05 rule need the "
            f"detections below it), found {cfg.conf:g}; build the detector with DetectConfig(conf=0.001)"
        )
    mapping, notes = class_mapping(detector.names, dataset.class_names)
    problems: list[str] = []
    per_photo = [
        PhotoDetections(photo, map_classes(detector.detect(image), mapping))
        for photo, image in loaded_photos(dataset, problems, progress, desc="eval")
    ]
    return score_detections(per_photo, dataset.class_names, score_thr, problems=problems, notes=notes)


def loaded_photos(
    dataset: Dataset, problems: list[str], progress: bool = False, desc: str = "eval"
) -> Iterator[tuple[AnnotatedPhoto, np.ndarray]]:
    """Yield (photo, (H, W, 3) uint8 BGR image) for each readable photo of the dataset.

    A photo that cannot be read is not yielded: a one-line reason is appended to problems.
    """
    from tqdm import tqdm

    bar = tqdm(
        dataset.photos,
        desc=desc,
        unit="photo",
        file=sys.stderr,
        disable=not (progress and sys.stderr.isatty()),
    )
    for photo in bar:
        try:
            image = photo.load()
        except ImageReadError as exc:
            problems.append(f"{photo.path}: not evaluated: {exc}")
            continue
        yield photo, image


def map_classes(dets: Detections, mapping: Mapping[int, int]) -> Detections:
    """Detections with class ids renumbered by mapping (data kept); classes absent from it are dropped."""
    if not len(dets):
        return dets
    keep = np.array([int(c) in mapping for c in dets.class_ids], bool)
    d = dets[keep]
    ids = np.array([mapping[int(c)] for c in d.class_ids], np.int64)
    return Detections(d.xyxy, d.scores, ids, d.data)
