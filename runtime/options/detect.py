"""The detection options: model, tiling, thresholds and merging, and their mapping to and from DetectConfig.

``edgetile detect``, ``demo``, ``serve`` and ``eval`` add the same options through
:func:`add_detect_options`; :func:`detect_config_from_args` turns a parse into a
:class:`~edgetile.runtime.detector.DetectConfig`, and :func:`detect_settings` / :func:`detect_args`
turn a DetectConfig back into option names and command-line words (what ``eval --sweep`` writes).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..argtypes import finite_number, int_at_least, number_in
from . import UsageError

if TYPE_CHECKING:
    from ..detector import DetectConfig, Detector
    from ..verifier import Verifier

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEMO_MODEL = DATA_DIR / "demo.onnx"


def add_detect_options(
    p: argparse.ArgumentParser, conf_default: float = 0.25, conf_why: str = ""
) -> dict[str, argparse.Action]:
    """Options shared by detect, demo and the daemon: model, tiling, thresholds, merging.

    Args:
        p: The subcommand's parser.
        conf_default: Default confidence threshold.
        conf_why: Why this command's default differs from detect's, for the help line.

    Returns:
        dest -> action of each option added: the detection settings a --settings file may set.
    """
    from ..detector import MERGE_METHODS

    first = len(p._actions)  # argparse has no public way to list a parser's options
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="ONNX model or TensorRT engine; several for an ensemble fused by WBF "
        "(default: the bundled demo model)",
    )
    g.add_argument(
        "--model-weights",
        nargs="+",
        type=finite_number("--model-weights", 0.0, inclusive=False),
        metavar="W",
        help="one weight per --model for the ensemble fusion, e.g. 1 2 (default: all 1)",
    )
    g.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "tensorrt"],
        default="auto",
        help="inference backend; auto picks TensorRT for .engine/.plan and ONNX Runtime for .onnx",
    )
    g = p.add_argument_group("tiling")
    g.add_argument(
        "--tile",
        type=int_at_least("--tile", 32),
        default=1024,
        help="tile side in image pixels; tiles are resized to the model input (default: 1024)",
    )
    g.add_argument(
        "--overlap",
        type=number_in("--overlap", 0.0, 0.9, hi_open=True),
        default=0.2,
        help="fraction of a tile shared with its neighbour; keep it wider than the largest "
        "object over the tile size (default: 0.2)",
    )
    g.add_argument(
        "--full-frame",
        action="store_true",
        help="add one downscaled pass of the whole image, for objects larger than a tile",
    )
    g.add_argument(
        "--batch",
        type=int_at_least("--batch"),
        default=None,
        help="tiles per inference call (default: the model's fixed batch, or 8)",
    )
    g = p.add_argument_group("thresholds and merging")
    g.add_argument(
        "--conf",
        type=number_in("--conf"),
        default=conf_default,
        help=f"confidence threshold; lower it for recall when every miss matters (default: {conf_default}"
        + (f", because {conf_why})" if conf_why else ")"),
    )
    g.add_argument(
        "--iou",
        type=number_in("--iou"),
        default=0.7,
        help="IoU threshold of the NMS inside each tile (default: 0.7)",
    )
    g.add_argument(
        "--merge",
        choices=MERGE_METHODS,
        default="ios",
        help="how boxes of overlapping tiles are joined: ios suppresses a box whose intersection "
        "over the smaller box exceeds --merge-thr; nms uses IoU; nmm merges into the union "
        "box; wbf averages (default: ios)",
    )
    g.add_argument(
        "--merge-thr",
        type=number_in("--merge-thr"),
        default=0.5,
        help="threshold of the cross-tile merge (default: 0.5)",
    )
    g.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="flip adds a mirrored pass fused by WBF: slower, usually better recall (default: none)",
    )
    g = p.add_argument_group("second look")
    g.add_argument(
        "--verify",
        metavar="MODEL",
        default=None,
        help="crop classifier from 'edgetile train-verifier' (.onnx or engine): every detection of a "
        "photo is cut out with context and classified in one batch; those it rejects are dropped, the "
        "rest keep the detector's score and record detector_score and verifier_score (default: none)",
    )
    g.add_argument(
        "--verify-thr",
        type=number_in("--verify-thr"),
        default=None,
        help="keep a detection when the classifier's person probability is at least this (default: the "
        "threshold train-verifier chose and stored in the model, which loses at most 1%% of the people "
        "the detector found on its validation photos)",
    )
    return {action.dest: action for action in p._actions[first:]}


def detect_config_from_args(a: argparse.Namespace) -> DetectConfig:
    """The DetectConfig that a parse of :func:`add_detect_options` describes."""
    from ..detector import DetectConfig

    return DetectConfig(
        tile=a.tile,
        overlap=a.overlap,
        full_frame=a.full_frame,
        batch=a.batch,
        conf=a.conf,
        iou=a.iou,
        merge=a.merge,
        merge_thr=a.merge_thr,
        tta=() if a.tta == "none" else (a.tta,),
    )


def model_paths(a: argparse.Namespace) -> list[str]:
    """The --model files (the bundled demo model when none is given), each checked to exist.

    Raises:
        UsageError: a model file is missing.
    """
    models = a.model or [str(DEMO_MODEL)]
    for m in models:
        if not Path(m).is_file():
            raise UsageError(f"--model: file not found: {m}")
    return models


def open_verifier(a: argparse.Namespace) -> Verifier | None:
    """The --verify crop classifier, or None without it; every problem becomes a UsageError."""
    from ..backends import BackendUnavailable
    from ..verifier import Verifier

    path = getattr(a, "verify", None)
    thr = getattr(a, "verify_thr", None)
    if path is None:
        if thr is not None:
            raise UsageError("--verify-thr: expected a --verify MODEL to apply it to, found none")
        return None
    if not Path(path).is_file():
        raise UsageError(f"--verify: file not found: {path}")
    try:
        return Verifier(path, backend=a.backend, threshold=thr)
    except (ValueError, BackendUnavailable, FileNotFoundError) as exc:
        raise UsageError(f"--verify: {str(exc).splitlines()[0]}") from exc


def open_detector(a: argparse.Namespace) -> Detector:
    """Build the Detector the options describe (with its --verify classifier); problems become UsageErrors."""
    from ..backends import BackendUnavailable
    from ..detector import Detector

    models = model_paths(a)
    if a.model_weights is not None and len(a.model_weights) != len(models):
        raise UsageError(
            f"--model-weights: expected {len(models)} weight(s), one per model, found {len(a.model_weights)}"
        )
    verifier = open_verifier(a)
    try:
        return Detector(
            models,
            weights=a.model_weights,
            backend=a.backend,
            config=detect_config_from_args(a),
            verifier=verifier,
        )
    except (ValueError, BackendUnavailable, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc


def detect_settings(cfg: DetectConfig, weights: Sequence[float] | None = None) -> dict[str, object]:
    """DetectConfig as `edgetile detect` option names -> values (only the options detect has).

    Args:
        cfg: The settings.
        weights: Ensemble weights, or None: written as model-weights, since scores hold only for them.
    """
    out: dict[str, object] = {
        "tile": cfg.tile,
        "overlap": cfg.overlap,
        "conf": cfg.conf,
        "iou": cfg.iou,
        "merge": cfg.merge,
        "merge-thr": cfg.merge_thr,
        "tta": cfg.tta[0] if cfg.tta else "none",
        "full-frame": cfg.full_frame,
    }
    if cfg.batch is not None:
        out["batch"] = cfg.batch
    if weights is not None:
        out["model-weights"] = [float(w) for w in weights]
    return out


def detect_args(cfg: DetectConfig, weights: Sequence[float] | None = None) -> list[str]:
    """:func:`detect_settings` as command-line words (a flag only when it is on)."""

    def word(v: object) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    args: list[str] = []
    for key, value in detect_settings(cfg, weights).items():
        if isinstance(value, bool):
            args += [f"--{key}"] if value else []
        elif isinstance(value, list):
            args += [f"--{key}", *map(word, value)]
        else:
            args += [f"--{key}", word(value)]
    return args
