"""The crop classifier ("second look"): its dataset, training, export, threshold and report.

``edgetile train-verifier`` runs :func:`train_verifier`:

1. the detector runs over the training photos (or tiles, hard-negative windows included) at a low
   mining threshold; crops are cut exactly as the runtime cuts them (:func:`crop_views` and the
   runtime's BatchBuffer) around
   * positives: every annotated person, and every detection that matches one (IoU >= pos_iou), so
     the classifier also sees the loose boxes the detector really gives;
   * negatives: every detection that overlaps no person (IoU < neg_iou and less than half of either
     box inside the other): the rocks, logs and bags the detector mistakes for people; and a few
     random windows of people's size away from everyone, so that plain ground stays background;
2. an Ultralytics classifier (yolov8n-cls.yaml from scratch by default) is trained on the folders
   ``crops/{train,val}/{background,person}`` within its own weight budget, exported to ONNX by
   edgetile.export (dynamic batch) and checked against PyTorch on the validation crops;
3. on the validation photos, at the detector's own threshold, the threshold of the classifier is the
   highest that rejects at most ``max_recall_loss`` (1%) of the true people the detector found
   (:func:`choose_threshold`); it is stored in the ONNX with the crop geometry (runtime META_KEYS), and
   the report says how many false positives it removed for that, with precision-recall curves before
   and after (verifier_report.json, verifier_pr.png).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.boxes import pairwise_overlap
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import AnnotatedPhoto
from edgetile.runtime.evaluation.metrics import match_in_order
from edgetile.runtime.files import write_text_atomic
from edgetile.runtime.images import ImageReadError
from edgetile.runtime.preprocess import BatchBuffer
from edgetile.runtime.verifier import (
    BACKGROUND,
    META_KEYS,
    CropConfig,
    Verifier,
    crop_views,
    keep_by_threshold,
)

from .budget import check_budget_before_training, file_sizes_mb

POSITIVE = "person"
CLASSES = (BACKGROUND, POSITIVE)  # Ultralytics numbers class folders alphabetically
DEFAULT_VERIFIER_BUDGET_MB = 10.0


@dataclass(frozen=True)
class VerifierOptions:
    """How the crop classifier's dataset is mined and how it is trained.

    Attributes:
        model: Ultralytics classification model (YAML from scratch, or a -cls .pt).
        imgsz: Crop side in classifier pixels (the classifier's input).
        epochs: Training epochs.
        batch: Crops per training batch.
        workers: Data-loading processes (0: in the training process).
        seed: Training and sampling seed.
        device: Ultralytics device ("cpu", "0"); "" for its own choice.
        crop: Context around each box (kept in the ONNX, so the runtime cuts the same crops).
        mine_conf: Detector threshold while mining: below the operating one, for more negatives.
        pos_iou: A detection with at least this IoU with a person is a positive too.
        neg_iou: A detection below this IoU with every person (and not half inside one) is a negative.
        random_negatives: Random ground windows per photo as negatives.
        max_recall_loss: Largest fraction of the detector's true people the classifier may reject.
        budget_mb: Largest acceptable size of best.pt and of its ONNX, in MiB.
        overrides: More Ultralytics train arguments.
    """

    model: str = "yolov8n-cls.yaml"
    imgsz: int = 64
    epochs: int = 15
    batch: int = 64
    workers: int = 0
    seed: int = 0
    device: str = "cpu"
    crop: CropConfig = field(default_factory=CropConfig)
    mine_conf: float = 0.05
    pos_iou: float = 0.5
    neg_iou: float = 0.1
    random_negatives: int = 2
    max_recall_loss: float = 0.01
    budget_mb: float = DEFAULT_VERIFIER_BUDGET_MB
    overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            isinstance(self.imgsz, bool)
            or not isinstance(self.imgsz, int)
            or self.imgsz < 32
            or self.imgsz % 32
        ):
            raise ValueError(f"imgsz: expected a multiple of 32 of at least 32, found {self.imgsz!r}")
        for name in ("mine_conf", "pos_iou", "neg_iou", "max_recall_loss"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name}: expected a number in [0, 1], found {v!r}")
        if self.neg_iou > self.pos_iou:
            raise ValueError(f"neg_iou: expected at most pos_iou ({self.pos_iou}), found {self.neg_iou}")
        if int(self.random_negatives) < 0:
            raise ValueError(f"random_negatives: expected 0 or more, found {self.random_negatives!r}")
        if not self.budget_mb > 0:
            raise ValueError(f"budget_mb: expected a positive size in MB, found {self.budget_mb!r}")


@dataclass
class CropCounts:
    """What one split's crops hold.

    Attributes:
        photos: Photos (or tiles) read.
        annotated: Positives cut around annotated people.
        detected_positives: Positives cut around detections that match a person.
        detected_negatives: Negatives cut around the detector's false positives.
        random_negatives: Negatives cut around random windows of ground.
        problems: Photos that could not be read, one line each.
    """

    photos: int = 0
    annotated: int = 0
    detected_positives: int = 0
    detected_negatives: int = 0
    random_negatives: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def positives(self) -> int:
        return self.annotated + self.detected_positives

    @property
    def negatives(self) -> int:
        return self.detected_negatives + self.random_negatives


def label_detections(
    det_xyxy: np.ndarray, gt_xyxy: np.ndarray, pos_iou: float = 0.5, neg_iou: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Which detections are crops of people and which of background; the rest is ambiguous.

    Args:
        det_xyxy: (N, 4) detections.
        gt_xyxy: (M, 4) annotated people.
        pos_iou: IoU with a person from which a detection is a positive.
        neg_iou: IoU with every person below which a detection is a negative, unless half of it lies
            inside a person or half of a person inside it (a part of a person, a group).

    Returns:
        (positive, negative): two (N,) bool masks, never both True.
    """
    det = np.asarray(det_xyxy, np.float64).reshape(-1, 4)
    gt = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    if len(gt) == 0 or len(det) == 0:
        return np.zeros(len(det), bool), np.ones(len(det), bool)
    iou = pairwise_overlap(det, gt, "iou").max(axis=1)
    ios = pairwise_overlap(det, gt, "ios").max(axis=1)
    positive = iou >= pos_iou
    negative = (iou < neg_iou) & (ios < 0.5)
    return positive, negative & ~positive


def random_ground_boxes(
    rng: np.random.Generator, gt_xyxy: np.ndarray, image_wh: tuple[int, int], count: int
) -> np.ndarray:
    """Up to count boxes of people's sizes that touch no annotated person: plain ground.

    Returns:
        (K, 4) float32 boxes, K <= count (fewer when the photo is crowded).
    """
    gt = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    W, H = image_wh
    if len(gt):
        sides = np.stack([gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]], axis=1)
    else:
        sides = np.array([[24.0, 48.0], [48.0, 24.0], [40.0, 40.0]])
    out: list[list[float]] = []
    for _ in range(count * 20):
        if len(out) == count:
            break
        w, h = sides[rng.integers(len(sides))]
        if w >= W or h >= H:
            continue
        x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
        box = np.array([[x0, y0, x0 + w, y0 + h]])
        if len(gt) and pairwise_overlap(box, gt, "ios").max() > 0:
            continue
        out.append(box[0].tolist())
    return np.asarray(out, np.float32).reshape(-1, 4)


def write_crops(
    image: np.ndarray,
    xyxy: np.ndarray,
    folder: Path,
    stem: str,
    crop: CropConfig,
    buffer: BatchBuffer,
) -> list[Path]:
    """Cut crops around boxes exactly as the runtime does and write them as PNG.

    Args:
        image: (H, W, 3) uint8 BGR photo.
        xyxy: (N, 4) boxes.
        folder: Where to write (created).
        stem: File name prefix; crop i is ``{stem}_{i}.png``.
        crop: Context around each box.
        buffer: The runtime's batch buffer at the classifier's input size.

    Returns:
        The files written.
    """
    boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
    if not len(boxes):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    hw = buffer.array.shape[2:]
    views = crop_views(boxes, (image.shape[1], image.shape[0]), (int(hw[0]), int(hw[1])), crop)
    paths = []
    for start in range(0, len(boxes), buffer.capacity):
        arr = buffer.fill(image, views.subset(slice(start, start + buffer.capacity)))
        # The buffer holds RGB k/255: scaled back, it is the very uint8 crop the classifier will see.
        rgb = np.rint(arr.astype(np.float32) * 255).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        for i, slot in enumerate(rgb):
            path = folder / f"{stem}_{start + i}.png"
            if not cv2.imwrite(str(path), np.ascontiguousarray(slot[:, :, ::-1])):
                raise OSError(f"could not write {path}")
            paths.append(path)
    return paths


def build_crops(
    photos: Sequence[AnnotatedPhoto],
    detector: Detector,
    out: str | Path,
    options: VerifierOptions | None = None,
    progress: bool = False,
) -> CropCounts:
    """Write one split's crops: ``out/person/*.png`` and ``out/background/*.png``.

    Args:
        photos: Annotated photos or tiles; every annotated box is a person.
        detector: The detector whose mistakes the classifier learns (its config's conf mines).
        out: The split's folder.
        options: Crop geometry, matching IoUs, random negatives, seed.
        progress: Progress bar on stderr.

    Returns:
        The counts of what was written.
    """
    opt = options or VerifierOptions()
    out = Path(out)
    counts = CropCounts()
    rng = np.random.default_rng(opt.seed)
    buffer = BatchBuffer(64, (opt.imgsz, opt.imgsz))
    it: Sequence[AnnotatedPhoto] = photos
    if progress:
        from tqdm import tqdm

        it = tqdm(photos, desc=f"crops {out.name}", unit="photo")
    for n, photo in enumerate(it):
        try:
            image = photo.load()
        except (ImageReadError, OSError) as exc:
            counts.problems.append(f"{photo.path}: skipped: {exc}")
            continue
        counts.photos += 1
        stem = f"{n:05d}_{photo.photo_id}"
        found = detector.detect(image)
        pos, neg = label_detections(found.xyxy, photo.boxes, opt.pos_iou, opt.neg_iou)
        ground = random_ground_boxes(rng, photo.boxes, (photo.width, photo.height), int(opt.random_negatives))
        counts.annotated += len(
            write_crops(image, photo.boxes, out / POSITIVE, f"{stem}_gt", opt.crop, buffer)
        )
        counts.detected_positives += len(
            write_crops(image, found.xyxy[pos], out / POSITIVE, f"{stem}_det", opt.crop, buffer)
        )
        counts.detected_negatives += len(
            write_crops(image, found.xyxy[neg], out / BACKGROUND, f"{stem}_fp", opt.crop, buffer)
        )
        counts.random_negatives += len(
            write_crops(image, ground, out / BACKGROUND, f"{stem}_rnd", opt.crop, buffer)
        )
    return counts


def choose_threshold(true_positive_scores: np.ndarray, max_loss: float = 0.01) -> float:
    """The highest threshold that rejects at most max_loss of the true positives (recall first).

    A detection is kept at score >= threshold, so the threshold is the (k+1)-th lowest score with
    k = floor(max_loss * n): at most k true positives lie below it. With no true positives there is
    nothing to protect and nothing to measure: 0, which keeps everything.
    """
    if not 0 <= max_loss < 1:
        raise ValueError(f"max_loss: expected a fraction in [0, 1), found {max_loss!r}")
    s = np.sort(np.asarray(true_positive_scores, np.float32).reshape(-1))
    if len(s) == 0:
        return 0.0
    k = int(math.floor(max_loss * len(s) + 1e-9))
    return float(s[k])


@dataclass
class PhotoScores:
    """One validation photo: the detector's candidates, the classifier's scores and the truth."""

    xyxy: np.ndarray
    detector_scores: np.ndarray
    verifier_scores: np.ndarray
    gt_xyxy: np.ndarray


def score_photos(
    photos: Sequence[AnnotatedPhoto], detector: Detector, verifier: Verifier, progress: bool = False
) -> tuple[list[PhotoScores], dict[str, float], list[str]]:
    """Detector candidates and classifier scores of every photo, timed.

    Returns:
        (per photo, {"detect_ms": mean per photo, "verify_ms": mean per photo}, problems).
    """
    out: list[PhotoScores] = []
    problems: list[str] = []
    detect_s = verify_s = 0.0
    it: Sequence[AnnotatedPhoto] = photos
    if progress:
        from tqdm import tqdm

        it = tqdm(photos, desc="validation", unit="photo")
    for photo in it:
        try:
            image = photo.load()
        except (ImageReadError, OSError) as exc:
            problems.append(f"{photo.path}: skipped: {exc}")
            continue
        t0 = time.perf_counter()
        found = detector.detect(image)
        t1 = time.perf_counter()
        probs = verifier.scores(image, found.xyxy)
        t2 = time.perf_counter()
        detect_s += t1 - t0
        verify_s += t2 - t1
        out.append(PhotoScores(found.xyxy, found.scores, probs, photo.boxes))
    n = max(len(out), 1)
    return out, {"detect_ms": 1000 * detect_s / n, "verify_ms": 1000 * verify_s / n}, problems


def _matched(p: PhotoScores, keep: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, true positive flags) of the kept candidates, matched in score order."""
    order = np.argsort(-p.detector_scores[keep], kind="stable")
    boxes, scores = p.xyxy[keep][order], p.detector_scores[keep][order]
    return scores, match_in_order(boxes, p.gt_xyxy, iou)


def pr_curve(
    photos: Sequence[PhotoScores], threshold: float | None, iou: float = 0.5
) -> dict[str, np.ndarray]:
    """The pooled precision-recall curve by detector score, without (None) or with the classifier.

    Returns:
        {"score", "recall", "precision"}: one entry per candidate, by descending score.
    """
    scores, tps = [], []
    n_gt = 0
    for p in photos:
        keep = (
            np.ones(len(p.xyxy), bool)
            if threshold is None
            else keep_by_threshold(p.verifier_scores, threshold)
        )
        s, tp = _matched(p, keep, iou)
        scores.append(s)
        tps.append(tp)
        n_gt += len(p.gt_xyxy)
    s = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    tp = np.concatenate(tps) if tps else np.zeros(0, bool)
    order = np.argsort(-s, kind="stable")
    ctp = np.cumsum(tp[order])
    cfp = np.cumsum(~tp[order])
    return {
        "score": s[order],
        "recall": ctp / max(n_gt, 1),
        "precision": ctp / np.maximum(ctp + cfp, 1),
    }


def operating_counts(
    photos: Sequence[PhotoScores], conf: float, threshold: float | None, iou: float = 0.5
) -> dict[str, int]:
    """True and false positives at the detector's threshold conf, without (None) or with the classifier.

    The false positives are split as :func:`label_detections` splits crops: ``fp_off_people`` lie away
    from every person (the rocks and logs a crop classifier is for), ``fp_on_people`` are loose or
    duplicate boxes on a person, which a crop classifier rightly calls a person.
    """
    tp = fp = off = 0
    for p in photos:
        keep = p.detector_scores >= conf
        if threshold is not None:
            keep &= keep_by_threshold(p.verifier_scores, threshold)
        order = np.argsort(-p.detector_scores[keep], kind="stable")
        boxes = p.xyxy[keep][order]
        flags = match_in_order(boxes, p.gt_xyxy, iou)
        tp += int(flags.sum())
        fp += int((~flags).sum())
        off += int(label_detections(boxes[~flags], p.gt_xyxy, iou)[1].sum())
    return {
        "tp": tp,
        "fp": fp,
        "fp_off_people": off,
        "fp_on_people": fp - off,
        "gt": int(sum(len(p.gt_xyxy) for p in photos)),
    }


def true_positive_scores(photos: Sequence[PhotoScores], conf: float, iou: float = 0.5) -> np.ndarray:
    """The classifier's scores of the people the detector finds alone at conf."""
    out = []
    for p in photos:
        idx = np.flatnonzero(p.detector_scores >= conf)
        order = idx[np.argsort(-p.detector_scores[idx], kind="stable")]
        flags = match_in_order(p.xyxy[order], p.gt_xyxy, iou)
        out.append(p.verifier_scores[order][flags])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def loss_upper_bound(lost: int, found: int, confidence: float = 0.95) -> float:
    """Clopper-Pearson upper bound of the fraction of people a threshold loses, from a validation count.

    Losing ``lost`` of ``found`` people on the validation photos says the true fraction is below this
    with the given confidence: with none lost of n it is about 3/n (the rule of three), so checking
    "at most 1%" takes some 300 people found.
    """
    if found <= 0:
        return 1.0
    if lost >= found:
        return 1.0

    def cdf(p: float) -> float:  # P(X <= lost) for X ~ Binomial(found, p)
        return sum(math.comb(found, i) * p**i * (1 - p) ** (found - i) for i in range(lost + 1))

    lo, hi = lost / found, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def measure(
    photos: Sequence[PhotoScores], conf: float, threshold: float, iou: float = 0.5
) -> dict[str, object]:
    """Before and after the classifier at the detector's threshold: what it removed and what it lost."""
    before = operating_counts(photos, conf, None, iou)
    after = operating_counts(photos, conf, threshold, iou)
    lost = before["tp"] - after["tp"]
    return {
        "conf": conf,
        "threshold": threshold,
        "gt": before["gt"],
        "before": before,
        "after": after,
        "false_positives_removed": before["fp"] - after["fp"],
        "false_positives_off_people_removed": before["fp_off_people"] - after["fp_off_people"],
        "people_lost": lost,
        "people_lost_fraction": lost / before["tp"] if before["tp"] else 0.0,
        # What these photos can vouch for: the fraction lost on photos like them, at 95% confidence.
        "people_lost_fraction_upper95": loss_upper_bound(lost, before["tp"]),
    }


def plot_pr(photos: Sequence[PhotoScores], conf: float, threshold: float, path: Path, title: str) -> Path:
    """Precision-recall curves before and after the classifier, operating points marked, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for label, thr, colour in (
        ("detector alone", None, "tab:blue"),
        ("with the verifier", threshold, "tab:red"),
    ):
        c = pr_curve(photos, thr)
        ax.plot(c["recall"], c["precision"], color=colour, label=label)
        at = c["score"] >= conf
        if at.any():
            i = int(np.flatnonzero(at)[-1])
            ax.plot(c["recall"][i], c["precision"][i], "o", color=colour)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(
        title=f"dots: detector conf {conf:g}, verifier >= {threshold:.3g}", fontsize=8, title_fontsize=8
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def store_verifier_metadata(onnx_path: Path, threshold: float | None, crop: CropConfig) -> None:
    """Write the threshold (when chosen), crop geometry and positive class into the ONNX metadata."""
    import onnx

    proto = onnx.load(str(onnx_path))
    entries = {
        META_KEYS["context"]: repr(float(crop.context)),
        META_KEYS["min_side"]: repr(int(crop.min_side)),
        META_KEYS["positive"]: POSITIVE,
    }
    if threshold is not None:
        entries[META_KEYS["threshold"]] = repr(float(threshold))
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in entries.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    tmp = onnx_path.with_name(onnx_path.name + ".partial")
    onnx.save(proto, str(tmp))
    tmp.replace(onnx_path)


def check_against_torch(best: Path, onnx_path: Path, crops: Sequence[Path], tolerance: float = 1e-3) -> float:
    """Largest difference of class probabilities between the checkpoint and its ONNX on real crops.

    Raises:
        ValueError: When it exceeds tolerance.
    """
    import torch
    from ultralytics import YOLO

    from edgetile.runtime.backends import create_backend

    if not crops:
        return 0.0
    batch = (
        np.stack([cv2.imread(str(p))[:, :, ::-1].transpose(2, 0, 1) for p in crops]).astype(np.float32) / 255
    )
    model = YOLO(str(best)).model.float().eval()
    with torch.no_grad():
        want = model(torch.from_numpy(batch))
    want = (want[0] if isinstance(want, (list, tuple)) else want).numpy()
    with create_backend("onnxruntime", onnx_path) as be:
        got = np.asarray(be.infer(batch)[0])
    diff = float(np.abs(got - want).max())
    if diff > tolerance:
        raise ValueError(
            f"ONNX {onnx_path}: expected the checkpoint's probabilities within {tolerance:g}, found a "
            f"difference of {diff:.3g}"
        )
    return diff


@dataclass
class VerifierResult:
    """What train-verifier made and measured.

    Attributes:
        out: The output folder.
        best: The trained checkpoint.
        onnx: The exported classifier, threshold and crop geometry in its metadata.
        counts: Crops per split.
        measured: Before and after at the detector's threshold (:func:`measure`).
        timing_ms: Mean milliseconds per validation photo of the detector and of the verifier.
        report: Everything, as written to verifier_report.json.
        sizes_mb: File sizes.
        files: The report's files.
    """

    out: Path
    best: Path
    onnx: Path
    counts: dict[str, CropCounts]
    measured: dict
    timing_ms: dict[str, float]
    report: dict[str, object]
    sizes_mb: dict[str, float]
    files: dict[str, Path]

    def summary(self) -> str:
        r, m, t = self.report, self.measured, self.timing_ms
        b, a = m["before"], m["after"]
        lines = [
            "crops: "
            + "; ".join(
                f"{k} {c.positives} person ({c.annotated} annotated, {c.detected_positives} detected), "
                f"{c.negatives} background ({c.detected_negatives} false positives, {c.random_negatives} random)"
                for k, c in self.counts.items()
            ),
            f"classifier: {self.onnx} ({', '.join(f'{k} {v:.2f} MB' for k, v in self.sizes_mb.items())})",
            f"threshold {m['threshold']:.4g} (rejects at most {100 * float(r['max_recall_loss']):g}% of the "
            f"people the detector finds at conf {m['conf']:g} on {r['photos']} validation photo(s))",
            f"at conf {m['conf']:g}: people found {b['tp']} -> {a['tp']} of {m['gt']} (lost {m['people_lost']}; "
            f"on photos like these at most {100 * m['people_lost_fraction_upper95']:.1f}% at 95% confidence), "
            f"false positives {b['fp']} -> {a['fp']} (removed {m['false_positives_removed']}; away from people "
            f"{b['fp_off_people']} -> {a['fp_off_people']}, loose boxes on people {b['fp_on_people']} -> "
            f"{a['fp_on_people']})",
            f"time per photo: detector {t['detect_ms']:.1f} ms, verifier +{t['verify_ms']:.1f} ms",
            f"report: {self.files['json']}  {self.files['png']}",
        ]
        return "\n".join(lines)


def train_verifier(
    train_photos: Sequence[AnnotatedPhoto],
    val_photos: Sequence[AnnotatedPhoto],
    models: Sequence[str | Path],
    out: str | Path,
    config: DetectConfig | None = None,
    weights: Sequence[float] | None = None,
    backend: str = "auto",
    options: VerifierOptions | None = None,
    progress: bool = False,
) -> VerifierResult:
    """Mine crops with a detector, train the classifier, export it, choose its threshold, report.

    Args:
        train_photos: Photos or tiles to mine training crops from.
        val_photos: Photos for validation crops and for choosing the threshold.
        models: The detector (one model or an ensemble), as detect runs it.
        out: Output folder: crops/, train/ (Ultralytics' run), verifier.onnx, verifier_report.json,
            verifier_pr.png.
        config: The detector's settings; its conf is the operating threshold the report is made at.
        weights: Ensemble weights.
        backend: "auto", "onnxruntime" or "tensorrt" for the detector.
        options: Mining and training options.
        progress: Progress bars on stderr.

    Returns:
        The VerifierResult.

    Raises:
        BudgetError: Before training, when the classifier cannot fit its budget.
        ValueError: No person or no background crop to learn from; an export that disagrees with
            PyTorch; a file over the budget.
    """
    opt = options or VerifierOptions()
    cfg = config or DetectConfig()
    out = Path(out).resolve()
    estimate = check_budget_before_training(
        opt.model, len(CLASSES), opt.budget_mb, onnx=True, imgsz=opt.imgsz
    )
    mining = replace(cfg, conf=min(cfg.conf, opt.mine_conf))
    crops = out / "crops"
    counts: dict[str, CropCounts] = {}
    with Detector([str(m) for m in models], weights=weights, backend=backend, config=mining) as detector:
        for split, photos in (("train", train_photos), ("val", val_photos)):
            counts[split] = build_crops(
                photos, detector, crops / split, replace(opt, seed=opt.seed + len(counts)), progress
            )
    for split, c in counts.items():
        if c.positives == 0 or c.negatives == 0:
            raise ValueError(
                f"{split} photos: expected both person and background crops, found {c.positives} person and "
                f"{c.negatives} background"
            )

    from ultralytics import YOLO

    from .training import add_cpu_threads_callback

    model = YOLO(opt.model, task="classify")
    add_cpu_threads_callback(model)
    args: dict[str, object] = dict(
        data=str(crops),
        imgsz=opt.imgsz,
        epochs=opt.epochs,
        batch=opt.batch,
        workers=opt.workers,
        seed=opt.seed,
        project=str(out),
        name="train",
        exist_ok=True,
        plots=False,  # Ultralytics' plots fetch a font from the internet
        verbose=False,
    )
    if opt.device:
        args["device"] = opt.device
    args.update(opt.overrides)
    model.train(**args)
    trainer = model.trainer
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)

    from edgetile.export.onnx import OnnxExportConfig, export_onnx

    onnx_path = export_onnx(
        best, out / "verifier.onnx", OnnxExportConfig(imgsz=opt.imgsz, batch=None, budget_mb=opt.budget_mb)
    )
    val_crops = sorted((crops / "val").rglob("*.png"))[:64]
    diff = check_against_torch(best, onnx_path, val_crops)
    store_verifier_metadata(onnx_path, None, opt.crop)

    with Detector(
        [str(m) for m in models], weights=weights, backend=backend, config=mining
    ) as detector, Verifier(onnx_path, threshold=0.0, crop=opt.crop) as verifier:
        scored, timing, problems = score_photos(val_photos, detector, verifier, progress)
    threshold = choose_threshold(true_positive_scores(scored, cfg.conf), opt.max_recall_loss)
    store_verifier_metadata(onnx_path, threshold, opt.crop)
    measured = measure(scored, cfg.conf, threshold)
    sizes = file_sizes_mb({best.name: best, onnx_path.name: onnx_path})
    over = {k: v for k, v in sizes.items() if v > opt.budget_mb}
    if over:
        raise ValueError(f"budget: expected files within {opt.budget_mb:g} MB, found {over}")
    files = {"json": out / "verifier_report.json", "png": out / "verifier_pr.png"}
    plot_pr(
        scored,
        cfg.conf,
        threshold,
        files["png"],
        f"{len(scored)} validation photo(s): detector alone vs with the verifier",
    )
    report: dict[str, object] = {
        "onnx": str(onnx_path),
        "checkpoint": str(best),
        "detector": [str(m) for m in models],
        "detect_config": asdict(cfg),
        "mining_conf": mining.conf,
        "photos": len(scored),
        "max_recall_loss": opt.max_recall_loss,
        "measured": measured,
        "timing_ms": timing,
        "crops": {
            k: {**asdict(c), "positives": c.positives, "negatives": c.negatives} for k, c in counts.items()
        },
        "options": {**asdict(opt), "overrides": dict(opt.overrides)},
        "sizes_mb": sizes,
        "predicted_mb": {"checkpoint": estimate.checkpoint_mb, "onnx": estimate.onnx_mb},
        "params": estimate.params,
        "onnx_vs_torch_max_diff": diff,
        "problems": problems + [p for c in counts.values() for p in c.problems],
    }
    write_text_atomic(files["json"], json.dumps(report, indent=1, default=str))
    return VerifierResult(out, best, onnx_path, counts, measured, timing, report, sizes, files)
