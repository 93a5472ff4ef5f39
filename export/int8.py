"""Explicit INT8: an FP32 ONNX -> a Q/DQ ONNX the way TensorRT wants it, calibrated on runtime tiles.

TensorRT builds INT8 from Q/DQ nodes only when they are symmetric (zero point 0), with per-channel
weight scales and per-tensor activation scales; TensorRT 11 builds INT8 no other way. ONNX Runtime's
static quantization writes such a graph, and runs it on the CPU, so the accuracy of the INT8 model can
be measured before any Jetson sees it.

What gets quantized: the inputs of the weighted layers (Conv, Gemm, MatMul), which is where TensorRT
places INT8 kernels and fuses the Q/DQ pairs; the biases stay float (TensorRT folds them). The head's
box-decoding tail (the DFL softmax and its fixed convolution, the anchor arithmetic, the final concat of
box pixels and class probabilities) stays float: one INT8 scale cannot hold box coordinates of hundreds
of pixels and a small object's sub-pixel offsets at once. ``exclude_head=False`` quantizes it too, so
the difference can be measured.

Calibration tiles are cut from full-size photos by the runtime's own tiling and preprocessing, so the
activation ranges are those of field inputs. INT8 on small objects is known to collapse when calibrated
on a handful of tiles: the accuracy report prints the calibration count beside the numbers and warns
when it is small.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import DEFAULT_BUDGET_MB, ExportError, check_budget, default_out
from .tiles import TilePlan, plan_runtime_tiles

METHODS = ("entropy", "minmax", "percentile")
# The weighted layers: TensorRT's INT8 kernels and Q/DQ fusions are built around them.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Fewer calibration tiles than this and the activation ranges of rare, small, high-contrast objects are
# a matter of luck; NVIDIA's and Ultralytics' guides calibrate on hundreds of images.
SMALL_CALIBRATION = 128
# Tiles per calibration inference pass: bounds the memory ONNX Runtime holds for all intermediate tensors.
CALIB_CHUNK = 8


@dataclass(frozen=True)
class Int8Config:
    """How an ONNX is quantized.

    Attributes:
        calib_count: Most calibration tiles to use.
        method: Activation range calibration: "minmax" (keeps the extremes: the rare strong activations of
            small objects survive; Ultralytics' choice for TensorRT), "entropy" (KL divergence: finer steps,
            but it clips the rare extremes, which is where small objects live; measured in docs/export.md)
            or "percentile" (clips the top 0.001 %).
        tile: Tile side in photo pixels, as the runtime's --tile.
        overlap: As the runtime's --overlap.
        exclude_head: Keep the detection head's box-decoding tail in float.
        percentile: Percentile kept by the "percentile" method.
        budget_mb: Largest acceptable file size in MiB.
    """

    calib_count: int = 512
    method: str = "minmax"
    tile: int = 1024
    overlap: float = 0.2
    exclude_head: bool = True
    percentile: float = 99.999
    budget_mb: float = DEFAULT_BUDGET_MB

    def __post_init__(self) -> None:
        if (
            isinstance(self.calib_count, bool)
            or not isinstance(self.calib_count, int)
            or self.calib_count < 1
        ):
            raise ValueError(f"calib_count: expected a positive integer, found {self.calib_count!r}")
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, found {self.method!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile: expected a number in (50, 100], found {self.percentile!r}")


@dataclass
class Int8Result:
    """What quantization produced.

    Attributes:
        path: The Q/DQ ONNX.
        calib_tiles: Tiles the ranges were calibrated on.
        calib_photos: Photos those tiles came from.
        available_tiles: Tiles the calibration photos hold in all.
        method: Calibration method.
        excluded: Names of the nodes kept in float (the head's tail).
        quantized_inputs: Tensors that received a Q/DQ pair (weights and activations).
        problems: Calibration photos that could not be read.
        size_mb: File size.
    """

    path: Path
    calib_tiles: int
    calib_photos: int
    available_tiles: int
    method: str
    excluded: list[str]
    quantized_inputs: int
    problems: list[str] = field(default_factory=list)
    size_mb: float = 0.0

    @property
    def small_calibration(self) -> bool:
        return self.calib_tiles < SMALL_CALIBRATION

    def calibration_line(self) -> str:
        line = (
            f"calibration: {self.calib_tiles} tile(s) from {self.calib_photos} photo(s) "
            f"({self.available_tiles} available), method {self.method}"
        )
        if self.small_calibration:
            line += (
                f"; WARNING: fewer than {SMALL_CALIBRATION} tiles: INT8 ranges from a handful of tiles are "
                "known to collapse small-object accuracy; calibrate on hundreds of field tiles"
            )
        return line


def _producers(graph) -> dict[str, object]:
    return {out: node for node in graph.node for out in node.output}


def head_tail_nodes(model) -> list[str]:
    """Names of the nodes of the detection head's decoding tail.

    Walking back from the graph outputs, every node is part of the tail until a weighted layer is met,
    except the DFL's fixed convolution (a Conv fed by a Softmax), which is part of the decoding. For an
    Ultralytics YOLOv8/11 head this is the per-level reshapes and concats, the split into box and class
    logits, the class sigmoid, the DFL softmax and convolution, the anchor arithmetic and the final
    concat; the learned convolutions of the head are not.

    Args:
        model: An onnx.ModelProto whose nodes all have names.
    """
    graph = model.graph
    producers = _producers(graph)
    tail: list[str] = []
    seen: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in WEIGHTED_OPS and not _fed_by_softmax(node, producers):
            continue
        tail.append(node.name)
        stack.extend(i for i in node.input if i)
    return tail


def _fed_by_softmax(node, producers) -> bool:
    src = producers.get(node.input[0]) if node.input else None
    for _ in range(3):  # through the reshapes and transposes that surround the DFL
        if src is None:
            return False
        if src.op_type == "Softmax":
            return True
        if src.op_type not in ("Reshape", "Transpose"):
            return False
        src = producers.get(src.input[0])
    return False


def _named(model) -> bool:
    """Give every unnamed node a unique name (quantization excludes nodes by name). True if any changed."""
    names = {n.name for n in model.graph.node if n.name}
    changed = False
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in names:
                name += "_"
            n.name = name
            names.add(name)
            changed = True
    return changed


def _calibration_reader(plan: TilePlan, input_name: str):
    """An ONNX Runtime calibration reader over the plan's tiles, one tile per inference.

    ONNX Runtime keeps every intermediate tensor of every sample of a collection pass in memory, so
    the tiles are fed in chunks (its ``set_range`` protocol for strided collection), never all at once.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._tiles: Iterator[np.ndarray] = iter(plan)
            self._left = plan.count
            self.fed = 0

        def __len__(self) -> int:
            return plan.count

        def set_range(self, start_index: int, end_index: int) -> None:
            if start_index != self.fed:
                raise RuntimeError(
                    f"calibration chunks must come in order: expected start {self.fed}, found {start_index}"
                )
            self._left = end_index - start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._left <= 0:
                return None
            tile = next(self._tiles, None)
            if tile is None:
                return None
            self._left -= 1
            self.fed += 1
            return {input_name: tile[None]}

    return Reader()


def _chunk(total: int) -> int:
    """The largest divisor of total that is at most CALIB_CHUNK (ONNX Runtime wants equal chunks)."""
    return max(d for d in range(1, min(CALIB_CHUNK, total) + 1) if total % d == 0)


def quantize_int8(
    onnx_path: str | Path,
    calib: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    config: Int8Config | None = None,
) -> Int8Result:
    """Quantize an FP32 ONNX to a symmetric, per-channel Q/DQ INT8 ONNX.

    Args:
        onnx_path: The FP32 ONNX (from ``export_onnx``).
        calib: Calibration photos: a folder, files or glob patterns of full-size photos.
        out: Where to write (default: beside the input, ``NAME_int8.onnx``).
        config: Calibration count and method, tiling, head exclusion, budget.

    Raises:
        ExportError: No usable calibration photo, or ONNX Runtime could not quantize the graph.
        BudgetExceeded: The result is larger than the budget (the file is kept).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgetile.runtime.backends import create_backend
    from edgetile.runtime.model import model_info

    cfg = config or Int8Config()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"model: file not found: {onnx_path}")
    out = Path(out) if out is not None else default_out(onnx_path, "_int8.onnx")
    with create_backend("onnxruntime", onnx_path) as be:
        info = model_info(be, str(onnx_path))
        input_name = be.input_name
    if info.batch not in (None, 1):
        raise ExportError(
            f"model {onnx_path}: calibration feeds one tile at a time; expected a dynamic batch or "
            f"batch 1, found a fixed batch of {info.batch}; export with --batch dynamic"
        )
    model = onnx.load(str(onnx_path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise ExportError(f"model {onnx_path}: already holds Q/DQ nodes; quantize the FP32 ONNX instead")
    sources = [calib] if isinstance(calib, (str, Path)) else list(calib)
    plan = plan_runtime_tiles(sources, cfg.calib_count, info.input_hw, cfg.tile, cfg.overlap)
    method = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.method]
    with tempfile.TemporaryDirectory(prefix="edgetile-int8-") as tmp:
        src = onnx_path
        if _named(model):
            src = Path(tmp) / "named.onnx"
            onnx.save(model, str(src))
        excluded = head_tail_nodes(model) if cfg.exclude_head else []
        reader = _calibration_reader(plan, input_name)
        extra = {
            "ActivationSymmetric": True,  # TensorRT rejects non-zero zero points
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT wants float biases and folds them into its INT8 kernels
            "DedicatedQDQPair": True,  # TensorRT cannot share one Q/DQ pair between two consumers
            # Q/DQ on the inputs of weighted layers only, not on their outputs: TensorRT fuses a Conv with
            # the activation after it, and a Q/DQ in between would split the fusion and cost accuracy.
            "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
            "CalibStridedMinMax": _chunk(plan.count),  # despite the name: chunked collection for every method
            "CalibPercentile": float(cfg.percentile),
        }
        tmp_out = out.with_name(out.name + ".partial")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            quantize_static(
                str(src),
                str(tmp_out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=False,
                calibrate_method=method,
                op_types_to_quantize=list(WEIGHTED_OPS),
                nodes_to_exclude=excluded,
                extra_options=extra,
            )
        except (ValueError, RuntimeError) as exc:
            tmp_out.unlink(missing_ok=True)
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if cfg.method == "percentile" and "bins" in why:
                why += (
                    " (a tensor is nearly constant on these tiles; --method entropy or minmax does not bin)"
                )
            if plan.problems:
                why += f" (unreadable calibration photos: {'; '.join(plan.problems[:3])})"
            raise ExportError(f"ONNX Runtime could not quantize {onnx_path}: {why}") from exc
    qmodel = onnx.load(str(tmp_out))
    _copy_metadata(
        model,
        qmodel,
        {
            "edgetile_quantization": "int8 qdq symmetric per-channel (onnxruntime quantize_static)",
            "edgetile_calibration": f"{reader.fed} tiles, {cfg.method}, tile {cfg.tile}, overlap {cfg.overlap}",
            "edgetile_float_nodes": str(len(excluded)),
        },
    )
    onnx.save(qmodel, str(tmp_out))
    tmp_out.replace(out)
    qdq = check_qdq(qmodel)
    result = Int8Result(
        out,
        reader.fed,
        sum(1 for p in plan.picks if len(p)),
        plan.available,
        cfg.method,
        excluded,
        qdq,
        list(plan.problems),
    )
    result.size_mb = check_budget(out, cfg.budget_mb)
    return result


def _copy_metadata(src, dst, extra: dict[str, str]) -> None:
    import onnx

    entries = {p.key: p.value for p in src.metadata_props}
    entries.update({p.key: p.value for p in dst.metadata_props})
    entries.update(extra)
    del dst.metadata_props[:]
    for k, v in entries.items():
        dst.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def check_qdq(model) -> int:
    """Check that a Q/DQ graph is what TensorRT accepts; return how many tensors are quantized.

    Every zero point must be 0 (symmetric) and INT8; every DequantizeLinear of a Conv weight must be
    per-channel (one scale per output channel, axis 0).

    Raises:
        ExportError: A quantization parameter TensorRT would reject.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    count = 0
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        count += n.op_type == "DequantizeLinear"
        if len(n.input) > 2 and n.input[2]:
            zp = inits.get(n.input[2])
            if zp is None:
                raise ExportError(f"{n.name}: zero point {n.input[2]!r} is not a constant")
            if zp.data_type != TensorProto.INT8:
                raise ExportError(f"{n.name}: expected an INT8 zero point, found data type {zp.data_type}")
            if np.any(numpy_helper.to_array(zp) != 0):
                raise ExportError(f"{n.name}: expected a zero point of 0 (symmetric), found non-zero")
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            users = consumers.get(n.output[0], [])
            if any(u.op_type == "Conv" and u.input[1] == n.output[0] for u in users):
                scale = numpy_helper.to_array(inits[n.input[1]])
                channels = inits[n.input[0]].dims[0]
                if scale.size != channels:
                    raise ExportError(
                        f"{n.name}: expected per-channel weight scales ({channels}), found {scale.size}"
                    )
    return count


def float_nodes_line(result: Int8Result) -> str:
    """One line naming what stayed in float."""
    if not result.excluded:
        return "head: the box-decoding tail is quantized too (--quantize-head)"
    return (
        f"head: {len(result.excluded)} box-decoding node(s) kept in float (DFL, anchor arithmetic, "
        "final concat)"
    )


@dataclass
class AccuracyReport:
    """FP32 against INT8 on the same validation photos, through the runtime.

    Attributes:
        fp32: Metrics of the FP32 model.
        int8: Metrics of the INT8 model.
        max_drop: Largest acceptable loss of mAP@0.5.
        max_recall_drop: Largest acceptable loss of recall at the operating threshold (INT8 can rank as
            well as FP32 and still score everything lower, so that the runtime's --conf finds nobody).
        calibration: The calibration line of the quantization (count, photos, method, warning).
        setting: How the runtime ran (backend, tiling).
        photos: Validation photos scored.
        boxes: Ground-truth boxes in them.
    """

    fp32: object
    int8: object
    max_drop: float
    calibration: str
    setting: str
    photos: int
    boxes: int
    max_recall_drop: float = 0.05

    @property
    def drop50(self) -> float:
        return float(self.fp32.map50 - self.int8.map50)

    @property
    def drop75(self) -> float:
        return float(self.fp32.map75 - self.int8.map75)

    @property
    def recall_drop(self) -> float:
        return float(self.fp32.recall - self.int8.recall)

    @property
    def passed(self) -> bool:
        return self.drop50 <= self.max_drop and self.recall_drop <= self.max_recall_drop

    def lines(self) -> list[str]:
        rows = [
            f"accuracy on {self.photos} validation photo(s), {self.boxes} box(es); {self.setting}",
            f"{'':8}{'mAP@0.5':>9}{'mAP@0.75':>10}{'mAP@.5:.95':>12}{'recall':>8}{'precision':>11}",
        ]
        for name, r in (("FP32", self.fp32), ("INT8", self.int8)):
            rows.append(
                f"{name:8}{r.map50:9.4f}{r.map75:10.4f}{r.map50_95:12.4f}{r.recall:8.3f}{r.precision:11.3f}"
            )
        rows.append(
            f"{'drop':8}{self.drop50:9.4f}{self.drop75:10.4f}{self.fp32.map50_95 - self.int8.map50_95:12.4f}"
        )
        rows[-1] += f"{self.recall_drop:8.3f}"
        rows.append(f"recall and precision at score {self.fp32.score_thr:g}, the runtime's --conf")
        rows.append(self.calibration)
        problems = []
        if self.drop50 > self.max_drop:
            problems.append(f"INT8 loses {self.drop50:.4f} mAP@0.5, more than --max-drop {self.max_drop:g}")
        if self.recall_drop > self.max_recall_drop:
            problems.append(
                f"INT8 loses {self.recall_drop:.3f} recall at score {self.fp32.score_thr:g}, more than "
                f"--max-recall-drop {self.max_recall_drop:g} (its scores are lower: the runtime's "
                "--conf would miss people that FP32 finds)"
            )
        if problems:
            rows.append(
                "verdict: FAIL: " + "; ".join(problems) + "; calibrate on more field tiles, try another "
                "--method, or keep FP16"
            )
        else:
            rows.append(
                f"verdict: PASS: INT8 loses {self.drop50:.4f} mAP@0.5 (--max-drop {self.max_drop:g}) and "
                f"{self.recall_drop:.3f} recall (--max-recall-drop {self.max_recall_drop:g})"
            )
        return rows


def accuracy_report(
    fp32_path: str | Path,
    int8_path: str | Path,
    val: str | Path,
    calibration: str,
    max_drop: float = 0.02,
    tile: int = 1024,
    overlap: float = 0.2,
    val_format: str = "auto",
    score_thr: float = 0.25,
    max_recall_drop: float = 0.05,
) -> AccuracyReport:
    """Score the FP32 and the INT8 model on full-size validation photos through the runtime (ONNX Runtime, CPU).

    Args:
        fp32_path: The FP32 ONNX.
        int8_path: The Q/DQ ONNX.
        val: An annotated dataset (VOC, YOLO or COCO; see edgetile.runtime.evaluation.annotations.load_dataset).
        calibration: The calibration line to print beside the numbers.
        max_drop: Largest acceptable loss of mAP@0.5.
        tile: Tile side, as the runtime will run.
        max_recall_drop: Largest acceptable loss of recall at score_thr.
        overlap: Tile overlap, as the runtime will run.
        val_format: Dataset format, or "auto".
        score_thr: Operating threshold for recall and precision (the runtime's --conf).

    Raises:
        ExportError: The validation set holds no usable photo.
    """
    from edgetile.runtime.detector import DetectConfig, Detector
    from edgetile.runtime.evaluation.annotations import load_dataset
    from edgetile.runtime.evaluation.metrics import evaluate

    dataset = load_dataset(val, format=val_format)
    for line in dataset.problems:
        print(f"edgetile: validation set: {line}", file=sys.stderr)
    if not len(dataset):
        raise ExportError(f"validation set {val}: expected annotated photos, found none usable")
    # The mAPs need the low-scoring boxes too.
    config = DetectConfig(tile=tile, overlap=overlap, conf=0.001)
    results = []
    for path in (fp32_path, int8_path):
        with Detector(str(path), backend="onnxruntime", config=config) as det:
            results.append(evaluate(det, dataset, score_thr=score_thr, progress=sys.stderr.isatty()))
    return AccuracyReport(
        results[0],
        results[1],
        max_drop,
        calibration,
        f"runtime: ONNX Runtime on the CPU, tile {tile}, overlap {overlap}",
        len(dataset),
        int(dataset.box_count),
        max_recall_drop,
    )
