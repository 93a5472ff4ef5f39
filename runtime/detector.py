"""Tiled detection of small objects in large images: plan -> preprocess -> backend -> decode -> merge.

detect() is two steps that may also be called apart: candidates() runs the models (plan to decode) and
merge() joins their boxes (cross-tile merge, then fusion of passes and models), so one image's
candidates can be merged by several settings without running the models again.

One Detector holds its models, backends and one reusable input batch per model; it keeps no other
state between images, so one instance can serve a daemon for days.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Backend, create_backend
from .decode import check_yolo_output, decode_yolo, to_image
from .embedder import Embedder
from .merge import MERGE_METHODS, merge_boxes, suppress_cut_boxes, wbf
from .model import ModelInfo, model_info
from .preprocess import BatchBuffer, Views, full_frame_view, tile_views
from .results import Detections
from .tiling import plan_tiles, validate_tiling
from .verifier import Verifier

TTA_MODES = ("flip",)
DEFAULT_DYNAMIC_BATCH = 8
#: DetectConfig fields that decide which boxes the models yield (tiling, thresholds, passes): candidates
#: found with one value of them cannot be merged as if found with another. batch is in neither group:
#: it changes how views are grouped into inference calls, not what is found. The merge reads the rest
#: (merge, merge_thr, fusion_iou).
CANDIDATE_FIELDS = ("tile", "overlap", "full_frame", "conf", "iou", "max_det", "tta")


@dataclass(frozen=True)
class DetectConfig:
    """How images are tiled, thresholded and merged.

    Attributes:
        tile: Window side in image pixels.
        overlap: Fraction of a window shared with its neighbour.
        full_frame: Add one downscaled pass of the whole image, for objects larger than a tile.
        batch: Views per inference call; None takes a fixed-batch model's batch, or 8 when dynamic.
        conf: Confidence threshold.
        iou: IoU threshold of the NMS inside each tile.
        max_det: Most boxes kept per tile.
        merge: Cross-tile merge: "ios" (suppress a box whose intersection over the smaller box
            exceeds merge_thr), "nms" (IoU), "nmm" (greedy merge into the union box), "wbf".
        merge_thr: Threshold of the cross-tile merge.
        tta: Test-time augmentation passes: () or ("flip",) for a horizontally mirrored pass.
        fusion_iou: IoU threshold of the Weighted Boxes Fusion that joins passes and models.
    """

    tile: int = 1024
    overlap: float = 0.2
    full_frame: bool = False
    batch: int | None = None
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    merge: str = "ios"
    merge_thr: float = 0.5
    tta: tuple[str, ...] = ()
    fusion_iou: float = 0.55

    def __post_init__(self) -> None:
        validate_tiling(self.tile, self.overlap)
        if self.batch is not None and (
            isinstance(self.batch, bool) or int(self.batch) != self.batch or self.batch < 1
        ):
            raise ValueError(f"batch: expected a positive integer, found {self.batch!r}")
        for name in ("conf", "iou", "merge_thr", "fusion_iou"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1], found {v!r}")
        if int(self.max_det) < 1:
            raise ValueError(f"max_det: expected a positive integer, found {self.max_det!r}")
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"merge: expected one of {', '.join(MERGE_METHODS)}, found {self.merge!r}")
        bad = [t for t in self.tta if t not in TTA_MODES]
        if bad:
            raise ValueError(f"tta: expected some of {', '.join(TTA_MODES)}, found {', '.join(bad)}")


@dataclass
class _Model:
    path: str
    backend: Backend
    info: ModelInfo
    buffer: BatchBuffer
    weight: float
    gpu_path: bool


@dataclass(frozen=True)
class PassCandidates:
    """The boxes of one pass (one model, plain or mirrored) over an image, before the cross-tile merge.

    Attributes:
        detections: Every view's boxes in image pixels, view after view, each view's by descending score.
        cut: (N,) bool, the box touches an interior side of its tile.
        weight: The model's ensemble weight.
    """

    detections: Detections
    cut: np.ndarray
    weight: float

    def __post_init__(self) -> None:
        cut = np.asarray(self.cut)
        if cut.shape != (len(self.detections),) or cut.dtype != bool:
            raise ValueError(
                f"cut: expected ({len(self.detections)},) bool, one per box, found {cut.shape} {cut.dtype}"
            )


@dataclass(frozen=True)
class Candidates:
    """What the models found in one image before the cross-tile merge: the input of Detector.merge.

    Attributes:
        passes: One per model and TTA pass, in the order the fusion weighs them.
        config: The settings they were found with; a merge must keep its CANDIDATE_FIELDS.
        batches: Inference calls (batches of views) the models ran for them.
    """

    passes: tuple[PassCandidates, ...]
    config: DetectConfig
    batches: int


class Detector:
    """Finds objects in large images by batched tiled inference.

    Args:
        models: One model path, or several for an ensemble fused by Weighted Boxes Fusion. A loaded
            Backend instance may stand in for a path (the Detector then owns and closes it).
        weights: Ensemble weights, one per model (default all 1).
        backend: "auto", "onnxruntime" or "tensorrt".
        config: Tiling, thresholds and merging.
        verifier: A crop classifier that gives every merged detection a second look (detect only;
            candidates and merge stay the models' part). The Detector owns and closes it.
        embedder: An appearance embedding model that gives every detection left after the merge (and
            the verifier) its ``embedding`` (detect only). The Detector owns and closes it.

    Example:
        >>> with Detector("model.onnx") as det:
        ...     found = det.detect(read_image("photo.jpg"))
    """

    def __init__(
        self,
        models: str | Path | Backend | Sequence[str | Path | Backend],
        weights: Sequence[float] | None = None,
        backend: str = "auto",
        config: DetectConfig | None = None,
        verifier: Verifier | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = config or DetectConfig()
        self.verifier = verifier
        self.embedder = embedder
        paths = [models] if isinstance(models, (str, Path, Backend)) else list(models)
        if not paths:
            raise ValueError("models: expected at least one model path, found none")
        if weights is None:
            weights = [1.0] * len(paths)
        weights = [float(w) for w in weights]
        if len(weights) != len(paths):
            raise ValueError(f"weights: expected one weight per model ({len(paths)}), found {len(weights)}")
        if any(not np.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"weights: expected positive numbers, found {weights}")
        self._models: list[_Model] = []
        try:
            for path, weight in zip(paths, weights):
                self._models.append(
                    self._load(path if isinstance(path, Backend) else str(path), backend, weight)
                )
        except BaseException:
            self.close()
            raise
        names = self._models[0].info.names
        for m in self._models[1:]:
            if m.info.names != names:
                raise ValueError(
                    f"models: expected the same classes in every model of an ensemble, found "
                    f"{names} in {self._models[0].path} and {m.info.names} in {m.path}"
                )
        self.names: dict[int, str] = names

    def _load(self, model: str | Backend, backend: str, weight: float) -> _Model:
        if isinstance(model, Backend):
            be, path = model, f"<{type(model).__name__}>"
        else:
            path = model
            be = create_backend(backend, path)
        try:
            info = model_info(be, path)
            batch = self.config.batch
            if info.batch is not None:
                if batch is not None and batch != info.batch:
                    raise ValueError(
                        f"batch: model {path} has a fixed batch of {info.batch}; expected --batch "
                        f"{info.batch} or no --batch, found {batch}"
                    )
                batch = info.batch
            elif batch is None:
                batch = DEFAULT_DYNAMIC_BATCH
            buffer = BatchBuffer(batch, info.input_hw, be.input_dtype)
            gpu_path = be.has_gpu_path
            if not gpu_path:  # the GPU path never touches the host batch
                buffer.array[:] = 0  # padding slots of a fixed-batch model hold zeros, never garbage
        except BaseException:
            be.close()
            raise
        return _Model(path, be, info, buffer, weight, gpu_path)

    @property
    def infers_on_cpu(self) -> bool:
        """True when any model's inference runs on the CPU's cores (ONNX Runtime's CPU provider)."""
        return any(m.backend.infers_on_cpu for m in self._models)

    @property
    def input_hw(self) -> tuple[int, int]:
        """Input size of the first model."""
        return self._models[0].info.input_hw

    def detect(self, image: np.ndarray, timings: dict[str, float] | None = None) -> Detections:
        """Detect objects in one image: :meth:`candidates`, then :meth:`merge` with this config.

        With a verifier, the merged detections then get its second look (:meth:`Verifier.verify`):
        those it rejects are dropped, the rest carry data "detector_score" and "verifier_score". With
        an embedder, every detection left then carries data "embedding" (:meth:`Embedder.embed`).

        Args:
            image: (H, W, 3) uint8 BGR image of any size.
            timings: When given, milliseconds per stage are added to it (slice, preprocess, infer,
                decode, merge, fuse, verify with a verifier, embed with an embedder).

        Returns:
            Detections in image pixels, by descending score.
        """
        t = timings if timings is not None else {}
        for k in ("slice", "preprocess", "infer", "decode", "merge", "fuse"):
            t.setdefault(k, 0.0)
        found = self.merge(self.candidates(image, t), timings=t)
        if self.verifier is not None:
            found = self.verifier.verify(image, found, t)
        if self.embedder is not None:
            found = self.embedder.embed(image, found, t)
        return found

    def candidates(self, image: np.ndarray, timings: dict[str, float] | None = None) -> Candidates:
        """Every model's boxes in one image, before the cross-tile merge (the models' part of detect).

        The models run here and only here: :meth:`merge` can then join the same candidates by several
        merge settings, as the sweep of ``edgetile eval`` does.

        Args:
            image: (H, W, 3) uint8 BGR image of any size.
            timings: When given, milliseconds per stage are added to it (slice, preprocess, infer,
                decode).

        Returns:
            One PassCandidates per model and TTA pass, found with this detector's config.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"image: expected an (H, W, 3) uint8 BGR array, found shape {shape} of {dtype}")
        t = timings if timings is not None else {}
        for k in ("slice", "preprocess", "infer", "decode"):
            t.setdefault(k, 0.0)
        passes: list[PassCandidates] = []
        batches = 0
        flips = (False, True) if "flip" in self.config.tta else (False,)
        for m in self._models:
            for flip in flips:
                found, ran = self._run_pass(image, m, flip, t)
                passes.append(found)
                batches += ran
        return Candidates(tuple(passes), self.config, batches)

    def merge(
        self,
        candidates: Candidates,
        config: DetectConfig | None = None,
        timings: dict[str, float] | None = None,
    ) -> Detections:
        """Join candidates across tiles, then passes and models (the rest of detect).

        Args:
            candidates: What :meth:`candidates` of this detector found in one image.
            config: Merge settings (merge, merge_thr, fusion_iou); default this detector's. Its other
                fields must be those the candidates were found with (CANDIDATE_FIELDS).
            timings: When given, milliseconds are added to it (merge, fuse).

        Returns:
            Detections in image pixels, by descending score: what detect returns with config.
        """
        cfg = self.config if config is None else config
        for name in CANDIDATE_FIELDS:
            want, found = getattr(candidates.config, name), getattr(cfg, name)
            if want != found:
                raise ValueError(
                    f"config.{name}: expected {want!r}, the value the candidates were found with (find "
                    f"candidates again for another), found {found!r}"
                )
        t = timings if timings is not None else {}
        for k in ("merge", "fuse"):
            t.setdefault(k, 0.0)
        merged: list[Detections] = []
        for p in candidates.passes:
            t0 = time.perf_counter()
            dets = suppress_cut_boxes(p.detections, p.cut, cfg.merge_thr)
            merged.append(merge_boxes(dets, cfg.merge, cfg.merge_thr))
            t["merge"] += (time.perf_counter() - t0) * 1000
        if len(merged) == 1:
            return merged[0].sorted()
        t0 = time.perf_counter()
        boxes, scores, labels = wbf(
            [p.xyxy for p in merged],
            [p.scores for p in merged],
            [p.class_ids for p in merged],
            weights=[p.weight for p in candidates.passes],
            iou_thr=cfg.fusion_iou,
            skip_box_thr=0.0,
            conf_type="avg",
        )
        fused = Detections(boxes, scores, np.asarray(labels).astype(np.int64))
        t["fuse"] += (time.perf_counter() - t0) * 1000
        return fused.sorted()

    def _run_pass(
        self, image: np.ndarray, m: _Model, flip: bool, t: dict[str, float]
    ) -> tuple[PassCandidates, int]:
        cfg = self.config
        H, W = image.shape[:2]
        t0 = time.perf_counter()
        windows = plan_tiles(W, H, cfg.tile, cfg.overlap)
        views = tile_views(windows, cfg.tile, m.info.input_hw, (W, H), flip)
        if cfg.full_frame:
            views = Views.concat([views, full_frame_view((W, H), m.info.input_hw, flip)])
        t["slice"] += (time.perf_counter() - t0) * 1000
        parts: list[Detections] = []
        cuts: list[np.ndarray] = []
        cap = m.buffer.capacity
        nc = len(m.info.names) or None
        # On the GPU path the backend preprocesses, infers and filters on the device, batches pipelined;
        # it yields per batch the output restricted to candidates above conf, (n, 4 + nc, M), which
        # decodes exactly like the full output. Its preprocessing counts as infer time.
        device_batches = m.backend.infer_views(image, views, cap, cfg.conf) if m.gpu_path else None
        batches = 0
        try:
            for start in range(0, len(views), cap):
                v = views.subset(slice(start, start + cap))
                n = len(v)
                t0 = time.perf_counter()
                if device_batches is None:
                    arr = m.buffer.fill(image, v)
                    if m.info.batch is not None:
                        arr = m.buffer.array  # fixed batch: the last partial batch runs padded
                    rows = arr.shape[0]
                    t1 = time.perf_counter()
                    out = m.backend.infer(arr)[0]
                else:
                    rows, t1 = n, t0
                    out = next(device_batches)
                batches += 1
                t2 = time.perf_counter()
                check_yolo_output(out, rows, nc)
                for i, (b, s, lab) in enumerate(decode_yolo(out, n, cfg.conf, cfg.iou, cfg.max_det)):
                    d, cut = to_image(b, s, lab, v, i)
                    parts.append(d)
                    cuts.append(cut)
                t3 = time.perf_counter()
                t["preprocess"] += (t1 - t0) * 1000
                t["infer"] += (t2 - t1) * 1000
                t["decode"] += (t3 - t2) * 1000
        finally:
            if device_batches is not None:
                device_batches.close()  # the backend finishes its queued GPU work before the next image
        t0 = time.perf_counter()
        found = PassCandidates(
            Detections.concat(parts), np.concatenate(cuts) if cuts else np.zeros(0, bool), m.weight
        )
        t["decode"] += (time.perf_counter() - t0) * 1000
        return found, batches

    def close(self) -> None:
        """Release every backend (the verifier's and the embedder's too). Safe to call twice."""
        for m in self._models:
            m.backend.close()
        if self.verifier is not None:
            self.verifier.close()
        if self.embedder is not None:
            self.embedder.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
