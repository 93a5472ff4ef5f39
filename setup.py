"""Packaging for edgetile: one distribution, three import packages mapped from top-level folders.

Build switches (environment variables, printed by the build):
  EDGETILE_PUREPYTHON=1   skip the C merge extension; the NumPy reference serves instead.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "runtime" / "_version.py").read_text()).group(1)


class OptionalBuildExt(build_ext):
    """Build the C merge extension, but survive a failed compile with a clear warning.

    The runtime falls back to its NumPy reference when the extension is missing, so a machine
    without a C compiler still gets a working (slower) install.
    """

    def run(self) -> None:
        if os.environ.get("EDGETILE_PUREPYTHON", "") not in ("", "0"):
            print("edgetile: EDGETILE_PUREPYTHON is set: skipping the C merge extension", file=sys.stderr)
            return
        print("edgetile: building the C merge extension (set EDGETILE_PUREPYTHON=1 to skip)", file=sys.stderr)
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure must not break the install
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            f"WARNING: edgetile: the C merge extension failed to build ({type(exc).__name__}: {exc}); "
            "the slower NumPy merge will be used",
            file=sys.stderr,
        )


EXTRA_COMPILE_ARGS = ["-O3", "-std=c99"] if os.name != "nt" else []

ext_modules = []
if (HERE / "runtime" / "_merge.c").exists():
    ext_modules.append(
        Extension(
            "edgetile.runtime._merge",
            sources=["runtime/_merge.c"],
            # No fused multiply-add contraction: the C kernels must round exactly as their NumPy
            # reference does (aarch64 Jetsons have FMA; GCC contracts by default outside -std=c99).
            extra_compile_args=EXTRA_COMPILE_ARGS + (["-ffp-contract=off"] if os.name != "nt" else []),
        )
    )

TORCH = ["torch>=2.2", "torchvision>=0.17"]
ONNX_RUNTIME = ["onnxruntime>=1.16"]
EXPORT = (
    ONNX_RUNTIME
    + TORCH
    + [
        "ultralytics>=8.3.0",
        # Ultralytics pip-installs these at run time when missing; we declare them instead.
        "onnx>=1.14",
        "onnxslim>=0.1.82",
        "pycocotools>=2.0.7",
        # Calibration and accuracy datasets: a YOLO data.yaml is read with PyYAML.
        "pyyaml>=6.0",
        # Ultralytics patches PIL.Image.open process-wide and pip-installs pi-heif on the first image
        # Pillow cannot identify; declared here so that never happens.
        "pi-heif>=0.18",
    ]
)
TRAIN = EXPORT + [
    "pymap3d>=2.9",  # synthetic flights place people with the runtime geo module
    "iterative-stratification>=0.1.7",
    "matplotlib>=3.5",
    "pyyaml>=6.0",
    "pillow>=9.0",
    # train-embedder: metric-learning losses, miners and trainer (it needs scikit-learn, for the ROC AUC too)
    "pytorch-metric-learning>=2.5",
]
RAY = ["ray[tune]>=2.41"]  # edgetile tune --ray: the same search on Ray Tune, shared by several machines
SERVE = ["fastapi>=0.110", "uvicorn>=0.27", "python-multipart>=0.0.9", "pyyaml>=6.0"]
GEO = ["pymap3d>=2.9", "pillow>=9.0"]  # ground coordinates of detections (runtime/geo)
MQTT = ["paho-mqtt>=2.0"]  # publishing detections to a broker
MAVLINK = ["pymavlink>=2.4.37"]  # vehicle pose in, detections out to a ground station
GEO_TEST = ["geojson>=3.0", "fastkml>=1.0", "gpxpy>=1.6"]  # the geo tests' oracles for GeoJSON, KML and GPX
SERVE_TEST = ["prometheus-client>=0.17"]  # the serve tests' oracle for the metrics text format
BROWSER_TEST = ["selenium>=4.10"]  # the review page's tests drive Debian's Chromium (make test installs it)
DEV = sorted(
    set(
        TRAIN
        + RAY
        + GEO
        + MQTT
        + MAVLINK
        + GEO_TEST
        + SERVE
        + SERVE_TEST
        + BROWSER_TEST
        + [
            "pytest>=7.4",
            # Runs the tests in a random order (seed printed in the header): no test may lean on another.
            "pytest-randomly>=3.12",
            "hypothesis>=6.80",
            "ensemble-boxes>=1.0.9",
            "sahi>=0.11.18",
            "ruff>=0.5",
            # lint-imports checks .importlinter; 2.6 brought its acyclic_siblings contract.
            "import-linter>=2.6",
            "pre-commit>=3.5",
            "mypy>=1.10",
            # stubs for mypy; the other untyped imports are listed in pyproject.toml's [tool.mypy]
            "types-PyYAML",
            "types-tqdm",
            "types-pycocotools",
            "scipy>=1.7",
            # CUDA 11.8 NVRTC and headers: tests compile the kernels for sm_72 (Xavier), which CUDA 13's nvcc dropped.
            "nvidia-cuda-nvrtc-cu11>=11.8; platform_system == 'Linux'",
            "nvidia-cuda-runtime-cu11>=11.8; platform_system == 'Linux'",
        ]
    )
)

setup(
    name="edgetile",
    version=VERSION,
    description="Find small objects in large images on edge devices: tiled detection, merging, export and training",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    # An SPDX expression (the full text is LICENSE); setuptools deprecates the License :: classifiers
    # in its favour and refuses the two together once it reads the field as an expression (PEP 639).
    license="AGPL-3.0-only",
    python_requires=">=3.8",
    packages=[
        "edgetile.runtime",
        "edgetile.runtime.backends",
        "edgetile.runtime.cuda",
        "edgetile.runtime.options",
        "edgetile.runtime.evaluation",
        "edgetile.runtime.serve",
        "edgetile.runtime.station",
        "edgetile.export",
        "edgetile.train",
        "edgetile.runtime.geo",
        "edgetile.runtime.links",
    ],
    package_dir={
        "edgetile.runtime": "runtime",
        "edgetile.runtime.backends": "runtime/backends",
        "edgetile.runtime.cuda": "runtime/cuda",
        "edgetile.runtime.evaluation": "runtime/evaluation",
        "edgetile.runtime.geo": "runtime/geo",
        "edgetile.runtime.links": "runtime/links",
        "edgetile.runtime.options": "runtime/options",
        "edgetile.runtime.serve": "runtime/serve",
        "edgetile.runtime.station": "runtime/station",
        "edgetile.export": "export",
        "edgetile.train": "train",
    },
    package_data={
        "edgetile.runtime": [
            "py.typed",
            "_merge.pyi",
            "data/*.onnx",
            "data/*.jpg",
            "data/*.json",
            "data/*.md",
            "*.cu",
            "*.c",
            "cuda/*.cu",
        ],
        # The review page: plain static files and the vendored Leaflet (see `make vendor`), no build step.
        "edgetile.runtime.serve": ["static/**/*"],
    },
    include_package_data=False,
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=["numpy>=1.22", "opencv-python-headless>=4.6", "simplejpeg>=1.7", "tqdm>=4.60"],
    extras_require={
        "onnx": ONNX_RUNTIME,
        "jetson": ["pycuda>=2022.1"],
        "export": EXPORT,
        # Building TensorRT engines on a Jetson: TensorRT itself comes with JetPack; no torch needed.
        "engine": ONNX_RUNTIME + ["onnx>=1.14", "pycuda>=2022.1"],
        "train": TRAIN,
        "ray": TRAIN + RAY,
        "serve": SERVE,
        "geo": GEO,
        "mqtt": MQTT,
        "mavlink": MAVLINK,
        "dev": DEV,
    },
    entry_points={
        "console_scripts": ["edgetile = edgetile.runtime.cli:main"],
        # Subcommands beside the runtime's own detect, demo and env; each registers cheaply and loads
        # its heavy parts only when invoked (train -> export -> runtime; serve -> runtime).
        "edgetile.commands": [
            "serve = edgetile.runtime.serve.command:register",
            "station = edgetile.runtime.station.command:register",
            "export = edgetile.export.cli:register",
            "dataset = edgetile.train.cli:register_dataset",
            "train = edgetile.train.cli:register_train",
            "train-verifier = edgetile.train.cli:register_train_verifier",
            "train-embedder = edgetile.train.cli:register_train_embedder",
            "tune = edgetile.train.cli:register_tune",
            "eval = edgetile.train.cli:register_eval",
            "pseudo-label = edgetile.train.cli:register_pseudo_label",
            "recipe = edgetile.train.cli:register_recipe",
            "synth = edgetile.train.cli:register_synth",
        ],
    },
    zip_safe=False,
)
