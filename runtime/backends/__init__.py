"""Inference backends: one small class per library, each running a batch of named arrays.

Backends are looked up by name and imported only when used, so that importing edgetile.runtime
never loads onnxruntime, tensorrt or pycuda. A detector chooses its backend per instance.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..preprocess import Views

# name -> "module:Class"; read-only, so no caller can change another caller's choice.
BACKENDS = MappingProxyType(
    {
        "onnxruntime": "edgetile.runtime.backends.onnxruntime:OnnxRuntimeBackend",
        "tensorrt": "edgetile.runtime.backends.tensorrt:TensorRTBackend",
    }
)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class BackendUnavailable(RuntimeError):
    """The backend's library (onnxruntime, tensorrt, pycuda) is not installed or not usable here."""


class Backend(ABC):
    """Runs a model on batches of preprocessed tiles, and optionally on an image's views (the GPU path).

    Two ways in, and the Detector chooses by :attr:`has_gpu_path`:

    * :meth:`infer` (every backend): the Detector preprocesses views into a host batch and gets the
      full model output back.
    * :meth:`infer_views` (the GPU path, only where :attr:`has_gpu_path` is True): the backend is given
      the image and its views, preprocesses, infers and drops candidates at or below the confidence
      threshold itself (on the device, for TensorRT), and yields per batch only what is left.

    Attributes:
        input_name: Name of the image input tensor.
        input_shape: (B, 3, H, W); B is None when the batch axis is dynamic.
        input_dtype: NumPy dtype the input wants (float32 or float16).
        output_names: Names of the outputs, in the order infer returns them.
        metadata: String metadata stored with the model (Ultralytics writes names, imgsz, stride).
        infers_on_cpu: True when inference keeps the CPU's cores busy; then decoding the next photo
            beside it slows both (see edgetile.runtime.readahead), so detect does not read ahead.
        max_batch: Largest batch the model accepts (a TensorRT engine's profile), or None for no limit.
    """

    name: ClassVar[str] = ""
    infers_on_cpu: bool = True  # the safe guess for a backend that does not say
    max_batch: int | None = None
    input_name: str
    input_shape: tuple[int | None, int, int, int]
    input_dtype: np.dtype
    output_names: list[str]
    metadata: dict[str, str]

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(usable, a one-line reason or version) without loading any model."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch of (B, 3, H, W) input; return the outputs in output_names order."""

    @property
    def has_gpu_path(self) -> bool:
        """True when :meth:`infer_views` may be used for this instance.

        By default True exactly when the class implements infer_views; a backend whose GPU path can be
        switched off per instance (TensorRT's ``gpu_preprocess=False``) or goes away on close says so
        here. The Detector reads it once, when it loads the model.
        """
        return type(self).infer_views is not Backend.infer_views

    def infer_views(
        self, image: np.ndarray, views: Views, batch: int, conf: float
    ) -> Generator[np.ndarray, None, None]:
        """Preprocess, infer and filter every view of an image, a batch at a time (the GPU path).

        decode_yolo gives on each yielded array exactly what it gives on the full output of
        :meth:`infer` for the same views, so the Detector only chooses where the batch comes from. It
        closes the iterator when the image is done or decoding failed; a backend finishes its queued
        work then.

        Args:
            image: (H, W, 3) uint8 BGR image.
            views: Its views (tiles, full frame; flipped or not).
            batch: Views per inference (the last batch may hold fewer).
            conf: Confidence threshold; only candidates above it are yielded.

        Yields:
            Per batch of n views, (n, 4 + nc, M) in the output's dtype: each view's candidates in anchor
            order, zero-padded to the most any view has.

        Raises:
            NotImplementedError: The backend has no GPU path (the default; has_gpu_path is False).
        """
        raise NotImplementedError(
            f"infer_views: {type(self).__name__} has no GPU path (has_gpu_path is False); "
            "expected host batches through infer()"
        )

    def close(self) -> None:  # noqa: B027 - optional: backends holding nothing need not override it
        """Release the model and any device memory. Safe to call twice."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under name, importing its module now."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKENDS)}, found {name!r}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def resolve_backend_name(name: str, model_path: str | Path) -> str:
    """Pick the backend for a model: 'auto' means TensorRT for engines and ONNX Runtime for .onnx."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {sorted(BACKENDS)}, found {name!r}")
        return name
    suffix = Path(model_path).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix == ".onnx":
        return "onnxruntime"
    raise ValueError(
        f"model: expected an .onnx file or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}), found {model_path}"
    )


def create_backend(name: str, model_path: str | Path, **options: object) -> Backend:
    """Load a model with the named backend ('auto' chooses by file type)."""
    resolved = resolve_backend_name(name, model_path)
    cls = backend_class(resolved)
    ok, why = cls.available()
    if not ok:
        raise BackendUnavailable(f"backend {resolved!r} is not usable here: {why}")
    # Registered backends load from a model file, cls(model_path, **options); Backend itself leaves the
    # constructor open so that test stand-ins can take other arguments.
    load: Callable[..., Backend] = cls
    return load(model_path, **options)
