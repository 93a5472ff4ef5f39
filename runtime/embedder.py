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

from .backends import Backend
from .embedding import DIM, encode_embedding
from .engine_meta import read_engine_sidecar, sidecar_path
from .files import sha256_file
from .results import Detections
from .verifier import CropConfig, CropModel

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


class Embedder(CropModel):
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

    kind = "embedder"

    def __init__(
        self, model: str | Path | Backend, backend: str = "auto", crop: CropConfig | None = None
    ) -> None:
        super().__init__(model, backend, crop=crop)

    def _setup(self, info, crop: CropConfig | None = None) -> None:  # type: ignore[override]
        meta = self.backend.metadata
        dim = _meta_number(meta, "dim", self.path)
        if dim is None:
            raise ValueError(
                f"embedder {self.path}: expected an embedding model from 'edgetile train-embedder' (metadata "
                f"{META_KEYS['dim']!r}), found a model without it"
            )
        if dim != DIM:
            raise ValueError(f"embedder {self.path}: expected embeddings of {DIM} values, found {dim!r}")
        threshold = _meta_number(meta, "threshold", self.path)
        if threshold is not None and not -1 <= threshold <= 1:
            raise ValueError(
                f"embedder {self.path}: metadata {META_KEYS['threshold']!r}: expected a cosine similarity "
                f"in [-1, 1], found {threshold!r}"
            )
        self.threshold = float(threshold) if threshold is not None else None
        if crop is None:
            crop = self.stored_crop(
                _meta_number(meta, "context", self.path),
                _meta_number(meta, "min_side", self.path),
                DEFAULT_CROP,
            )
        self.crop = crop

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
        out = np.empty((n, DIM), np.float32)
        for start, count, rows, emb in self._calls(image, boxes):
            if emb.shape != (rows, DIM):
                raise ValueError(
                    f"embedder {self.path}: expected an output of shape ({rows}, {DIM}) (one "
                    f"embedding per crop), found {emb.shape}"
                )
            out[start : start + count] = emb[:count]
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
