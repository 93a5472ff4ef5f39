"""edgetile.runtime: batched tiled detection of small objects in large images.

Importing this package is cheap: NumPy and OpenCV only. Backends (ONNX Runtime, TensorRT) import
their heavy libraries when they are constructed.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
