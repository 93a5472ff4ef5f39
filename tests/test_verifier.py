"""The second look: crops around detections, the crop classifier in the runtime, train-verifier's parts."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgetile.runtime.backends import create_backend
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.preprocess import preprocess_reference
from edgetile.runtime.results import Detections
from edgetile.runtime.verifier import (
    META_KEYS,
    CropConfig,
    Verifier,
    crop_views,
    crop_windows,
    keep_by_threshold,
)
from edgetile.train.verifier import (
    PhotoScores,
    VerifierOptions,
    build_crops,
    choose_threshold,
    label_detections,
    loss_upper_bound,
    measure,
    pr_curve,
    random_ground_boxes,
    train_verifier,
    true_positive_scores,
)
from onnx_models import red_blob_model, red_crop_classifier

pytest.importorskip("onnxruntime")

GREEN = (70, 110, 60)  # BGR: redness well below zero
RED = (0, 0, 255)  # redness 1: a 'person' for the classifier
DARK_RED = (0, 0, 150)  # redness 0.59: the detector's 'person' too, the classifier's background at bias 0.7
#: Crops exactly the box: the test classifier then sees only the object's colour.
TIGHT = {META_KEYS["context"]: "1.0", META_KEYS["min_side"]: "8", META_KEYS["threshold"]: "0.5"}


class CountingBackend:
    """Wraps a real backend and counts its inference calls."""

    def __new__(cls, path):
        be = create_backend("onnxruntime", path)
        calls = []
        real = be.infer

        def infer(batch):
            calls.append(batch.shape[0])
            return real(batch)

        be.infer = infer
        be.calls = calls
        return be


@pytest.fixture
def classifier(tmp_path):
    return red_crop_classifier(tmp_path / "verify.onnx", extra_meta=TIGHT, bias=0.7)


def photo(w=600, h=400, objects=()):
    img = np.full((h, w, 3), GREEN, np.uint8)
    for (x1, y1, x2, y2), colour in objects:
        img[y1:y2, x1:x2] = colour
    return img


@pytest.mark.parametrize(
    "box, image_wh, crop, want",
    [
        # a 20x40 box in the middle: a square of twice its longer side, centred on it
        ((100, 100, 120, 140), (600, 400), CropConfig(2.0, 32), (70, 80, 150, 160)),
        # a 4x6 box: the smallest side (32) wins
        ((200, 200, 204, 206), (600, 400), CropConfig(2.0, 32), (186, 187, 218, 219)),
        # at the top-left corner: moved inside the photo, not cut
        ((0, 0, 10, 20), (600, 400), CropConfig(2.0, 32), (0, 0, 40, 40)),
        # at the bottom-right corner: moved inside too
        ((590, 390, 600, 400), (600, 400), CropConfig(2.0, 32), (568, 368, 600, 400)),
        # a photo smaller than the crop: cut to the photo
        ((5, 5, 15, 15), (24, 24), CropConfig(2.0, 32), (0, 0, 24, 24)),
        # context 1: the box itself, squared
        ((100, 100, 120, 140), (600, 400), CropConfig(1.0, 8), (90, 100, 130, 140)),
    ],
)
def test_crop_windows(box, image_wh, crop, want):
    assert crop_windows(np.array([box], np.float32), image_wh, crop).tolist() == [list(want)]


def test_crop_views_are_the_runtime_preprocessing():
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 30, 50], [150, 100, 160, 118], [0, 0, 2, 2]], np.float32)
    views = crop_views(boxes, (160, 120), (32, 32), CropConfig(2.0, 16))
    from edgetile.runtime.preprocess import BatchBuffer

    got = BatchBuffer(4, (32, 32)).fill(img, views)
    for i in range(len(boxes)):
        want = preprocess_reference(img, tuple(views.windows[i]), tuple(views.content[i]), (32, 32))
        np.testing.assert_allclose(got[i], want, atol=1e-6)
    assert (views.content == 32).all()  # every window lies whole inside the photo: no padding


def test_crop_views_of_a_photo_smaller_than_the_crop_pad_like_an_edge_tile():
    views = crop_views(np.array([[2, 2, 6, 6]], np.float32), (20, 10), (32, 32), CropConfig(2.0, 40))
    assert views.windows.tolist() == [[0, 0, 20, 10]]
    assert views.content.tolist() == [[16, 8]]  # 40 px of crop -> 32 model px: scale 0.8


@pytest.mark.parametrize(
    "scores, threshold, want",
    [
        ([0.2, 0.5, 0.9], 0.5, [False, True, True]),  # at the threshold is kept
        ([0.2, 0.5, 0.9], 0.0, [True, True, True]),  # threshold 0 keeps everything
        ([0.2, 0.5, 0.9], 1.0, [False, False, False]),  # only certainty passes 1
        ([], 0.5, []),
    ],
)
def test_keep_by_threshold(scores, threshold, want):
    assert keep_by_threshold(np.array(scores, np.float32), threshold).tolist() == want


def test_verifier_rejects_a_known_box_and_records_both_scores(classifier):
    img = photo(objects=[((100, 100, 160, 160), RED), ((300, 200, 360, 260), DARK_RED)])
    dets = Detections([[100, 100, 160, 160], [300, 200, 360, 260]], [0.6, 0.9], [0, 0])
    with Verifier(classifier) as v:
        assert (v.threshold, v.crop, v.positive) == (0.5, CropConfig(1.0, 8), 1)
        kept = v.verify(img, dets)
    assert kept.xyxy.tolist() == [[100, 100, 160, 160]]  # the dark red one is rejected
    assert kept.scores.tolist() == pytest.approx([0.6])  # the final score is the detector's
    rec = kept.to_records({0: "person"})[0]
    assert rec["detector_score"] == pytest.approx(0.6)
    assert rec["verifier_score"] > 0.99


def test_threshold_given_overrides_the_stored_one(classifier):
    img = photo(objects=[((300, 200, 340, 280), DARK_RED)])
    dets = Detections([[300, 200, 340, 280]], [0.9], [0])
    with Verifier(classifier, threshold=0.0) as v:
        kept = v.verify(img, dets)
    assert len(kept) == 1 and kept.data["verifier_score"][0] < 0.01


def test_no_detections_no_classifier_call(classifier):
    with Verifier(CountingBackend(classifier)) as v:
        kept = v.verify(photo(), Detections.empty())
        assert len(kept) == 0 and v.backend.calls == [] and v.batches == 0


@pytest.mark.parametrize(
    "meta, names, match",
    [
        ({}, None, "expected a threshold"),  # neither --verify-thr nor a stored threshold
        (TIGHT, {0: "person"}, "one positive class"),  # a detector-like single class
        (TIGHT, {0: "dog", 1: "person"}, "one positive class"),  # two candidates, no background
        ({**TIGHT, META_KEYS["threshold"]: "1.5"}, None, "probability in"),
    ],
)
def test_verifier_refuses_what_it_cannot_use(tmp_path, meta, names, match):
    path = red_crop_classifier(tmp_path / "v.onnx", extra_meta=meta, names=names)
    with pytest.raises(ValueError, match=match):
        Verifier(path)


def test_positive_class_named_in_the_metadata(tmp_path):
    meta = {**TIGHT, META_KEYS["positive"]: "person"}
    path = red_crop_classifier(tmp_path / "v.onnx", extra_meta=meta, names={0: "dog", 1: "person"})
    with Verifier(path) as v:
        assert v.positive == 1


def test_detector_runs_the_verifier_once_per_photo_after_the_merge(tmp_path, classifier):
    objects = [((100 + 120 * i, 100, 160 + 120 * i, 180), RED) for i in range(4)]
    objects.append(((200, 260, 280, 340), DARK_RED))
    img = photo(w=800, h=400, objects=objects)
    model = red_blob_model(tmp_path / "red.onnx")
    verifier = Verifier(CountingBackend(classifier))
    cfg = DetectConfig(tile=256, overlap=0.25)
    with Detector(str(model), config=cfg) as plain:
        before = plain.detect(img)
    with Detector(str(model), config=cfg, verifier=verifier) as det:
        timings: dict[str, float] = {}
        after = det.detect(img, timings)
        det.detect(img)
    assert verifier.backend.calls == [len(before), len(before)]  # one batch of every candidate per photo
    assert "verify" in timings
    # The oracle: a box stays when its crop (the box itself, context 1) is red enough on average.
    windows = crop_windows(before.xyxy, (800, 400), CropConfig(1.0, 8))
    rgb = img[..., ::-1].astype(np.float64) / 255
    redness = np.array(
        [
            rgb[y0:y1, x0:x1].mean((0, 1)) @ [1, 0, 0] - rgb[y0:y1, x0:x1].mean((0, 1))[1:].max()
            for x0, y0, x1, y1 in windows
        ]
    )
    np.testing.assert_array_equal(after.xyxy, before.xyxy[redness >= 0.7])
    assert np.all(after.xyxy[:, 1] < 250)  # nothing of the dark red object is left
    np.testing.assert_array_equal(after.scores, after.data["detector_score"])
    assert np.all(after.data["verifier_score"] >= 0.5)


def test_a_fixed_batch_classifier_runs_in_chunks_of_its_batch(tmp_path):
    path = red_crop_classifier(tmp_path / "v.onnx", batch=2, extra_meta=TIGHT)
    img = photo(objects=[((10 + 50 * i, 10, 40 + 50 * i, 40), RED) for i in range(3)])
    dets = Detections([[10 + 50 * i, 10, 40 + 50 * i, 40] for i in range(3)], [0.5] * 3, [0] * 3)
    with Verifier(CountingBackend(path)) as v:
        kept = v.verify(img, dets)
        assert v.backend.calls == [2, 2] and len(kept) == 3


def test_detect_command_with_verify(tmp_path, classifier):
    img = photo(objects=[((100, 100, 160, 180), RED), ((300, 200, 380, 280), DARK_RED)])
    cv2.imwrite(str(tmp_path / "p.png"), img)
    model = red_blob_model(tmp_path / "red.onnx")
    base = [sys.executable, "-m", "edgetile.runtime.cli", "detect", str(tmp_path / "p.png"), "--model"]
    base += [str(model), "--tile", "256", "--quiet"]
    r = subprocess.run(
        [*base, "--out", tmp_path / "o", "--verify", classifier], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    dets = json.loads((tmp_path / "o" / "detections.json").read_text())[0]["detections"]
    assert dets and all(d["bbox"][1] < 190 for d in dets)
    assert all(d["score"] == d["detector_score"] and d["verifier_score"] >= 0.5 for d in dets)
    r = subprocess.run(
        [*base, "--out", tmp_path / "o2", "--verify-thr", "0.5"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--verify-thr" in r.stderr


# --------------------------------------------------------------------------------------------------- training


def _annotated(tmp_path, name, img, boxes):
    from edgetile.runtime.evaluation.annotations import AnnotatedPhoto

    path = tmp_path / f"{name}.png"
    cv2.imwrite(str(path), img)
    return AnnotatedPhoto(
        path, img.shape[1], img.shape[0], np.asarray(boxes, np.float32).reshape(-1, 4), [0] * len(boxes)
    )


class FixedDetector:
    """Stands in for a Detector: the same boxes on every photo."""

    def __init__(self, boxes, scores):
        self.found = Detections(boxes, scores, [0] * len(boxes))

    def detect(self, image):
        return self.found


@pytest.mark.parametrize(
    "det, want_pos, want_neg",
    [
        ([[100, 100, 140, 180]], True, False),  # the person itself
        ([[102, 104, 140, 184]], True, False),  # a looser box of the person (IoU >= 0.5)
        ([[300, 300, 340, 380]], False, True),  # far from everyone: a false positive
        ([[120, 100, 170, 180]], False, False),  # half on the person: ambiguous, neither
        ([[110, 110, 120, 120]], False, False),  # a part inside the person: neither
        ([[60, 60, 200, 240]], False, False),  # a group box holding the person: neither
    ],
)
def test_label_detections(det, want_pos, want_neg):
    pos, neg = label_detections(np.array(det, np.float32), np.array([[100, 100, 140, 180]], np.float32))
    assert (bool(pos[0]), bool(neg[0])) == (want_pos, want_neg)


def test_label_detections_on_a_photo_without_people_are_all_negatives():
    pos, neg = label_detections(np.array([[0, 0, 10, 10], [5, 5, 20, 20]]), np.zeros((0, 4)))
    assert pos.tolist() == [False, False] and neg.tolist() == [True, True]


def test_build_crops_counts_and_cuts_as_the_runtime(tmp_path):
    img = photo(
        objects=[((100, 100, 140, 180), RED), ((400, 100, 440, 180), RED), ((300, 300, 340, 340), DARK_RED)]
    )
    p = _annotated(tmp_path, "a", img, [[100, 100, 140, 180], [400, 100, 440, 180]])
    # one match of the first person, one false positive (the dark red object), one ambiguous box
    det = FixedDetector([[101, 101, 141, 181], [300, 300, 340, 340], [120, 100, 170, 180]], [0.9, 0.8, 0.7])
    opt = VerifierOptions(imgsz=32, random_negatives=3, crop=CropConfig(2.0, 16))
    counts = build_crops([p], det, tmp_path / "crops", opt)
    assert (counts.photos, counts.annotated, counts.detected_positives) == (1, 2, 1)
    assert (counts.detected_negatives, counts.random_negatives) == (1, 3)
    assert (counts.positives, counts.negatives) == (3, 4)
    assert len(list((tmp_path / "crops" / "person").glob("*.png"))) == 3
    assert len(list((tmp_path / "crops" / "background").glob("*.png"))) == 4
    # the false positive's crop is the very input the runtime gives the classifier
    (fp,) = (tmp_path / "crops" / "background").glob("*_fp_*.png")
    saved = cv2.imread(str(fp))[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    from edgetile.runtime.preprocess import BatchBuffer

    want = BatchBuffer(1, (32, 32)).fill(
        img, crop_views(np.array([[300, 300, 340, 340]]), (600, 400), (32, 32), opt.crop)
    )
    np.testing.assert_allclose(saved, want[0], atol=1e-6)


def test_random_ground_boxes_touch_nobody():
    rng = np.random.default_rng(0)
    gt = np.array([[0, 0, 40, 80], [400, 0, 440, 60], [200, 200, 260, 240]], np.float32)
    boxes = random_ground_boxes(rng, gt, (600, 400), 10)
    assert 0 < len(boxes) <= 10
    from edgetile.runtime.boxes import pairwise_overlap

    assert pairwise_overlap(boxes, gt, "ios").max() == 0


@pytest.mark.parametrize(
    "scores, max_loss, want",
    [
        (np.arange(100) / 100, 0.01, 0.01),  # 100 people: 1 may be lost, the lowest
        (np.arange(200) / 200, 0.01, 0.01),  # 200 people: 2 may be lost
        ([0.3, 0.8], 0.01, 0.3),  # 2 people: none may be lost, the lowest score stays
        (np.full(100, 0.9), 0.01, 0.9),  # ties: none lost
        ([], 0.01, 0.0),  # nobody found: keep everything
        ([0.2, 0.4, 0.6, 0.8], 0.5, 0.6),  # half may go
    ],
)
def test_choose_threshold(scores, max_loss, want):
    assert choose_threshold(np.asarray(scores, np.float32), max_loss) == pytest.approx(want)


def test_choose_threshold_never_loses_more_than_allowed():
    rng = np.random.default_rng(1)
    for n in (1, 7, 99, 100, 101, 350):
        s = rng.random(n).astype(np.float32)
        thr = choose_threshold(s, 0.01)
        assert (~keep_by_threshold(s, thr)).sum() <= int(0.01 * n)


def test_measure_counts_what_the_verifier_removed_and_lost():
    gt = np.array([[0, 0, 10, 20], [50, 50, 60, 70]], np.float32)
    boxes = np.array(
        [[0, 0, 10, 20], [50, 50, 60, 70], [100, 100, 110, 120], [200, 200, 210, 220]], np.float32
    )
    photo_scores = PhotoScores(
        boxes,
        np.array([0.9, 0.5, 0.8, 0.05], np.float32),  # the last is below the detector's threshold
        np.array([0.95, 0.4, 0.1, 0.01], np.float32),
        gt,
    )
    thr = choose_threshold(true_positive_scores([photo_scores], 0.1), 0.01)
    assert thr == pytest.approx(0.4)
    m = measure([photo_scores], 0.1, thr)
    assert m["before"] == {"tp": 2, "fp": 1, "fp_off_people": 1, "fp_on_people": 0, "gt": 2}
    assert m["after"] == {"tp": 2, "fp": 0, "fp_off_people": 0, "fp_on_people": 0, "gt": 2}
    assert (m["false_positives_removed"], m["people_lost"]) == (1, 0)
    before, after = pr_curve([photo_scores], None), pr_curve([photo_scores], thr)
    assert before["precision"][-1] == pytest.approx(0.5) and after["precision"][-1] == pytest.approx(1.0)


def test_engine_builder_reads_a_classifier_and_carries_its_settings(tmp_path):
    pytest.importorskip("onnx")
    from edgetile.export.engine import onnx_facts

    facts = onnx_facts(red_crop_classifier(tmp_path / "v.onnx", extra_meta=TIGHT))
    assert (facts.input_name, facts.batch, facts.input_hw) == ("images", None, (32, 32))
    assert facts.names == {0: "background", 1: "person"}
    assert facts.extra == TIGHT


def test_sidecar_settings_reach_the_runtime_metadata():
    from edgetile.runtime.backends.tensorrt import metadata_from_sidecar
    from edgetile.runtime.engine_meta import EngineMeta

    meta = EngineMeta(
        "10.3.0",
        "Orin",
        "8.7",
        "fp16",
        1,
        8,
        64,
        (32, 32),
        {0: "background", 1: "person"},
        "0" * 64,
        extra=TIGHT,
    )
    got = metadata_from_sidecar(EngineMeta.from_dict(json.loads(meta.to_json())))
    assert {k: got[k] for k in TIGHT} == TIGHT


@pytest.mark.slow
def test_train_verifier_end_to_end_tiny(tmp_path):
    pytest.importorskip("ultralytics")
    rng = np.random.default_rng(0)
    photos = []
    for i in range(6):
        people = [(int(x), int(y), int(x) + 24, int(y) + 40) for x, y in rng.integers(20, 500, (2, 2))]
        barrels = [(int(x), int(y), int(x) + 30, int(y) + 30) for x, y in rng.integers(20, 500, (1, 2))]
        img = photo(600, 600, [(b, RED) for b in people] + [(b, DARK_RED) for b in barrels])
        photos.append(_annotated(tmp_path, f"p{i}", img, people))
    model = red_blob_model(tmp_path / "red.onnx")
    opt = VerifierOptions(imgsz=32, epochs=1, batch=16, random_negatives=2, budget_mb=10.0)
    res = train_verifier(
        photos[:4], photos[4:], [model], tmp_path / "out", DetectConfig(tile=256, conf=0.25), options=opt
    )
    assert res.onnx.is_file() and res.files["png"].is_file()
    report = json.loads(res.files["json"].read_text())
    assert report["measured"]["people_lost_fraction"] <= 0.01
    with Verifier(res.onnx) as v:  # threshold and crops come from the ONNX
        assert v.threshold == pytest.approx(report["measured"]["threshold"]) and v.crop == opt.crop


def test_false_positives_on_people_are_told_from_those_away_from_them():
    gt = np.array([[0, 0, 20, 40]], np.float32)
    boxes = np.array([[0, 0, 20, 40], [2, 0, 22, 40], [0, 10, 20, 60], [100, 100, 120, 140]], np.float32)
    photo_scores = PhotoScores(
        boxes,
        np.array([0.9, 0.8, 0.7, 0.6], np.float32),  # the person, a duplicate, a loose box, a rock
        np.array([0.99, 0.98, 0.9, 0.05], np.float32),
        gt,
    )
    m = measure([photo_scores], 0.1, 0.5)
    assert m["before"] == {"tp": 1, "fp": 3, "fp_off_people": 1, "fp_on_people": 2, "gt": 1}
    assert m["after"] == {"tp": 1, "fp": 2, "fp_off_people": 0, "fp_on_people": 2, "gt": 1}
    assert m["false_positives_off_people_removed"] == 1


@pytest.mark.parametrize(
    "lost, found, want",
    [
        (0, 300, 0.00994),  # the rule of three: 300 people found, none lost, vouch for 1%
        (0, 44, 0.0658),  # 44 people found vouch for no better than 6.6%
        (1, 100, 0.0466),
        (5, 5, 1.0),
        (0, 0, 1.0),  # nothing found, nothing vouched for
    ],
)
def test_loss_upper_bound(lost, found, want):
    assert loss_upper_bound(lost, found) == pytest.approx(want, abs=5e-4)


def test_an_engine_largest_batch_caps_the_batch(classifier):
    img = photo(objects=[((10 + 50 * i, 10, 40 + 50 * i, 40), RED) for i in range(5)])
    dets = Detections([[10 + 50 * i, 10, 40 + 50 * i, 40] for i in range(5)], [0.5] * 5, [0] * 5)
    be = CountingBackend(classifier)
    be.max_batch = 4  # as a TensorRT engine built with --batch-max 4 says
    with Verifier(be) as v:
        assert len(v.verify(img, dets)) == 5 and be.calls == [4, 1]
        be.calls.clear()
        v.verify(img, dets[:3])
        assert be.calls == [3]


def test_the_engine_builder_plans_a_classifier_like_a_detector(tmp_path):
    pytest.importorskip("onnx")
    from edgetile.export.engine import EngineRequest, onnx_facts, plan_build

    facts = onnx_facts(red_crop_classifier(tmp_path / "v.onnx", extra_meta=TIGHT))
    plan = plan_build("10.3.0", EngineRequest(precision="fp16", batch_max=64), facts)
    assert plan.shapes[2] == (64, 3, 32, 32)


def test_eval_and_its_sweep_take_verify(tmp_path, classifier):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "classes.txt").write_text("person\n")
    img = photo(objects=[((100, 100, 160, 160), RED), ((300, 200, 360, 260), DARK_RED)])
    cv2.imwrite(str(data / "images" / "a.png"), img)
    (data / "labels" / "a.txt").write_text(f"0 {130 / 600} {130 / 400} {60 / 600} {60 / 400}\n")
    model = red_blob_model(tmp_path / "red.onnx")
    cmd = [
        sys.executable,
        "-m",
        "edgetile.runtime.cli",
        "eval",
        "--data",
        data,
        "--model",
        model,
        "--tile",
        "256",
    ]
    cmd += ["--out", tmp_path / "ev", "--verify", classifier, "--quiet", "--sweep", "--sweep-conf", "0.25"]
    cmd += ["--sweep-merge", "ios", "--sweep-merge-thr", "0.5"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "ev" / "detections.csv").read_text().splitlines()[1:]
    assert rows and all(float(row.split(",")[2]) < 190 for row in rows)  # nothing on the dark red object
    sweep = (tmp_path / "ev" / "sweep.csv").read_text().splitlines()
    tp, fp = (int(v) for v in sweep[1].split(",")[6:8])
    assert tp + fp == len(rows)  # the sweep's merge got the same second look


@pytest.mark.parametrize("option, value", [("--verify", "v.onnx"), ("--verify-thr", "0.5")])
def test_train_verifier_refuses_the_options_of_the_classifier_it_makes(tmp_path, capsys, option, value):
    from edgetile.runtime.cli import main

    code = main(["train-verifier", "--data", str(tmp_path), "--out", str(tmp_path / "o"), option, value])
    err = capsys.readouterr().err
    assert code == 2 and f"{option}: expected none here" in err, err
    assert not (tmp_path / "o").exists()
