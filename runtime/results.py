"""The one result type that flows through the whole pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Boxes found in one image, in its pixel coordinates.

    Attributes:
        xyxy: (N, 4) float32 boxes x1, y1, x2, y2 in pixels, x2 >= x1 and y2 >= y1.
        scores: (N,) float32 confidences.
        class_ids: (N,) int64 class indices.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy)
        scores = np.asarray(self.scores)
        class_ids = np.asarray(self.class_ids)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            if xyxy.size == 0:
                xyxy = xyxy.reshape(0, 4)
            else:
                raise ValueError(f"xyxy: expected shape (N, 4), found {xyxy.shape}")
        n = xyxy.shape[0]
        if scores.shape != (n,):
            raise ValueError(
                f"scores: expected shape ({n},) to match xyxy {xyxy.shape}, found {scores.shape}"
            )
        if class_ids.shape != (n,):
            raise ValueError(
                f"class_ids: expected shape ({n},) to match xyxy {xyxy.shape}, found {class_ids.shape}"
            )
        if class_ids.size and not np.issubdtype(class_ids.dtype, np.integer):
            if not np.all(np.equal(np.mod(class_ids, 1), 0)):
                raise ValueError(f"class_ids: expected integers, found {class_ids.dtype} with fractions")
        self.xyxy = np.ascontiguousarray(xyxy, np.float32)
        self.scores = np.ascontiguousarray(scores, np.float32)
        self.class_ids = np.ascontiguousarray(class_ids, np.int64)

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All boxes of several Detections, in order."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.class_ids for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        """A subset, selected by a boolean mask, index array or slice."""
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index])

    def sorted(self) -> Detections:
        """The same detections by descending score (stable)."""
        return self[np.argsort(-self.scores, kind="stable")]

    def to_records(self, names: Mapping[int, str]) -> list[dict]:
        """JSON-ready records: bbox [x1, y1, x2, y2] in pixels, score, class_id, class_name."""
        return [
            {
                "bbox": [round(float(v), 2) for v in b],
                "score": round(float(s), 5),
                "class_id": int(c),
                "class_name": names.get(int(c), str(int(c))),
            }
            for b, s, c in zip(self.xyxy, self.scores, self.class_ids)
        ]
