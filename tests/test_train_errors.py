"""Error analysis (``edgetile eval --errors DIR``) on a model whose misses are known by construction.

The model (tests/onnx_models.py) finds red 8x8 cells and answers each with a 16x16 box around the
cell. The photos hold red cells annotated exactly where the model puts its box (found), red cells
left unannotated (false positives, 16 px), and blue squares annotated as people (missed whatever
their size: the model sees only red). So the errors, their sizes and their photos are known.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from edgetile.runtime.cli import main
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import load_dataset
from edgetile.runtime.evaluation.metrics import evaluate
from edgetile.train.errors import find_errors, size_bin, write_error_report
from onnx_models import red_blob_model


def _red_cell(img, j, i):
    img[8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = (0, 0, 255)  # BGR red, exactly one 8x8 cell
    return [8 * j - 4, 8 * i - 4, 8 * j + 12, 8 * i + 12]  # the model's box for that cell


# Per photo: (annotated red cells -> found), (unannotated red cells -> false positives),
# (annotated blue squares x, y, side -> missed).
PHOTOS = {
    "alpha": ([(4, 4)], [(25, 5)], [(100, 100, 12), (150, 150, 40)]),
    "beta": ([(10, 20)], [(5, 28)], [(60, 60, 20), (130, 20, 80)]),
    "gamma": ([(16, 16)], [], []),  # no errors at all
}
EXPECTED_GROUPS = {
    "size/<16": 1,
    "size/16-32": 3,
    "size/32-64": 1,
    "size/64+": 1,
    "photo/alpha": 3,
    "photo/beta": 3,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    (root / "images").mkdir()
    images, anns = [], []
    for n, (name, (found, fps, blues)) in enumerate(PHOTOS.items()):
        img = np.full((256, 256, 3), 128, np.uint8)
        boxes = [_red_cell(img, j, i) for j, i in found]
        for j, i in fps:
            _red_cell(img, j, i)
        for x, y, s in blues:
            img[y : y + s, x : x + s] = (255, 0, 0)
            boxes.append([x, y, x + s, y + s])
        cv2.imwrite(str(root / "images" / f"{name}.png"), img)
        images.append({"id": n + 1, "file_name": f"{name}.png", "width": 256, "height": 256})
        for b in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": n + 1,
                    "category_id": 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root, red_blob_model(root / "red.onnx")


@pytest.mark.parametrize(
    "side, group",
    [
        (0.0, "<16"),  # degenerate
        (15.9, "<16"),  # just under the first edge
        (16.0, "16-32"),  # an edge belongs to the group above it
        (31.9, "16-32"),
        (32.0, "32-64"),
        (64.0, "64+"),
        (400.0, "64+"),
    ],
)
def test_size_bins(side, group):
    assert size_bin(side) == group


def test_errors_of_a_model_with_known_misses(data, tmp_path):
    root, model = data
    ds = load_dataset(root / "annotations.json")
    with Detector(str(model), config=DetectConfig(tile=256, conf=0.001)) as det:
        result = evaluate(det, ds, score_thr=0.5)
    cases = find_errors(result)
    fps = sorted((c.photo.stem, tuple(round(v) for v in c.box)) for c in cases if c.kind == "fp")
    misses = sorted((c.photo.stem, round(c.side)) for c in cases if c.kind == "miss")
    assert fps == [("alpha", (196, 36, 212, 52)), ("beta", (36, 220, 52, 236))]
    assert misses == [("alpha", 12), ("alpha", 40), ("beta", 20), ("beta", 80)]
    assert all(c.score > 0.99 for c in cases if c.kind == "fp")
    assert result.tp == 3 and result.fp == 2  # the same matching as the evaluation's

    report = write_error_report(result, tmp_path / "err")
    assert report.groups == EXPECTED_GROUPS
    for group, count in EXPECTED_GROUPS.items():
        folder = tmp_path / "err" / group
        crops = sorted(p.name for p in folder.glob("*.png") if p.name != "contact_sheet.png")
        assert len(crops) == count, group
        sheet = cv2.imread(str(folder / "contact_sheet.png"))
        assert sheet is not None and sheet.shape[1] >= 112
    assert not (tmp_path / "err" / "photo" / "gamma").exists()
    rows = list(csv.DictReader(open(tmp_path / "err" / "errors.csv")))
    assert sorted(r["kind"] for r in rows) == ["fp"] * 2 + ["miss"] * 4
    assert all(
        (tmp_path / "err" / r["size_crop"]).is_file() and (tmp_path / "err" / r["photo_crop"]).is_file()
        for r in rows
    )
    # A crop shows the box with context: the 12 px miss is cut at least 48 px wide.
    small = next(r for r in rows if r["size_group"] == "<16")
    crop = cv2.imread(str(tmp_path / "err" / small["size_crop"]))
    assert crop.shape[0] >= 48 and crop.shape[1] >= 48
    summary = json.loads((tmp_path / "err" / "errors.json").read_text())
    assert (summary["false_positives"], summary["misses"]) == (2, 4)
    for plot in ("distributions.png", "error_distributions.png"):
        img = cv2.imread(str(tmp_path / "err" / plot))
        assert img is not None and img.shape[0] > 200


@pytest.mark.parametrize("thr", [0.001, 0.05, 0.5, 0.999])
def test_errors_agree_with_the_evaluation_counts_at_any_threshold(data, thr):
    root, model = data
    ds = load_dataset(root / "annotations.json")
    with Detector(str(model), config=DetectConfig(tile=256, conf=0.001)) as det:
        result = evaluate(det, ds, score_thr=0.5)
    cases = find_errors(result, score_thr=thr)
    at = result.rescore(thr)
    assert [c.kind for c in cases].count("fp") == at.fp
    assert [c.kind for c in cases].count("miss") == at.gt_boxes - at.tp


def test_eval_errors_command(data, tmp_path, capsys):
    root, model = data
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(model),
            "--data",
            str(root / "annotations.json"),
            "--tile",
            "256",
            "--score-thr",
            "0.5",
            "--out",
            str(out),
            "--errors",
            str(out / "errors"),
        ]
    )
    assert code == 0
    assert "2 false positive(s), 4 miss(es)" in capsys.readouterr().err
    assert (out / "errors" / "size" / "16-32" / "contact_sheet.png").is_file()
    assert (out / "errors" / "photo" / "beta" / "contact_sheet.png").is_file()
    assert (out / "errors" / "distributions.png").is_file()


def test_splits_of_a_voc_folder_are_plotted_each(tmp_path):
    from edgetile.train.errors import dataset_splits
    from edgetile.train.synth import SceneConfig, write_dataset

    cfg = SceneConfig(
        width=256, height=256, people=(1, 2), person_px=(16, 32), rocks=(0, 1), logs=(0, 1), bushes=(0, 1)
    )
    root = write_dataset(tmp_path / "voc", 4, seed=3, config=cfg)
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    (lists / "train.txt").write_text("\n".join(stems[:3]) + "\n")
    (lists / "test.txt").write_text(stems[3] + "\n")
    (lists / "Pedestrian_train.txt").write_text("")  # a per-class list, not a split
    splits = dataset_splits(root)
    # all.txt is the list synth writes; the per-class list is left out.
    assert {k: len(v.photos) for k, v in splits.items()} == {"all": 4, "test": 1, "train": 3}
