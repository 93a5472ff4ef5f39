"""Inference backends: one small class per library, each running a batch of named arrays.

Backends are looked up by name and imported only when used, so that importing edgetile.runtime
never loads onnxruntime, tensorrt or pycuda. A detector chooses its backend per instance.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np

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
    """Runs a model on batches of preprocessed tiles.

    Attributes:
        input_name: Name of the image input tensor.
        input_shape: (B, 3, H, W); B is None when the batch axis is dynamic.
        input_dtype: NumPy dtype the input wants (float32 or float16).
        output_names: Names of the outputs, in the order infer returns them.
        metadata: String metadata stored with the model (Ultralytics writes names, imgsz, stride).
        infers_on_cpu: True when inference keeps the CPU's cores busy; then decoding the next photo
            beside it slows both (see edgetile.runtime.readahead), so detect does not read ahead.
    """

    name: ClassVar[str] = ""
    infers_on_cpu: bool = True  # the safe guess for a backend that does not say
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
    return cls(model_path, **options)
