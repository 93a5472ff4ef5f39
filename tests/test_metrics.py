"""Metrics on full-size photos: pycocotools as the oracle for mAP, hand-computed cases for the Lacmus rule."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import AnnotatedPhoto, Dataset
from edgetile.runtime.evaluation.metrics import (
    PhotoDetections,
    evaluate,
    lacmus_metrics,
    match_in_order,
    score_detections,
    voc_ap,
)
from edgetile.runtime.results import Detections
from onnx_models import red_blob_model


def photo(boxes, w=1000, h=800, classes=None, name="p.jpg"):
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    c = np.zeros(len(b), np.int64) if classes is None else np.asarray(classes, np.int64)
    return AnnotatedPhoto(name, w, h, b, c)


def dets(boxes, scores, classes=None):
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    c = np.zeros(len(b), np.int64) if classes is None else np.asarray(classes, np.int64)
    return Detections(b, np.asarray(scores, np.float32), c)


GT_A = [10, 10, 30, 50]
GT_B = [100, 100, 120, 140]
GT_C = [300, 300, 340, 330]
FAR = [600, 600, 620, 640]


# Each case: photos as [(ground truth, (detections, scores))], expected Lacmus AP and F1, worked by hand.
LACMUS_CASES = [
    # Perfect: both found, nothing else.
    ([([GT_A, GT_B], ([GT_A, GT_B], [0.9, 0.8]))], 1.0, 1.0),
    # TP .9, FP .8, TP .7, FP .6 with 3 GT: recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2.
    # All-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9. F1: P = 2/4, R = 2/3 -> 4/7.
    ([([GT_A, GT_B, GT_C], ([GT_A, FAR, GT_B, [700, 10, 720, 50]], [0.9, 0.8, 0.7, 0.6]))], 5 / 9, 4 / 7),
    # Submission order wins over score: the low-score exact box is listed first and takes GT_A, the
    # high-score looser box (IoU 0.7) listed second is a duplicate -> FP. Pooled by score: FP then TP:
    # precision 0 then 1/2 at recall 1 -> AP 1/2. (Matching by score would give AP 1.)
    ([([GT_A], ([GT_A, [10, 10, 30, 38]], [0.3, 0.9]))], 0.5, 2 / 3),
    # A box on a photo without people is a false positive: FP .95 then TP .9 -> AP 1/2, P 1/2, R 1.
    ([([GT_A], ([GT_A], [0.9])), ([], ([FAR], [0.95]))], 0.5, 2 / 3),
    # Below the Lacmus threshold 0.05 a detection is not submitted at all (the FP at 0.04 is ignored).
    ([([GT_A], ([GT_A, FAR], [0.9, 0.04]))], 1.0, 1.0),
    # Two boxes on one person: the second is a duplicate, FP. TP .9, FP .8 -> AP 1, F1 2/3.
    ([([GT_A], ([GT_A, [11, 10, 30, 50]], [0.9, 0.8]))], 1.0, 2 / 3),
    # IoU exactly 0.5 counts (>=): box half the GT's height inside it.
    ([([GT_A], ([[10, 10, 30, 30]], [0.9]))], 1.0, 1.0),
    # A detection's best-IoU GT is taken -> FP even though a second GT overlaps it a little.
    ([([GT_A, [10, 45, 30, 85]], ([GT_A, [10, 12, 30, 52]], [0.9, 0.8]))], 0.5, 0.5),
    # Nothing found: AP 0, F1 0.
    ([([GT_A], ([], []))], 0.0, 0.0),
]


@pytest.mark.parametrize("case,ap,f1", LACMUS_CASES)
def test_lacmus_metric_matches_hand_computed_cases(case, ap, f1):
    per_photo = [PhotoDetections(photo(g, name=f"p{i}.jpg"), dets(*d)) for i, (g, d) in enumerate(case)]
    got_ap, got_f1 = lacmus_metrics(per_photo)
    assert got_ap == pytest.approx(ap, abs=1e-9)
    assert got_f1 == pytest.approx(f1, abs=1e-9)


def test_voc_all_point_ap_is_the_area_under_the_precision_envelope():
    # Precision dips and recovers: the envelope takes the later, higher precision.
    # rec .2 .4 .4 .6 .8; prec 1 1 .667 .75 .8 -> envelope 1 1 .8 .8 .8 over steps .2 each -> .2+.2+.16+.16 = .72
    rec = np.array([0.2, 0.4, 0.4, 0.6, 0.8])
    prec = np.array([1.0, 1.0, 2 / 3, 0.75, 0.8])
    assert voc_ap(rec, prec) == pytest.approx(0.72)
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_match_in_order_never_falls_back_to_a_second_best_box():
    gt = np.array([GT_A, [10, 45, 30, 85]], np.float32)
    tp = match_in_order(np.array([GT_A, [10, 12, 30, 52]], np.float32), gt)
    assert tp.tolist() == [True, False]
    assert match_in_order(np.zeros((2, 4)), np.zeros((0, 4))).tolist() == [False, False]


def _random_case(seed, n_photos=6):
    rng = np.random.default_rng(seed)
    per_photo = []
    for i in range(n_photos):
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 900, (n, 2))
        wh = rng.uniform(8, 80, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        gc = rng.integers(0, 2, n)
        # Found with a few pixels of error (so IoU 0.5..0.95 all matter), some missed, some false.
        found = rng.random(n) < 0.8
        jitter = rng.normal(0, 3, (n, 4))
        db = (gt + jitter)[found]
        dc = gc[found].copy()
        flip = rng.random(len(dc)) < 0.1
        dc[flip] = 1 - dc[flip]  # wrong class
        nfp = int(rng.integers(0, 6))
        fxy = rng.uniform(0, 900, (nfp, 2))
        db = np.concatenate([db, np.concatenate([fxy, fxy + rng.uniform(8, 60, (nfp, 2))], 1)])
        dc = np.concatenate([dc, rng.integers(0, 2, nfp)])
        ds = rng.uniform(0.01, 1, len(db))
        order = np.argsort(-ds)
        per_photo.append(
            PhotoDetections(photo(gt, classes=gc, name=f"img{i}.jpg"), dets(db[order], ds[order], dc[order]))
        )
    return per_photo


def _pycocotools_oracle(per_photo, tmp_path, max_dets):
    """COCO files written by hand and scored by pycocotools, independent of edgetile's conversion."""
    images, anns, results = [], [], []
    for i, pd in enumerate(per_photo):
        images.append(
            {"id": 100 + i, "file_name": f"img{i}.jpg", "width": pd.photo.width, "height": pd.photo.height}
        )
        for b, c in zip(pd.photo.boxes.tolist(), pd.photo.class_ids.tolist()):
            anns.append(
                {
                    "id": len(anns) + 7,
                    "image_id": 100 + i,
                    "category_id": 11 + c,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
            )
        for b, s, c in zip(
            pd.detections.xyxy.tolist(), pd.detections.scores.tolist(), pd.detections.class_ids.tolist()
        ):
            results.append(
                {
                    "image_id": 100 + i,
                    "category_id": 11 + c,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": s,
                }
            )
    (tmp_path / "gt.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 11, "name": "a"}, {"id": 12, "name": "b"}],
            }
        )
    )
    (tmp_path / "dt.json").write_text(json.dumps(results))
    gt = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_maps_equal_pycocotools_on_files_written_independently(seed, tmp_path):
    per_photo = _random_case(seed)
    res = score_detections(per_photo, ["a", "b"])
    oracle = _pycocotools_oracle(per_photo, tmp_path, res.coco_max_dets)
    assert (res.map50_95, res.map50, res.map75) == pytest.approx(tuple(oracle[:3]), abs=1e-12)
    assert 0 < res.map75 < res.map50 < 1  # the case is not trivial


def test_coco_max_dets_is_raised_so_every_box_of_a_crowded_photo_counts(tmp_path):
    # 300 people on one photo, all found exactly: pycocotools' default maxDets=100 would cap AP.
    xy = np.stack(np.meshgrid(np.arange(20) * 45.0, np.arange(15) * 50.0), -1).reshape(-1, 2)
    gt = np.concatenate([xy, xy + 30], 1)
    pd = PhotoDetections(photo(gt, w=1000, h=800), dets(gt, np.linspace(0.99, 0.5, len(gt))))
    res = score_detections([pd], ["person"])
    assert res.map50 == pytest.approx(1.0) and res.lacmus_ap50 == pytest.approx(1.0)
    capped = _pycocotools_oracle([pd], tmp_path, (1, 10, 100))
    assert capped[1] < 0.5  # what the default would have reported


def test_operating_point_and_rescore_without_the_model():
    per_photo = [PhotoDetections(photo([GT_A, GT_B]), dets([GT_A, FAR, GT_B], [0.9, 0.5, 0.2]))]
    r = score_detections(per_photo, ["person"], score_thr=0.3)
    assert (r.tp, r.fp, r.recall, r.precision) == (1, 1, 0.5, 0.5)
    r2 = r.rescore(0.1)
    assert (r2.tp, r2.fp, r2.recall) == (2, 1, 1.0)
    assert r2.precision == pytest.approx(2 / 3)
    assert r2.map50 == r.map50  # mAP does not depend on the operating threshold
    assert r2.per_photo is not None and len(r2.per_photo) == 1


def test_pr_curve_png_is_written(tmp_path):
    res = score_detections(_random_case(3), ["a", "b"], score_thr=0.5)
    out = res.write_pr_curve(tmp_path / "pr.png")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 300
    # The curve is monotone in recall and bounded.
    assert np.all(np.diff(res.curve[:, 1]) >= 0) and np.all((res.curve[:, 2] >= 0) & (res.curve[:, 2] <= 1))


def red_scene(tmp_path, name, w, h, boxes):
    img = np.full((h, w, 3), (60, 110, 70), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = (0, 0, 255)
    path = tmp_path / name
    cv2.imwrite(str(path), img)
    return AnnotatedPhoto(
        path, w, h, np.asarray(boxes, np.float32).reshape(-1, 4), np.zeros(len(boxes), np.int64)
    )


def test_evaluate_runs_the_tiled_detector_on_full_photos(tmp_path):
    model = red_blob_model(tmp_path / "red.onnx", input_hw=(128, 128))
    # Red squares aligned with the model's 8 px cells (so its 16 px boxes fit them exactly), one of
    # them across a tile border, and an unreadable photo that must be reported, not crash the run.
    photos = [
        red_scene(tmp_path, "a.png", 300, 200, [(12, 12, 28, 28), (100, 60, 116, 76)]),
        red_scene(tmp_path, "b.png", 300, 200, [(196, 100, 212, 116)]),
        red_scene(tmp_path, "empty.png", 300, 200, []),
    ]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    photos.append(AnnotatedPhoto(tmp_path / "broken.png", 300, 200, np.zeros((0, 4)), np.zeros(0)))
    ds = Dataset(photos, ["person"])
    with Detector(str(model), config=DetectConfig(tile=128, overlap=0.25, conf=0.01)) as det:
        res = evaluate(det, ds)
        with pytest.raises(ValueError, match="conf"):
            evaluate(Detector(str(model), config=DetectConfig(tile=128, conf=0.25)), ds)
    assert len(res.per_photo) == 3 and len(res.problems) == 1 and "broken.png" in res.problems[0]
    assert res.gt_boxes == 3 and res.recall == 1.0
    assert res.map50 > 0.5 and res.lacmus_ap50 > 0.5
    # The numbers are those of the detections kept, scored again independently.
    again = score_detections(res.per_photo, ["person"])
    assert (again.map50, again.lacmus_f1) == (res.map50, res.lacmus_f1)
