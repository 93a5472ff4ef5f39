"""Appearance embeddings in detection records: one compact, JSON-safe text per detection.

A record's ``embedding`` is the base64 text of ``DIM`` little-endian float16 values of an L2-normalised
vector (128 values: 344 characters), so it travels unchanged through ``detections.json``, the daemon's
store, MQTT and the station. Two records show the same individual when the cosine similarity of their
vectors (their dot product, the vectors being unit length) is high; what counts as high is the
embedding model's own threshold, recorded with it.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

DIM = 128


def encode_embedding(vector: np.ndarray) -> str:
    """One vector -> the record's text (normalised to unit length, stored as float16)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.size != DIM:
        raise ValueError(f"embedding: expected {DIM} values, found {v.size}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"embedding: expected a finite, non-zero vector, found norm {norm}")
    return base64.b64encode((v / norm).astype("<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    """A record's text -> its unit vector, float32 (DIM,); ValueError naming what was found otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"embedding: expected base64 text, found {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"embedding: expected base64 text, found {text[:20]!r}...") from None
    if len(raw) != 2 * DIM:
        raise ValueError(f"embedding: expected {2 * DIM} bytes ({DIM} float16), found {len(raw)}")
    v = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if not np.all(np.isfinite(v)):
        raise ValueError("embedding: expected finite values, found NaN or infinity")
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def similarity(a: str | np.ndarray, b: str | np.ndarray) -> float:
    """Cosine similarity of two embeddings (texts or vectors), in [-1, 1]."""
    va = decode_embedding(a) if isinstance(a, str) else np.asarray(a, np.float32)
    vb = decode_embedding(b) if isinstance(b, str) else np.asarray(b, np.float32)
    na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
    if na == 0.0 or nb == 0.0:
        raise ValueError("embedding: expected non-zero vectors, found a zero vector")
    return float(np.dot(va, vb) / (na * nb))
