"""The whole training chain, small, on the CPU, as a user runs it: scenes -> tiles -> folds -> a one-epoch
training -> ONNX -> hard negatives -> full-photo evaluation; and the weight budget's refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.train.budget import BudgetError, check_budget_before_training, estimate_sizes
from edgetile.train.synth import SceneConfig, write_dataset
from edgetile.train.tiles import read_manifest

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
SMALL = SceneConfig(
    width=512, height=384, people=(2, 4), person_px=(16, 48), rocks=(1, 3), logs=(1, 2), bushes=(1, 4)
)
TINY_TRAIN = [
    "--model",
    "yolov8n.yaml",
    "--imgsz",
    64,
    "--epochs",
    1,
    "--batch",
    4,
    "--workers",
    0,
    "--device",
    "cpu",
    "--set",
    "plots=false",
    "amp=false",
]


def run(*args, cwd=None):
    env = {**os.environ, "YOLO_OFFLINE": "1"}  # no weights or fonts can be downloaded here
    return subprocess.run(
        [*EDGETILE, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    photos = write_dataset(root / "photos", 8, seed=21, config=SMALL)
    tiles = run(
        "dataset", "tiles", photos, "--out", root / "tiles", "--tile", 256, "--folds", 3, "--negatives", 3
    )
    train = run(
        "train",
        "--data",
        root / "tiles" / "data.yaml",
        "--fold",
        1,
        *TINY_TRAIN,
        "--project",
        root / "runs",
        "--name",
        "t",
    )
    return root, tiles, train


@pytest.mark.slow
def test_tiles_and_folds(chain):
    root, tiles, _ = chain
    assert tiles.returncode == 0, tiles.stderr
    assert all((root / "tiles" / "folds" / f"fold{k}.yaml").is_file() for k in range(3))


@pytest.mark.slow
def test_one_epoch_training_exports_an_onnx_the_runtime_runs_within_budget(chain):
    root, _, train = chain
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = root / "runs" / "t"
    best, onnx = run_dir / "weights" / "best.pt", run_dir / "weights" / "best.onnx"
    summary = json.loads((run_dir / "edgetile_summary.json").read_text())
    assert summary["data"].endswith(str(Path("folds") / "fold1.yaml")) and summary["fold"] == 1
    assert summary["within_budget"] and summary["budget_mb"] == 100
    mib = 1024 * 1024
    assert summary["sizes_mb"] == {
        "best.pt": best.stat().st_size / mib,
        "best.onnx": onnx.stat().st_size / mib,
    }
    # The prediction made before training is close to the real files.
    assert summary["predicted_mb"]["checkpoint"] == pytest.approx(best.stat().st_size / mib, rel=0.02)
    assert summary["predicted_mb"]["onnx"] == pytest.approx(onnx.stat().st_size / mib, rel=0.05)
    table = (run_dir / "edgetile_summary.txt").read_text()
    assert "best.pt" in table and "best.onnx" in table and "ok" in table
    with Detector(str(onnx), config=DetectConfig(tile=256, conf=0.001)) as det:
        assert det.names == {0: "person"} and det.input_hw == (64, 64)


@pytest.mark.slow
def test_hard_negatives_from_the_trained_checkpoint(chain):
    root, _, train = chain
    assert train.returncode == 0
    best = root / "runs" / "t" / "weights" / "best.pt"
    r = run(
        "dataset",
        "tiles",
        root / "photos",
        "--out",
        root / "hard",
        "--tile",
        256,
        "--negatives",
        2,
        "--hard-negatives",
        best,
        "--hard-conf",
        0.001,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    hard = [row for row in read_manifest(root / "hard" / "manifest.csv") if row["kind"] == "hard-negative"]
    assert len(hard) == 2
    assert float(hard[0]["score"]) >= float(hard[1]["score"]) >= 0  # ranked, highest first


@pytest.mark.slow
def test_full_photo_evaluation_of_the_trained_model(chain):
    root, _, train = chain
    assert train.returncode == 0
    out = root / "eval"
    r = run(
        "eval",
        "--model",
        root / "runs" / "t" / "weights" / "best.onnx",
        "--data",
        root / "photos",
        "--tile",
        256,
        "--out",
        out,
        "--sweep",
        "--sweep-conf",
        "0.01,0.05",
        "--sweep-merge",
        "ios",
        "--sweep-merge-thr",
        "0.5",
        # detections.csv then holds every box the mAPs count, for the pycocotools check below
        "--score-thr",
        "0.001",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    # The oracle: pycocotools run here on the ground truth synth wrote as COCO JSON and the boxes eval
    # wrote to detections.csv; eval read the VOC XML of the same photos.
    coco_gt = json.loads((root / "photos" / "annotations.json").read_text())
    assert m["photos"] == len(coco_gt["images"]) == 8
    assert m["gt_boxes"] == len(coco_gt["annotations"]) > 8
    assert m["map50"] == pytest.approx(coco_oracle(coco_gt, out / "detections.csv")[1], abs=1e-3)
    assert (out / "pr_curve.png").is_file() and (out / "best_detect.json").is_file()


def coco_oracle(coco_gt: dict, detections_csv: Path) -> list:
    """pycocotools' 12 summary numbers for the Lacmus CSV's boxes (class 0 is COCO category 1)."""
    import csv

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = coco_gt
    gt.createIndex()
    image_id = {im["file_name"].split("/")[-1]: im["id"] for im in coco_gt["images"]}
    with open(detections_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return [0.0] * 12
    dets = []
    for row in rows:
        x1, y1, x2, y2 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        dets.append(
            {
                "image_id": image_id[row["id"]],
                "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(row["score"]),
            }
        )
    most = max(sum(r["id"] == name for r in rows) for name in image_id)
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.params.maxDets = [1, 10, max(100, most)]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats)


@pytest.mark.slow
def test_budget_refusal_before_training_names_the_largest_model_that_fits(tmp_path, chain):
    root = chain[0]
    t0 = time.perf_counter()
    r = run(
        "train",
        "--data",
        root / "tiles" / "data.yaml",
        "--model",
        "yolov8x.yaml",
        "--export",
        "none",
        "--budget-mb",
        100,
        "--epochs",
        1,
        "--imgsz",
        64,
        "--device",
        "cpu",
        "--project",
        tmp_path / "runs",
    )
    seconds = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    line = [x for x in r.stderr.splitlines() if "refused" in x]
    assert len(line) == 1 and "over the weight budget of 100 MB" in line[0], r.stderr
    assert "the largest of its family that fits is yolov8l.yaml" in line[0]
    assert not (tmp_path / "runs").exists()  # no training started
    print(f"refused yolov8x.yaml in {seconds:.1f} s, most of it importing torch")


# Each case: model, whether the ONNX (FP32, twice the FP16 checkpoint) must fit too, the model named.
REFUSALS = [
    ("yolov8x.yaml", False, "yolov8l.yaml"),
    ("yolov8x.yaml", True, "yolov8m.yaml"),
    ("yolo11x.yaml", True, "yolo11l.yaml"),
    ("yolov8l.yaml", True, "yolov8m.yaml"),
]


@pytest.mark.parametrize("model,onnx,fits", REFUSALS)
def test_budget_refusal_names_the_largest_of_the_family(model, onnx, fits):
    with pytest.raises(BudgetError, match=f"the largest of its family that fits is {fits}"):
        check_budget_before_training(model, 1, budget_mb=100.0, onnx=onnx)
    assert check_budget_before_training(fits, 1, budget_mb=100.0, onnx=onnx).name == fits


def test_budget_estimates_and_the_case_where_nothing_fits():
    own, family = estimate_sizes("yolov8s.yaml", nc=1)
    assert own.name == "yolov8s.yaml" and [e.name for e in family] == [f"yolov8{s}.yaml" for s in "nsmlx"]
    assert [e.checkpoint_mb for e in family] == sorted(e.checkpoint_mb for e in family)
    assert 2.0 * own.params / 2**20 < own.checkpoint_mb < 2.1 * own.params / 2**20  # FP16 plus structure
    with pytest.raises(BudgetError, match="no model of its family fits"):
        check_budget_before_training("yolov8n.yaml", 1, budget_mb=1.0)
    assert check_budget_before_training("yolov8n.yaml", 1, budget_mb=7.0).scale == "n"
    with pytest.raises(BudgetError, match="best.pt and its ONNX would be"):
        check_budget_before_training("yolov8n.yaml", 1, budget_mb=7.0, onnx=True)
