"""The GPU half of the runtime: CUDA kernels for preprocessing and confidence filtering, driven by pycuda.

Layout (one file per op, a NumPy reference beside each):

* ``preprocess.cu`` / :mod:`.preprocess` - one launch writes every view of a batch into the engine's
  input (crop, cv2.INTER_LINEAR resize, BGR->RGB, /255, HWC->CHW, FP16 or FP32, padding, mirror).
* ``filter.cu`` / :mod:`.filter` - keeps the candidates above the confidence threshold (atomic counter),
  so only those cross to the host.
* :mod:`.reference` - the kernels' exact arithmetic in NumPy (no GPU needed), and the tables the
  preprocessing kernel reads.
* :mod:`.device` - the one module that holds CUDA state: the primary context, streams, events, device
  and pinned (optionally mapped) buffers, compiled kernels; every object has ``close()``.
* :mod:`.pipeline` - the pipelined batch loop (no CUDA of its own).

Importing this package loads nothing but NumPy: pycuda is imported when a device is opened.
"""

from __future__ import annotations

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
KERNEL_SOURCES = ("preprocess.cu", "filter.cu")


def kernel_source(name: str) -> str:
    """Text of one of the package's .cu files."""
    if name not in KERNEL_SOURCES:
        raise ValueError(f"name: expected one of {', '.join(KERNEL_SOURCES)}, found {name!r}")
    path = KERNEL_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source {path} is missing from this installation; reinstall edgetile")
    return path.read_text(encoding="utf-8")
