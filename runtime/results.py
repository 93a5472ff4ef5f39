"""The one result type that flows through the whole pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

#: The keys every record of :meth:`Detections.to_records` has; a data key may not take one of them.
RECORD_FIELDS = ("bbox", "score", "class_id", "class_name")

DataValue = Union[np.ndarray, list]  # Union: the package still supports Python 3.8


class _Null:
    """The type of :data:`NULL`."""

    _instance: _Null | None = None

    def __new__(cls) -> _Null:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NULL"

    def __reduce__(self) -> str:
        return "NULL"


#: A data list item whose key the record has, with the value null (e.g. a ground altitude that is not
#: known), where None leaves the key out. from_records reads a record's null as NULL.
NULL = _Null()


@dataclass
class Detections:
    """Boxes found in one image, in its pixel coordinates.

    Attributes:
        xyxy: (N, 4) float32 boxes x1, y1, x2, y2 in pixels. The order of corners is not checked: a
            model may output degenerate boxes (x2 < x1), and they pass through as they came.
        scores: (N,) float32 confidences.
        class_ids: (N,) int64 class indices.
        data: Per-box values by name, each an array with N rows or a list of N items (None in a list
            means "this box has none", and to_records leaves the key out of its record; NULL writes
            the key with the value null). Subsets,
            sorting and concat keep them in step with the boxes; merges that build new boxes (nmm,
            wbf, the fusion of passes) start with none.

    Example:
        >>> d = Detections([[0, 0, 4, 8]], [0.9], [0], data={"track_id": [7]})
        >>> d.to_records({0: "person"})[0]["track_id"]
        7
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    data: dict[str, DataValue] = field(default_factory=dict)

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
        self.data = _checked_data(self.data, n)

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All boxes of several Detections, in order.

        Parts with boxes must have the same data keys; parts without boxes may have none.
        """
        if not parts:
            return cls.empty()
        filled = [p for p in parts if len(p)]
        keys = list(filled[0].data) if filled else []
        for i, p in enumerate(parts):
            if len(p) and sorted(p.data) != sorted(keys):
                raise ValueError(
                    f"parts[{i}].data: expected the keys of the first part with boxes ({sorted(keys)}), "
                    f"found {sorted(p.data)}"
                )
        data: dict[str, DataValue] = {}
        for k in keys:
            values = [p.data[k] for p in filled]
            if all(isinstance(v, np.ndarray) for v in values):
                data[k] = np.concatenate(values)
            else:
                data[k] = [item for v in values for item in _as_list(v)]
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.class_ids for p in parts]),
            data,
        )

    @classmethod
    def from_records(
        cls, records: Sequence[Mapping[str, Any]], names: Mapping[int, str] | None = None
    ) -> Detections:
        """Detections from JSON records, the inverse of :meth:`to_records`.

        Each record needs bbox [x1, y1, x2, y2] and score; class_id, or a class_name that names gives
        an index for. Every other key becomes a data list, None where a record lacks it and NULL
        where its value is null.

        Args:
            records: What to_records wrote (detections.json's "detections", the daemon's rows).
            names: Class index -> name. When given, a record's class_name must be the name of its
                class_id (as to_records writes it), and class_id may be left out.

        Returns:
            The boxes in record order. Values keep the precision the records hold (to_records rounds
            bbox to 0.01 px and score to 1e-5).
        """
        by_name = {v: k for k, v in names.items()} if names is not None else {}
        boxes, scores, class_ids = [], [], []
        extra: dict[str, list] = {}
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise ValueError(f"records[{i}]: expected a mapping, found {type(r).__name__}")
            bbox = r.get("bbox")
            if (
                not isinstance(bbox, (list, tuple, np.ndarray))
                or len(bbox) != 4
                or not all(map(_is_number, bbox))
            ):
                raise ValueError(f"records[{i}].bbox: expected [x1, y1, x2, y2] numbers, found {bbox!r}")
            if not _is_number(r.get("score")):
                raise ValueError(f"records[{i}].score: expected a number, found {r.get('score')!r}")
            if "class_id" in r:
                cid = r["class_id"]
                if not isinstance(cid, (int, np.integer)) or isinstance(cid, bool):
                    raise ValueError(f"records[{i}].class_id: expected an integer, found {cid!r}")
                cid = int(cid)
                if names is not None and "class_name" in r:
                    want = names.get(cid, str(cid))
                    if r["class_name"] != want:
                        raise ValueError(
                            f"records[{i}].class_name: expected {want!r} (class {cid} in names), found "
                            f"{r['class_name']!r}"
                        )
            elif names is not None and r.get("class_name") in by_name:
                cid = by_name[r["class_name"]]
            elif names is not None:
                raise ValueError(
                    f"records[{i}]: expected a class_id, or a class_name of {sorted(by_name)}, found "
                    f"class_name {r.get('class_name')!r}"
                )
            else:
                raise ValueError(f"records[{i}].class_id: expected an integer (no names given), found none")
            boxes.append([float(v) for v in bbox])
            scores.append(float(r["score"]))
            class_ids.append(cid)
            for k, v in r.items():
                if k not in RECORD_FIELDS:
                    extra.setdefault(k, [None] * i).append(NULL if v is None else v)
            for values in extra.values():
                if len(values) == i:  # this record lacks a key an earlier one had
                    values.append(None)
        return cls(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32),
            np.asarray(class_ids, np.int64),
            dict(extra),
        )

    def with_data(self, values: Mapping[str, DataValue]) -> Detections:
        """The same boxes with these data keys added (after the present ones) or replaced."""
        return Detections(self.xyxy, self.scores, self.class_ids, {**self.data, **values})

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: int | np.ndarray | slice | Sequence[int]) -> Detections:
        """A subset, selected by a boolean mask, index array, slice or single index; data follows."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            index = [int(index)]
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool:
                if index.shape != (len(self),):
                    raise IndexError(
                        f"index: expected a boolean mask of shape ({len(self)},), found {index.shape}"
                    )
                index = np.flatnonzero(index)
            elif index.size == 0:
                index = index.astype(np.int64)
        data: dict[str, DataValue] = {}
        for k, v in self.data.items():
            if isinstance(v, np.ndarray):
                data[k] = v[index]
            elif isinstance(index, slice):
                data[k] = v[index]
            else:
                data[k] = [v[int(i)] for i in index]
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index], data)

    def sorted(self) -> Detections:
        """The same detections by descending score (stable)."""
        return self[np.argsort(-self.scores, kind="stable")]

    def to_records(self, names: Mapping[int, str]) -> list[dict]:
        """JSON-ready records: bbox [x1, y1, x2, y2] in pixels, score, class_id, class_name, then data.

        A data value is written as JSON can hold it (NumPy values as Python numbers or lists); a None
        in a data list leaves the key out of that box's record, a NULL writes it as null.
        """
        records = [
            {
                "bbox": [round(float(v), 2) for v in b],
                "score": round(float(s), 5),
                "class_id": int(c),
                "class_name": names.get(int(c), str(int(c))),
            }
            for b, s, c in zip(self.xyxy, self.scores, self.class_ids)
        ]
        for k, values in self.data.items():
            for rec, v in zip(records, values):
                if v is NULL:
                    rec[k] = None
                elif v is not None:
                    rec[k] = v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v
        return records


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _as_list(v: DataValue) -> list:
    return list(v) if isinstance(v, np.ndarray) else v


def _checked_data(data: object, n: int) -> dict[str, DataValue]:
    """data as a new dict, each value with n entries; one line naming the key otherwise."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data: expected a mapping of names to per-box values, found {type(data).__name__}")
    out: dict[str, DataValue] = {}
    for k, v in data.items():
        if not isinstance(k, str):
            raise TypeError(f"data: expected string keys, found {k!r} ({type(k).__name__})")
        if k in RECORD_FIELDS:
            raise ValueError(
                f"data[{k!r}]: expected a name other than {', '.join(RECORD_FIELDS)} (fields of every record)"
            )
        if isinstance(v, np.ndarray):
            if v.ndim == 0:
                raise ValueError(f"data[{k!r}]: expected {n} values (one per box), found a 0-d array")
            found = v.shape[0]
        elif isinstance(v, list):
            found = len(v)
        else:
            raise TypeError(f"data[{k!r}]: expected a NumPy array or a list, found {type(v).__name__}")
        if found != n:
            raise ValueError(f"data[{k!r}]: expected {n} values (one per box), found {found}")
        out[k] = v
    return out
