"""The second look: a crop classifier that rejects person-like objects among a photo's detections.

After the merge, every detection of a photo is cut out with context around it (a square window of
``context`` times the box's longer side, at least ``min_side`` pixels, moved inside the photo), resized
to the classifier's input by the same preprocessing as the tiles (a crop is just a view), and all of
them go through the classifier in one batch, on the same Backend interface as the detector.

The rule (chosen for recall, see docs/train.md): a detection is kept when the classifier's probability
of its positive class is at least ``threshold``; a kept detection keeps the detector's score. Both
scores are recorded per box, ``data["detector_score"]`` and ``data["verifier_score"]``.

``edgetile train-verifier`` writes the threshold and the crop geometry it was trained with into the
ONNX metadata (:data:`META_KEYS`), so the runtime cuts crops exactly as they were cut for training.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from .backends import Backend, create_backend, resolve_backend_name
from .model import model_info
from .preprocess import BatchBuffer, Views
from .results import Detections

#: ONNX metadata written by train-verifier: the threshold it chose, the crop geometry, the positive class.
META_KEYS = {
    "threshold": "edgetile_verifier_threshold",
    "context": "edgetile_verifier_context",
    "min_side": "edgetile_verifier_min_side",
    "positive": "edgetile_verifier_positive",
}
#: The class name a verifier's negatives carry (Ultralytics names classes by their folders).
BACKGROUND = "background"


@dataclass(frozen=True)
class CropConfig:
    """How a detection is cut out for the classifier.

    Attributes:
        context: Side of the square crop over the box's longer side (2: as much context as box).
        min_side: Smallest crop side in photo pixels, so that tiny boxes still show their surroundings.
    """

    context: float = 2.0
    min_side: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.context, (int, float)) or not np.isfinite(self.context) or self.context < 1:
            raise ValueError(f"context: expected a number of at least 1, found {self.context!r}")
        if isinstance(self.min_side, bool) or not isinstance(self.min_side, int) or self.min_side < 1:
            raise ValueError(f"min_side: expected a positive integer, found {self.min_side!r}")


def crop_windows(xyxy: np.ndarray, image_wh: tuple[int, int], crop: CropConfig | None = None) -> np.ndarray:
    """Square windows around boxes, moved (not cut) to lie inside the photo.

    Args:
        xyxy: (N, 4) boxes in photo pixels.
        image_wh: Photo width and height.
        crop: Context factor and smallest side.

    Returns:
        (N, 4) int64 windows x0, y0, x1, y1; a window is cut only where the photo is smaller than it.
    """
    c = crop or CropConfig()
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    W, H = int(image_wh[0]), int(image_wh[1])
    side = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * c.context, c.min_side)
    side = np.ceil(side).astype(np.int64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    x0 = np.clip(np.round(cx - side / 2).astype(np.int64), 0, np.maximum(W - side, 0))
    y0 = np.clip(np.round(cy - side / 2).astype(np.int64), 0, np.maximum(H - side, 0))
    x1 = np.minimum(x0 + side, W)
    y1 = np.minimum(y0 + side, H)
    return np.stack([x0, y0, x1, y1], axis=1)


def crop_views(
    xyxy: np.ndarray, image_wh: tuple[int, int], input_hw: tuple[int, int], crop: CropConfig | None = None
) -> Views:
    """Views of the crops around boxes: each square window resized to the classifier's input.

    A window cut by a photo smaller than the crop keeps the scale of its full side and pads the rest,
    as a tile at the photo's edge does.
    """
    c = crop or CropConfig()
    w = crop_windows(xyxy, image_wh, c)
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    n = len(w)
    side = np.ceil(np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * c.context, c.min_side))
    ih, iw = input_hw
    scales = np.stack([iw / side, ih / side], axis=1) if n else np.zeros((0, 2))
    cw = np.clip(np.round((w[:, 2] - w[:, 0]) * scales[:, 0]).astype(np.int64), 1, iw)
    ch = np.clip(np.round((w[:, 3] - w[:, 1]) * scales[:, 1]).astype(np.int64), 1, ih)
    return Views(w, scales, np.stack([cw, ch], axis=1), np.zeros(n, bool), np.zeros((n, 4), bool))


def _meta_value(meta: dict[str, str], key: str, path: str) -> object | None:
    name = META_KEYS[key]
    if name not in meta:
        return None
    try:
        return ast.literal_eval(meta[name])
    except (ValueError, SyntaxError):
        if key == "positive":
            return meta[name]
        raise ValueError(f"verifier {path}: metadata {name!r} is not readable: {meta[name]!r}") from None


def keep_by_threshold(verifier_scores: np.ndarray, threshold: float) -> np.ndarray:
    """The rule: (N,) bool, True where the positive class's probability is at least the threshold."""
    return np.asarray(verifier_scores, np.float32) >= np.float32(threshold)


class CropModel:
    """A model run on the crops of a photo's boxes, all of them in one batch: the base of the verifier
    and the embedder (opening the model, the crop geometry, the batch buffer, the model calls).

    Subclasses name themselves in ``kind``, check the model in ``_setup`` and set ``self.crop`` there
    (from the argument, else ``stored_crop`` of what the model stores).

    Attributes:
        batches: Model calls made so far: one per photo with boxes, unless a fixed batch or an
            engine's largest batch is smaller than its boxes.
    """

    kind = "crop model"
    crop: CropConfig  # set by the subclass's _setup

    def __init__(self, model: str | Path | Backend, backend: str = "auto", **setup: object) -> None:
        if isinstance(model, Backend):
            be, path = model, f"<{type(model).__name__}>"
        else:
            path = str(model)
            if not Path(path).is_file():
                raise FileNotFoundError(f"{self.kind}: file not found: {path}")
            # The output is one row per crop: the detector's GPU path (filtering YOLO candidates on the
            # device) does not apply, so TensorRT runs it on host batches.
            options = {"gpu_preprocess": False} if resolve_backend_name(backend, path) == "tensorrt" else {}
            be = create_backend(backend, path, **options)
        self.backend = be
        self.path = path
        self.batches = 0
        try:
            info = model_info(be, path)
            self.input_hw = info.input_hw
            self.fixed_batch = info.batch
            self._setup(info, **setup)
            start = self.fixed_batch or min(8, be.max_batch or 8)
            self._buffer = BatchBuffer(start, self.input_hw, be.input_dtype)
            self._buffer.array[:] = 0  # padding slots of a fixed batch hold zeros, never garbage
        except BaseException:
            be.close()
            raise

    def _setup(self, info, **setup: object) -> None:
        raise NotImplementedError

    @staticmethod
    def stored_crop(context: object, min_side: object, default: CropConfig) -> CropConfig:
        """The crop geometry a model stores (either value may be missing: the default's then)."""
        return CropConfig(
            float(context) if context is not None else default.context,  # type: ignore[arg-type]
            int(min_side) if min_side is not None else default.min_side,  # type: ignore[call-overload]
        )

    def _buffer_for(self, n: int) -> BatchBuffer:
        limit = self.backend.max_batch
        if (
            self.fixed_batch is None
            and n > self._buffer.capacity
            and (limit is None or self._buffer.capacity < limit)
        ):
            # Grown in powers of two so that a photo with a few more boxes reallocates rarely; an
            # engine's largest batch caps it (more boxes then run in batches of that size).
            cap = 1 << (n - 1).bit_length()
            if limit is not None:
                cap = min(cap, int(limit))
            self._buffer = BatchBuffer(cap, self.input_hw, self.backend.input_dtype)
        return self._buffer

    def _calls(self, image: np.ndarray, boxes: np.ndarray) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(first box, boxes in the call, rows given to the model, its first output) per model call."""
        views = crop_views(boxes, (image.shape[1], image.shape[0]), self.input_hw, self.crop)
        buf = self._buffer_for(len(boxes))
        for start in range(0, len(boxes), buf.capacity):
            v = views.subset(slice(start, start + buf.capacity))
            arr = buf.fill(image, v)
            if self.fixed_batch is not None:
                arr = buf.array
            output = np.asarray(self.backend.infer(arr)[0])
            self.batches += 1
            yield start, len(v), arr.shape[0], output

    def close(self) -> None:
        """Release the backend. Safe to call twice."""
        self.backend.close()

    def __enter__(self: _Model) -> _Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_Model = TypeVar("_Model", bound=CropModel)


class Verifier(CropModel):
    """A crop classifier that confirms or rejects a photo's detections, all of them in one batch.

    Args:
        model: The classifier (.onnx or a TensorRT engine), or a loaded Backend (the Verifier owns it).
        backend: "auto", "onnxruntime" or "tensorrt".
        threshold: Keep a detection when its positive-class probability is at least this; default the
            threshold train-verifier stored in the model.
        crop: Crop geometry; default the one stored in the model (as it was trained), else CropConfig().

    Attributes:
        positive: Index of the class that confirms a detection (the one not named "background").
        batches: Classifier calls made so far: one per photo with detections, unless a fixed batch or
            an engine's largest batch is smaller than its detections.
    """

    kind = "verifier"

    def __init__(
        self,
        model: str | Path | Backend,
        backend: str = "auto",
        threshold: float | None = None,
        crop: CropConfig | None = None,
    ) -> None:
        super().__init__(model, backend, threshold=threshold, crop=crop)

    def _setup(self, info, threshold: float | None = None, crop: CropConfig | None = None) -> None:  # type: ignore[override]
        meta = self.backend.metadata
        self.names = info.names
        positive = _meta_value(meta, "positive", self.path)
        if positive is not None:
            found = [k for k, v in info.names.items() if v == str(positive)]
        else:
            found = [k for k, v in info.names.items() if v != BACKGROUND]
        if len(info.names) < 2 or len(found) != 1:
            raise ValueError(
                f"verifier {self.path}: expected a classifier of '{BACKGROUND}' and one positive class, "
                f"found classes {info.names}"
            )
        self.positive = found[0]
        if threshold is None:
            stored = _meta_value(meta, "threshold", self.path)
            if stored is None:
                raise ValueError(
                    f"verifier {self.path}: expected a threshold (--verify-thr, or one stored by "
                    f"train-verifier as {META_KEYS['threshold']!r}), found neither"
                )
            threshold = stored  # type: ignore[assignment]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold: expected a probability in [0, 1], found {threshold!r}")
        self.threshold = float(threshold)
        if crop is None:
            crop = self.stored_crop(
                _meta_value(meta, "context", self.path),
                _meta_value(meta, "min_side", self.path),
                CropConfig(),
            )
        self.crop = crop

    def scores(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """The positive class's probability of every box's crop.

        Args:
            image: (H, W, 3) uint8 BGR photo.
            xyxy: (N, 4) boxes in its pixels.

        Returns:
            (N,) float32 probabilities.
        """
        boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
        n = len(boxes)
        if n == 0:
            return np.zeros(0, np.float32)
        out = np.empty(n, np.float32)
        for start, count, rows, probs in self._calls(image, boxes):
            if probs.ndim != 2 or probs.shape[0] != rows or probs.shape[1] != len(self.names):
                raise ValueError(
                    f"verifier {self.path}: expected an output of shape ({rows}, {len(self.names)}) "
                    f"(one probability per class), found {probs.shape}"
                )
            out[start : start + count] = probs[:count, self.positive]
        return out

    def verify(
        self, image: np.ndarray, detections: Detections, timings: dict[str, float] | None = None
    ) -> Detections:
        """Keep the detections the classifier confirms; record both scores.

        Args:
            image: (H, W, 3) uint8 BGR photo the detections were found in.
            detections: The merged detections.
            timings: When given, milliseconds are added to it under "verify".

        Returns:
            The kept detections in their order, scores unchanged, with data "detector_score" and
            "verifier_score" (float32).
        """
        t0 = time.perf_counter()
        probs = self.scores(image, detections.xyxy)
        data = dict(detections.data)
        data["detector_score"] = detections.scores.copy()
        data["verifier_score"] = probs
        scored = Detections(detections.xyxy, detections.scores, detections.class_ids, data)
        kept = scored[keep_by_threshold(probs, self.threshold)]
        if timings is not None:
            timings["verify"] = timings.get("verify", 0.0) + (time.perf_counter() - t0) * 1000
        return kept
