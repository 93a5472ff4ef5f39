"""Small real models and data for the export tests.

* ``make_tiny_pt``: an untrained Ultralytics YOLOv8n with one class, saved through Ultralytics' own
  ``Model.save`` (what ``YOLO(path)`` loads back). Untrained, its outputs barely depend on the image,
  so it tests graph structure and export mechanics, not accuracy.
* ``conv_blob_model``: a two-convolution ONNX detector of red blobs with Ultralytics' output layout
  and metadata. Its convolutions get quantized, so FP32 and INT8 accuracy can be compared for real on
  photos with red "people", and a calibration set without red makes INT8 collapse for real.
* ``write_coco``: full-size photos with red squares and a COCO JSON of their boxes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import scene_with_people


def make_tiny_pt(path: Path) -> Path:
    """An untrained one-class YOLOv8n checkpoint at `path`."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = YOLO("yolov8n.yaml")
    model.model = DetectionModel(dict(model.model.yaml, nc=1), verbose=False)
    model.model.names = {0: "person"}
    model.save(str(path))
    return path


def conv_blob_model(path: Path, input_hw=(64, 64), names=None) -> Path:
    """A red-blob detector built from convolutions: one candidate box (16x16) per 8x8 cell.

    Conv 1 (8x8, stride 8) measures the redness of each cell, R - (G + B) / 2; conv 2 (1x1) turns it
    into a logit, 40 * (redness - 0.35); a sigmoid gives the score. Boxes are the fixed cell grid.
    Output (B, 5, H/8 * W/8), Ultralytics' layout.
    """
    h, w = input_hw
    gh, gw = h // 8, w // 8
    n = gh * gw
    ys, xs = np.mgrid[0:gh, 0:gw]
    grid = np.stack([(xs + 0.5) * 8, (ys + 0.5) * 8, np.full_like(xs, 16.0), np.full_like(xs, 16.0)])
    w1 = np.zeros((1, 3, 8, 8), np.float32)
    w1[0, 0], w1[0, 1], w1[0, 2] = 1 / 64, -0.5 / 64, -0.5 / 64
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.array([[[[40.0]]]], np.float32), "w2"),
        numpy_helper.from_array(np.array([-14.0], np.float32), "b2"),
        numpy_helper.from_array(grid.reshape(1, 4, n).astype(np.float32), "grid"),
        numpy_helper.from_array(np.array([0, 1, n], np.int64), "flat"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["images", "w1"], ["redness"], name="cell_redness", strides=[8, 8], kernel_shape=[8, 8]
        ),
        helper.make_node("Conv", ["redness", "w2", "b2"], ["logit"], name="score_conv", kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["logit"], ["score4d"], name="score_sigmoid"),
        helper.make_node("Reshape", ["score4d", "flat"], ["score"], name="score_flat"),
        helper.make_node("Mul", ["score", "zero"], ["zeros"], name="zeros"),
        helper.make_node("Add", ["zeros", "grid"], ["boxes"], name="boxes"),
        helper.make_node("Concat", ["boxes", "score"], ["output0"], name="head_concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_blob",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 5, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"names": str(names or {0: "person"}), "imgsz": str([h, w]), "stride": "32", "task": "detect"}
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def red_square_boxes(rng: np.random.Generator, width: int, height: int, count: int, size=(24, 40)) -> list:
    """Non-overlapping square boxes x1, y1, x2, y2 inside the image."""
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < count:
        s = int(rng.integers(size[0], size[1] + 1))
        x, y = int(rng.integers(4, width - s - 4)), int(rng.integers(4, height - s - 4))
        b = (x, y, x + s, y + s)
        if all(b[2] + 8 < o[0] or o[2] + 8 < b[0] or b[3] + 8 < o[1] or o[3] + 8 < b[1] for o in boxes):
            boxes.append(b)
    return boxes


def write_photos(folder: Path, count: int, seed: int, size=(256, 256), people=(3, 5), red=True) -> list:
    """PNG photos with red squares (or, with red=False, none); returns [(path, boxes)]."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        boxes = (
            red_square_boxes(rng, size[0], size[1], int(rng.integers(people[0], people[1] + 1)))
            if red
            else []
        )
        img = scene_with_people(size[0], size[1], boxes, seed=seed * 1000 + i)
        p = folder / f"photo_{i:03d}.png"
        cv2.imwrite(str(p), img)
        out.append((p, boxes))
    return out


def write_coco(folder: Path, count: int, seed: int, size=(256, 256)) -> Path:
    """Photos with red squares in folder/images and folder/annotations.json (COCO)."""
    photos = write_photos(folder / "images", count, seed, size)
    images, anns = [], []
    for i, (p, boxes) in enumerate(photos):
        images.append({"id": i + 1, "file_name": p.name, "width": size[0], "height": size[1]})
        for x1, y1, x2, y2 in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    path = folder / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]})
    )
    return path
