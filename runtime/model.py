"""What the runtime needs to know about a model, read from the metadata Ultralytics writes."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from .backends import Backend


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model's contract.

    Attributes:
        names: Class index -> name.
        input_hw: Model input height and width in pixels.
        batch: Fixed batch size, or None when the batch axis is dynamic.
        stride: Largest stride of the network (32 for YOLOv8/11).
    """

    names: dict[int, str]
    input_hw: tuple[int, int]
    batch: int | None
    stride: int


def _literal(meta: dict[str, str], key: str, path: str) -> object:
    try:
        return ast.literal_eval(meta[key])
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"model {path}: metadata {key!r} is not readable: {meta[key]!r}") from exc


def model_info(backend: Backend, path: str) -> ModelInfo:
    """Read class names, input size and batch from the backend's model and metadata.

    A fixed input shape in the graph wins over the metadata's imgsz; a dynamic one needs imgsz.
    """
    meta = backend.metadata
    names: dict[int, str] = {}
    if "names" in meta:
        raw = _literal(meta, "names", path)
        if isinstance(raw, dict):
            names = {int(k): str(v) for k, v in raw.items()}
        elif isinstance(raw, (list, tuple)):
            names = dict(enumerate(str(v) for v in raw))
        else:
            raise ValueError(f"model {path}: metadata 'names': expected a dict or list, found {raw!r}")
    _, _, h, w = backend.input_shape
    if h <= 0 or w <= 0:
        if "imgsz" not in meta:
            raise ValueError(
                f"model {path}: the input size is dynamic and the metadata has no 'imgsz'; "
                "export with a fixed size or with Ultralytics metadata"
            )
        imgsz = _literal(meta, "imgsz", path)
        if isinstance(imgsz, int):
            h = w = imgsz
        elif isinstance(imgsz, (list, tuple)) and len(imgsz) == 2:
            h, w = (int(v) for v in imgsz)
        else:
            raise ValueError(f"model {path}: metadata 'imgsz': expected N or [H, W], found {imgsz!r}")
    stride = 32
    if "stride" in meta:
        raw_stride = _literal(meta, "stride", path)
        if isinstance(raw_stride, bool) or not (
            isinstance(raw_stride, int) or (isinstance(raw_stride, float) and raw_stride.is_integer())
        ):
            raise ValueError(f"model {path}: metadata 'stride': expected an integer, found {raw_stride!r}")
        stride = int(raw_stride)
    return ModelInfo(names, (int(h), int(w)), backend.input_shape[0], stride)
