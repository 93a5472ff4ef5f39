"""Tiny real ONNX models with Ultralytics' output layout and metadata, for backend and CLI tests.

The 'red blob' model averages the input over 8x8 cells and scores each cell by how red it is, giving
one candidate per cell (centre of the cell, 16x16 box): output (B, 4 + 1, H/8 * W/8) with sigmoid
scores, exactly the layout of a YOLOv8 detection head. It runs in ONNX Runtime like any exported model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def red_blob_model(path, input_hw=(256, 256), batch=None, names=None, extra_classes=0, fail_odd_batch=False):
    """Write the model to path and return path.

    Args:
        input_hw: Fixed input height and width.
        batch: Fixed batch size, or None for a dynamic batch axis.
        names: Class names written to the metadata (default {0: 'person'}).
        extra_classes: Add constant-zero class rows, e.g. to make the output disagree with names.
        fail_odd_batch: The input goes through pairs of images first (a reshape to (B/2, 2*3*H*W) and
            back), so that ONNX Runtime fails at inference on an odd batch, such as a photo of one tile,
            and runs an even one as usual: a model that breaks on some inputs only.
    """
    h, w = input_hw
    gh, gw = h // 8, w // 8
    n = gh * gw
    ys, xs = np.mgrid[0:gh, 0:gw]
    grid = np.stack([(xs + 0.5) * 8, (ys + 0.5) * 8, np.full_like(xs, 16.0), np.full_like(xs, 16.0)])
    grid = grid.reshape(1, 4, n).astype(np.float32)
    inits = [
        numpy_helper.from_array(grid, "grid"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
        numpy_helper.from_array(np.array([3], np.int64), "three"),
        numpy_helper.from_array(np.array([0, 1, n], np.int64), "flat"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(40.0, np.float32), "gain"),
        numpy_helper.from_array(np.array(0.35, np.float32), "bias"),
    ]
    source = "images"
    nodes = []
    if fail_odd_batch:
        inits += [
            numpy_helper.from_array(np.array([-1, 2 * 3 * h * w], np.int64), "pairs_shape"),
            numpy_helper.from_array(np.array([-1, 3, h, w], np.int64), "image_shape"),
        ]
        nodes += [
            helper.make_node("Reshape", ["images", "pairs_shape"], ["pairs"]),
            helper.make_node("Relu", ["pairs"], ["pairs_kept"]),  # pixels are >= 0: unchanged
            helper.make_node("Reshape", ["pairs_kept", "image_shape"], ["images_again"]),
        ]
        source = "images_again"
    nodes += [
        helper.make_node("AveragePool", [source], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Slice", ["pooled", "zero_i", "one", "one"], ["r"]),  # channel 0 = R (RGB input)
        helper.make_node("Slice", ["pooled", "one", "three", "one"], ["gb"]),
        helper.make_node("ReduceMax", ["gb", "one"], ["gbmax"], keepdims=1),
        helper.make_node("Sub", ["r", "gbmax"], ["redness"]),
        helper.make_node("Sub", ["redness", "bias"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score4d"]),
        helper.make_node("Reshape", ["score4d", "flat"], ["score"]),  # (B, 1, N)
        helper.make_node("Mul", ["score", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "grid"], ["boxes"]),  # broadcast (1, 4, N) to (B, 4, N)
    ]
    parts = ["boxes", "score"]
    for _ in range(extra_classes):
        parts.append("zeros")
    nodes.append(helper.make_node("Concat", parts, ["output0"], axis=1))
    b = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "red_blob",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [b, 5 + extra_classes, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {
        "names": str(names if names is not None else {0: "person"}),
        "imgsz": str([h, w]),
        "stride": "32",
        "task": "detect",
        "batch": str(batch or 1),
        "description": "edgetile test model: red blobs",
    }
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def red_crop_classifier(path, input_hw=(32, 32), batch=None, extra_meta=None, names=None, bias=0.2):
    """A crop classifier in Ultralytics' classification layout: output (B, 2) softmax probabilities.

    The crop's mean redness (R minus the larger of G and B, RGB input in [0, 1]) above bias makes it a
    'person' (probability above 0.5); anything else is 'background'. Write the model to path and
    return path.

    Args:
        input_hw: Fixed input height and width.
        batch: Fixed batch size, or None for a dynamic batch axis.
        extra_meta: More metadata entries (e.g. the verifier's threshold and crop geometry).
        names: Class names (default {0: 'background', 1: 'person'}, Ultralytics' folder order).
        bias: The redness at which a crop is as likely a person as not.
    """
    h, w = input_hw
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
        numpy_helper.from_array(np.array([3], np.int64), "three"),
        numpy_helper.from_array(np.array(30.0, np.float32), "gain"),
        numpy_helper.from_array(np.array(bias, np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Slice", ["pooled", "zero_i", "one", "one"], ["r"]),
        helper.make_node("Slice", ["pooled", "one", "three", "one"], ["gb"]),
        helper.make_node("ReduceMax", ["gb", "one"], ["gbmax"], keepdims=1),
        helper.make_node("Sub", ["r", "gbmax"], ["redness"]),
        helper.make_node("Sub", ["redness", "bias"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "gain"], ["logit4d"]),
        helper.make_node("Flatten", ["logit4d"], ["logit"], axis=1),  # (B, 1)
        helper.make_node("Neg", ["logit"], ["neg"]),
        helper.make_node("Concat", ["neg", "logit"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["output0"], axis=1),
    ]
    b = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "red_crop",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [b, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {
        "names": str(names if names is not None else {0: "background", 1: "person"}),
        "imgsz": str([h, w]),
        "task": "classify",
        "batch": str(batch or 1),
        "description": "edgetile test model: red crops",
        **(extra_meta or {}),
    }
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
