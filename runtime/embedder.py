"""Appearance embeddings of a photo's detections: who looks like whom, across photos.

After the merge (and after the verifier, when one is given), every detection of a photo is cut out
as the verifier cuts its crops (:func:`~edgetile.runtime.verifier.crop_views`: a square window of
``context`` times the box's longer side, at least ``min_side`` pixels), resized to the embedding
model's input by the same preprocessing as the tiles, and all of them go through the model in one
batch, on the same Backend interface as the detector. The model gives one L2-normalised vector of
:data:`~edgetile.runtime.embedding.DIM` values per crop; each record gets it as its ``embedding``
text (:func:`~edgetile.runtime.embedding.encode_embedding`).

``edgetile train-embedder`` writes into the ONNX metadata (:data:`META_KEYS`) the vector's length,
the crop geometry it was trained with, and the cosine similarity above which two crops were most
often the same person on held-out people: the runtime reads them, so crops are cut as in training
and users of the records know what "similar" means for this model.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np

from .backends import Backend, create_backend, resolve_backend_name
from .embedding import DIM, encode_embedding
from .engine_meta import read_engine_sidecar, sidecar_path
from .files import sha256_file
from .model import model_info
from .preprocess import BatchBuffer
from .results import Detections
from .verifier import CropConfig, crop_views

#: ONNX metadata written by train-embedder: vector length, same-person threshold, crop geometry.
META_KEYS = {
    "dim": "edgetile_embedder_dim",
    "threshold": "edgetile_embedder_threshold",
    "context": "edgetile_embedder_context",
    "min_side": "edgetile_embedder_min_side",
}
#: The record field the embedder writes.
FIELD = "embedding"
#: Crops for appearance hold less ground than the verifier's: the person, a margin for loose boxes.
DEFAULT_CROP = CropConfig(context=1.25, min_side=16)


def _meta_number(meta: dict[str, str], key: str, path: str) -> float | int | None:
    name = META_KEYS[key]
    if name not in meta:
        return None
    try:
        value = ast.literal_eval(meta[name])
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"embedder {path}: metadata {name!r}: expected a number, found {meta[name]!r}")
    return value


class Embedder:
    """An appearance embedding model run on all of a photo's detections in one batch.

    Args:
        model: The model (.onnx or a TensorRT engine) from ``edgetile train-embedder``, or a loaded
            Backend (the Embedder owns it).
        backend: "auto", "onnxruntime" or "tensorrt".
        crop: Crop geometry; default the one stored in the model (as it was trained).

    Attributes:
        threshold: Cosine similarity from which two embeddings were most often the same person on the
            held-out people of its training (None when the model stores none).
        batches: Model calls made so far: one per photo with detections, unless a fixed batch or an
            engine's largest batch is smaller than its detections.
    """

    def __init__(
        self, model: str | Path | Backend, backend: str = "auto", crop: CropConfig | None = None
    ) -> None:
        if isinstance(model, Backend):
            be, path = model, f"<{type(model).__name__}>"
        else:
            path = str(model)
            if not Path(path).is_file():
                raise FileNotFoundError(f"embedder: file not found: {path}")
            # The output is (N, DIM): the detector's GPU path (filtering YOLO candidates on the device)
            # does not apply, so TensorRT runs it on host batches.
            options = {"gpu_preprocess": False} if resolve_backend_name(backend, path) == "tensorrt" else {}
            be = create_backend(backend, path, **options)
        self.backend = be
        self.path = path
        try:
            self._setup(crop)
        except BaseException:
            be.close()
            raise
        self.batches = 0

    def _setup(self, crop: CropConfig | None) -> None:
        meta = self.backend.metadata
        dim = _meta_number(meta, "dim", self.path)
        if dim is None:
            raise ValueError(
                f"embedder {self.path}: expected an embedding model from 'edgetile train-embedder' (metadata "
                f"{META_KEYS['dim']!r}), found a model without it"
            )
        if dim != DIM:
            raise ValueError(f"embedder {self.path}: expected embeddings of {DIM} values, found {dim!r}")
        info = model_info(self.backend, self.path)
        self.input_hw = info.input_hw
        self.fixed_batch = info.batch
        threshold = _meta_number(meta, "threshold", self.path)
        if threshold is not None and not -1 <= threshold <= 1:
            raise ValueError(
                f"embedder {self.path}: metadata {META_KEYS['threshold']!r}: expected a cosine similarity "
                f"in [-1, 1], found {threshold!r}"
            )
        self.threshold = float(threshold) if threshold is not None else None
        if crop is None:
            context = _meta_number(meta, "context", self.path)
            min_side = _meta_number(meta, "min_side", self.path)
            crop = CropConfig(
                float(context) if context is not None else DEFAULT_CROP.context,
                int(min_side) if min_side is not None else DEFAULT_CROP.min_side,
            )
        self.crop = crop
        start = self.fixed_batch or min(8, self.backend.max_batch or 8)
        self._buffer = BatchBuffer(start, self.input_hw, self.backend.input_dtype)
        self._buffer.array[:] = 0  # padding slots of a fixed batch hold zeros, never garbage

    def _buffer_for(self, n: int) -> BatchBuffer:
        limit = self.backend.max_batch
        if (
            self.fixed_batch is None
            and n > self._buffer.capacity
            and (limit is None or self._buffer.capacity < limit)
        ):
            # Powers of two, so a photo with a few more detections reallocates rarely; an engine's
            # largest batch caps it (more detections then run in batches of that size).
            cap = 1 << (n - 1).bit_length()
            if limit is not None:
                cap = min(cap, int(limit))
            self._buffer = BatchBuffer(cap, self.input_hw, self.backend.input_dtype)
        return self._buffer

    def vectors(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """The unit-length embedding of every box's crop.

        Args:
            image: (H, W, 3) uint8 BGR photo.
            xyxy: (N, 4) boxes in its pixels.

        Returns:
            (N, DIM) float32, each row of length 1.
        """
        boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
        n = len(boxes)
        if n == 0:
            return np.zeros((0, DIM), np.float32)
        views = crop_views(boxes, (image.shape[1], image.shape[0]), self.input_hw, self.crop)
        buf = self._buffer_for(n)
        out = np.empty((n, DIM), np.float32)
        for start in range(0, n, buf.capacity):
            v = views.subset(slice(start, start + buf.capacity))
            arr = buf.fill(image, v)
            if self.fixed_batch is not None:
                arr = buf.array
            emb = np.asarray(self.backend.infer(arr)[0], np.float32)
            self.batches += 1
            if emb.shape != (arr.shape[0], DIM):
                raise ValueError(
                    f"embedder {self.path}: expected an output of shape ({arr.shape[0]}, {DIM}) (one "
                    f"embedding per crop), found {emb.shape}"
                )
            out[start : start + len(v)] = emb[: len(v)]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError(
                f"embedder {self.path}: expected finite, non-zero embeddings, found NaN or zeros"
            )
        return out / norms

    def embed(
        self, image: np.ndarray, detections: Detections, timings: dict[str, float] | None = None
    ) -> Detections:
        """The same detections, each with its ``embedding`` text.

        Args:
            image: (H, W, 3) uint8 BGR photo the detections were found in.
            detections: The merged (and verified) detections.
            timings: When given, milliseconds are added to it under "embed".

        Returns:
            The detections in their order, with data "embedding": one base64 text per box
            (:func:`~edgetile.runtime.embedding.decode_embedding` reads it back).
        """
        t0 = time.perf_counter()
        vectors = self.vectors(image, detections.xyxy)
        found = detections.with_data({FIELD: [encode_embedding(v) for v in vectors]})
        if timings is not None:
            timings["embed"] = timings.get("embed", 0.0) + (time.perf_counter() - t0) * 1000
        return found

    def close(self) -> None:
        """Release the backend. Safe to call twice."""
        self.backend.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def announcement(embedder: Embedder | None) -> dict | None:
    """What a daemon tells a ground station about its embedding model (with each PREFIX/photos message).

    Embeddings of two models are not comparable, so the station needs to know which model made them:
    ``{"sha256": the first 16 hex digits of the model's SHA-256, "threshold": its same-person threshold
    or None}``. An engine is named by the ONNX it was built from (its sidecar's ``source_sha256``), so
    drones running engines built each on its own device from one ONNX announce one model. A model given
    as a loaded Backend is named by its description. None without an embedder.
    """
    if embedder is None:
        return None
    path = Path(embedder.path)
    if not path.is_file():
        name = embedder.path
    elif sidecar_path(path).is_file():
        name = read_engine_sidecar(path).source_sha256[:16]
    else:
        name = sha256_file(path)[:16]
    return {"sha256": name, "threshold": embedder.threshold}
