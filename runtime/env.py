"""What `edgetile env` reports: library versions and which backends can run here."""

from __future__ import annotations

import importlib
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

DEMO_MODEL_CARD = Path(__file__).resolve().parent / "data" / "demo_model_card.md"


def _version(module: str, dist: str | None = None) -> str:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return "not installed"
    except Exception as exc:  # a broken install (missing .so, wrong CUDA) is worth reporting, not hiding
        return f"installed but fails to import: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    v = getattr(mod, "__version__", None) or getattr(mod, "VERSION_TEXT", None)
    if v is None and dist:
        try:
            v = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v = "unknown version"
    return str(v)


def _cuda_version() -> str:
    found = []
    try:
        import pycuda.driver as drv

        drv.init()
        major, minor = divmod(drv.get_driver_version() // 10, 100)
        found.append(f"driver API {major}.{minor}, {drv.Device.count()} device(s)")
    except ImportError:
        pass
    except Exception as exc:  # no driver or no GPU: say so
        found.append(
            f"pycuda cannot reach a GPU: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"release ([\d.]+)", out)
        found.append(f"nvcc {m.group(1) if m else '?'} ({nvcc})")
    return "; ".join(found) if found else "not found"


def environment_report() -> str:
    """A plain-text report, one `name: value` line each."""
    from . import __version__, merge
    from .backends import BACKENDS, backend_class

    rows = [
        ("edgetile", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("numpy", _version("numpy")),
        ("opencv", _version("cv2")),
        ("onnxruntime", _version("onnxruntime")),
        ("tensorrt", _version("tensorrt")),
        ("pycuda", _version("pycuda", "pycuda")),
        ("cuda", _cuda_version()),
        ("merge", f"{merge.BACKEND} implementation"),
        (
            "demo model card",
            str(DEMO_MODEL_CARD) if DEMO_MODEL_CARD.is_file() else "missing from this install",
        ),
    ]
    for name in BACKENDS:
        try:
            ok, why = backend_class(name).available()
        except ImportError as exc:
            ok, why = False, str(exc)
        rows.append((f"backend {name}", ("usable: " if ok else "not usable: ") + why))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def demo_model_card() -> str:
    """The bundled demo model's card (how it was trained, how well, what it is not), or a line saying it is missing."""
    if not DEMO_MODEL_CARD.is_file():
        return f"the demo model's card is missing from this install: {DEMO_MODEL_CARD}"
    return DEMO_MODEL_CARD.read_text(encoding="utf-8")
