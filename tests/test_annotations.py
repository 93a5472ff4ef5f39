"""Reading VOC, YOLO and COCO annotations: the same photos from each, and every bad annotation reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgetile.runtime.evaluation.annotations import load_dataset
from edgetile.runtime.evaluation.annotations import voc_xml as write_voc_xml
from edgetile.train.synth import SceneConfig, write_dataset

SMALL = SceneConfig(
    width=320, height=240, people=(1, 4), person_px=(12, 40), rocks=(1, 3), logs=(1, 2), bushes=(1, 4)
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), 4, seed=7, config=SMALL)


def test_voc_yolo_and_coco_give_the_same_photos(synth):
    voc = load_dataset(synth, "voc")
    yolo = load_dataset(synth, "yolo")
    coco = load_dataset(synth / "annotations.json")
    assert voc.format == "voc" and yolo.format == "yolo" and coco.format == "coco"
    assert load_dataset(synth).format == "voc"  # auto: the LADD layout wins
    for ds in (voc, yolo, coco):
        assert ds.problems == [] and ds.class_names == ["person"] and len(ds) == 4
    assert voc.box_count == yolo.box_count == coco.box_count >= 4
    for a, b, c in zip(voc.photos, yolo.photos, coco.photos):
        assert a.path == b.path == c.path and (a.width, a.height) == (b.width, b.height) == (320, 240)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)  # YOLO's 6 decimals
        np.testing.assert_array_equal(a.boxes, c.boxes)
        assert a.load().shape == (240, 320, 3)


def voc_xml(name, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"


def make_voc(root: Path, photos: dict[str, tuple[list, tuple[int, int] | None]]) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, (objects, real_size) in photos.items():
        if real_size is not None:
            cv2.imwrite(
                str(root / "JPEGImages" / f"{stem}.jpg"), np.zeros((real_size[1], real_size[0], 3), np.uint8)
            )
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", 200, 100, objects))
    return root


GOOD = ("person", (10, 10, 30, 50))

# Each case: one photo's VOC objects (and its real image size, None = image missing), the words the
# problem line must contain.
VOC_BAD = [
    ([GOOD, ("person", (180, 10, 201, 50))], (200, 100), "expected a box inside the 200x100 image"),
    ([GOOD, ("person", (40, 10, 30, 50))], (200, 100), "x2 < x1"),
    ([GOOD, ("person", (40, 60, 50, 50))], (200, 100), "y2 < y1"),
    ([GOOD, ("person", (-3, 10, 30, 50))], (200, 100), "expected a box inside"),
    ([GOOD, ("cow", (10, 10, 30, 50))], (200, 100), "unknown class 'cow'"),
    ([GOOD, ("person", (10, 10, "ten", 50))], (200, 100), "expected a number in <xmax>"),
    ([GOOD, ("person", (10, 10, 10, 50))], (200, 100), "positive width and height"),
    ([GOOD], None, "missing image"),
    ([GOOD], (201, 100), "expected <size> 201x100"),
]


@pytest.mark.parametrize("objects,real_size,words", VOC_BAD)
def test_each_bad_voc_annotation_is_reported_and_its_photo_left_out(tmp_path, objects, real_size, words):
    root = make_voc(tmp_path / "voc", {"bad": (objects, real_size), "good": ([GOOD], (200, 100))})
    ds = load_dataset(root, class_names=["person"])
    assert [p.photo_id for p in ds.photos] == ["good"]  # the rest of the work goes on
    assert any(words in line for line in ds.problems), ds.problems
    assert all(line.startswith("Annotations/bad.xml") for line in ds.problems)
    assert all("\n" not in line for line in ds.problems)
    np.testing.assert_array_equal(ds.photos[0].boxes, [GOOD[1]])  # nothing clipped or changed


def test_skip_box_keeps_the_photo_without_the_bad_box(tmp_path):
    root = make_voc(tmp_path / "voc", {"bad": ([GOOD, ("person", (40, 10, 30, 50))], (200, 100))})
    ds = load_dataset(root, class_names=["person"], skip="box")
    assert len(ds.photos) == 1 and len(ds.photos[0].boxes) == 1 and len(ds.problems) == 1


def test_voc_classes_are_numbered_in_order_of_appearance_when_not_given(tmp_path):
    root = make_voc(
        tmp_path / "voc", {"a": ([("Pedestrian", (1, 1, 5, 5)), ("dog", (1, 1, 9, 9))], (200, 100))}
    )
    ds = load_dataset(root)
    assert ds.class_names == ["Pedestrian", "dog"] and ds.photos[0].class_ids.tolist() == [0, 1]


@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_the_voc_writer_is_read_back_by_the_voc_reader(tmp_path, decimals):
    boxes = np.array([[10.25, 10, 30, 50.5], [0, 0, 200, 100]], np.float32)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    cv2.imwrite(str(tmp_path / "JPEGImages" / "a&b.png"), np.zeros((100, 200, 3), np.uint8))
    xml = write_voc_xml("a&b.png", 200, 100, boxes, ["person", "car<1>"], decimals=decimals)
    (tmp_path / "Annotations" / "a&b.xml").write_text(xml)
    ds = load_dataset(tmp_path)
    assert ds.problems == [] and ds.class_names == ["person", "car<1>"]
    np.testing.assert_allclose(ds.photos[0].boxes, boxes.round(decimals))
    with pytest.raises(ValueError, match="names: expected one per box"):
        write_voc_xml("a.png", 200, 100, boxes, ["person"])


def make_yolo(root: Path, labels: dict[str, str], images=None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("person\n")
    for stem in images if images is not None else labels:
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.zeros((100, 200, 3), np.uint8))
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").write_text(text)
    return root


YOLO_BAD = [
    ("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.1 0.1\n", "unknown class '3 (known: 0..0)'"),
    ("0 0.95 0.5 0.2 0.2\n", "expected a box inside the 200x100 image"),
    ("0 0.5 0.5 -0.2 0.2\n", "non-negative width and height"),
    ("0 0.5 0.5 0.2\n", "expected 'class cx cy w h'"),
    ("person 0.5 0.5 0.2 0.2\n", "expected an integer class"),
]


@pytest.mark.parametrize("text,words", YOLO_BAD)
def test_each_bad_yolo_label_is_reported(tmp_path, text, words):
    root = make_yolo(tmp_path / "y", {"bad": text, "good": "0 0.5 0.5 0.1 0.2\n"})
    ds = load_dataset(root)
    assert ds.format == "yolo" and [p.photo_id for p in ds.photos] == ["good"]
    assert any(words in line and line.startswith("labels/bad.txt") for line in ds.problems), ds.problems
    np.testing.assert_allclose(ds.photos[0].boxes, [[90, 40, 110, 60]], atol=1e-4)


def test_yolo_labels_without_an_image_and_photos_without_labels(tmp_path):
    root = make_yolo(tmp_path / "y", {"orphan": "0 0.5 0.5 0.1 0.1\n"}, images=["background"])
    ds = load_dataset(root)
    assert [p.photo_id for p in ds.photos] == ["background"] and len(ds.photos[0].boxes) == 0
    assert any("labels/orphan.txt: missing image" in line for line in ds.problems), ds.problems


def test_yolo_data_yaml_with_splits_and_names(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / f"{split}1.jpg"), np.zeros((100, 200, 3), np.uint8))
        (root / "labels" / split / f"{split}1.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: car\n  1: person\n"
    )
    ds = load_dataset(root / "data.yaml")
    assert ds.class_names == ["car", "person"] and [p.photo_id for p in ds.photos] == ["train1", "val1"]
    assert load_dataset(root / "data.yaml", subset="val").photos[0].photo_id == "val1"
    assert ds.photos[0].class_ids.tolist() == [1]


@pytest.mark.parametrize(
    "names",
    [
        # case: a YAML list
        "names: [car, person]\n",
        # case: a flow mapping, keys out of order
        "names: {1: person, 0: car}\n",
        # case: a block list with quotes
        "names:\n  - 'car'\n  - \"person\"\n",
    ],
)
def test_yolo_data_yaml_names_in_every_yaml_spelling(tmp_path, names):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text("train: images\n" + names)
    ds = load_dataset(root / "data.yaml")
    assert ds.class_names == ["car", "person"] and ds.photos[0].class_ids.tolist() == [1]


@pytest.mark.parametrize(
    "text,words",
    [
        # case: not YAML at all
        ("train: [images\nnames: {0: a", "not valid YAML at line 2"),
        # case: YAML, but a list instead of a mapping
        ("- images\n- labels\n", r"expected a mapping of path, train, val, names, found list"),
        # case: names of the wrong kind
        ("train: images\nnames: person\n", "expected 'names:' as a list or a mapping"),
        # case: no names at all
        ("train: images\n", "expected class names under 'names:'"),
        # case: no split
        ("names: [person]\n", "expected a 'train' or 'val' or 'test' entry"),
    ],
)
def test_a_bad_data_yaml_is_one_clear_error(tmp_path, text, words):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(ValueError, match=words) as info:
        load_dataset(tmp_path / "data.yaml")
    assert "\n" not in str(info.value)


COCO_BAD = [
    ({"category_id": 9}, "unknown class 'category_id 9'"),
    ({"category_id": 2}, "unknown class 'cow'"),
    ({"bbox": [50, 10, -20, 40]}, "x2 < x1"),
    ({"bbox": [190, 10, 20, 40]}, "expected a box inside the 200x100 image"),
    ({"iscrowd": 1}, "crowd region"),
    ({"bbox": [1, 2, 3]}, "expected bbox [x, y, w, h]"),
]


def make_coco(root: Path, bad_ann: dict, missing_image=False) -> Path:
    root.mkdir(parents=True)
    for n in ("good.png", "bad.png"):
        cv2.imwrite(str(root / n), np.zeros((100, 200, 3), np.uint8))
    images = [
        {"id": 1, "file_name": "good.png", "width": 200, "height": 100},
        {"id": 2, "file_name": "bad.png", "width": 200, "height": 100},
    ]
    if missing_image:
        images.append({"id": 3, "file_name": "gone.png", "width": 200, "height": 100})
    ann = {"id": 5, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 40], "iscrowd": 0, **bad_ann}
    doc = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 40], "iscrowd": 0},
            ann,
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "cow"}],
    }
    (root / "ann.json").write_text(json.dumps(doc))
    return root / "ann.json"


@pytest.mark.parametrize("bad,words", COCO_BAD)
def test_each_bad_coco_annotation_is_reported(tmp_path, bad, words):
    ds = load_dataset(make_coco(tmp_path / "c", bad), class_names=["person"])
    assert [p.photo_id for p in ds.photos] == ["good"]
    assert any(words in line and "image 2 (bad.png)" in line for line in ds.problems), ds.problems


def test_coco_missing_image_is_reported(tmp_path):
    ds = load_dataset(make_coco(tmp_path / "c", {}, missing_image=True))
    assert ds.class_names == ["person", "cow"] and len(ds.photos) == 2
    assert len(ds.problems) == 1 and "gone.png" in ds.problems[0] and "missing image" in ds.problems[0]


@pytest.mark.parametrize(
    "make,kw,words",
    [
        (lambda p: p, {}, "found nothing at"),
        (lambda p: (p.mkdir(), p)[1], {}, "found none of them"),
        (lambda p: p, {"format": "xml"}, "expected one of auto, voc, yolo, coco"),
    ],
)
def test_not_a_dataset_is_one_clear_error(tmp_path, make, kw, words):
    with pytest.raises((ValueError, FileNotFoundError), match=words):
        load_dataset(make(tmp_path / "nothing"), **kw)


def test_annotations_and_metrics_import_no_heavy_library():
    code = (
        "import sys, edgetile.runtime.evaluation.annotations, edgetile.runtime.evaluation.metrics; "
        "print(sorted(m for m in ('torch', 'ultralytics', 'onnx', 'pycocotools', 'matplotlib', 'yaml') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_device_path_never_imports_the_evaluation():
    code = (
        "import sys, edgetile.runtime.detector, edgetile.runtime.readahead; "
        "print(sorted(m for m in sys.modules if m == 'yaml' or m.startswith('edgetile.runtime.evaluation')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
