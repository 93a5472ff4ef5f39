"""The detection options: model, tiling, thresholds and merging, and their mapping to and from DetectConfig.

``edgetile detect``, ``demo``, ``serve`` and ``eval`` add the same options through
:func:`add_detect_options`; :func:`detect_config_from_args` turns a parse into a
:class:`~edgetile.runtime.detector.DetectConfig`, and :func:`detect_settings` / :func:`detect_args`
turn a DetectConfig back into option names and command-line words (what ``eval --sweep`` writes).

An **ensemble file** (YAML, or JSON needing nothing more) stands wherever one model may: its members,
their fusion weights and the fusion settings, with member paths relative to the file::

    # edgetile ensemble
    models:
      - {path: fold0/weights/best.onnx, weight: 1}
      - {path: fold1/weights/best.onnx, weight: 2}
    fusion: {method: wbf, iou: 0.55}

:func:`read_ensemble` reads it, :func:`write_ensemble` writes it, and :func:`model_set` expands
``--model`` words into the models, weights and fusion IoU that :func:`open_detector` builds from.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..argtypes import finite_number, int_at_least, number_in
from . import UsageError

if TYPE_CHECKING:
    from ..detector import DetectConfig, Detector

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
        help="ONNX model, TensorRT engine or ensemble file (.yaml/.json: models, weights, fusion); "
        "several for an ensemble fused by WBF (default: the bundled demo model)",
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
        help="inference backend; auto picks TensorRT for .engine/.plan/.trt and ONNX Runtime for .onnx",
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
    g = p.add_argument_group("second look and appearance")
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
    g.add_argument(
        "--embed",
        metavar="MODEL",
        default=None,
        help="appearance embedding model from 'edgetile train-embedder' (.onnx or engine): every "
        "detection left after the merge and --verify is cut out and embedded in one batch per photo; "
        "each record gets 'embedding', 128 unit-length float16 values in base64, whose cosine "
        "similarity tells the same person across photos (default: none)",
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


ENSEMBLE_SUFFIXES = (".yaml", ".yml", ".json")
FUSION_METHODS = ("wbf",)


@dataclass(frozen=True)
class Ensemble:
    """Models fused by WBF, as an ensemble file describes them.

    Attributes:
        models: Member model files (absolute, or as given when the file named them absolutely).
        weights: One fusion weight per member (positive).
        fusion_iou: IoU threshold of the Weighted Boxes Fusion joining members (and TTA passes).
        source: The file read, or None when built in code.
        notes: Free text the file carries (how it was made, its scores); never interpreted.
    """

    models: tuple[str, ...]
    weights: tuple[float, ...]
    fusion_iou: float = 0.55
    source: Path | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: expected at least one member, found none")
        if len(self.weights) != len(self.models):
            raise ValueError(
                f"weights: expected one per model ({len(self.models)}), found {len(self.weights)}"
            )
        if any(not (w > 0 and w < float("inf")) for w in self.weights):
            raise ValueError(f"weights: expected positive numbers, found {list(self.weights)}")
        if not 0.0 <= self.fusion_iou <= 1.0:
            raise ValueError(f"fusion iou: expected a number in [0, 1], found {self.fusion_iou!r}")


def is_ensemble_file(path: str | Path) -> bool:
    """Whether a --model word names an ensemble file (by its suffix: .yaml, .yml or .json)."""
    return Path(path).suffix.lower() in ENSEMBLE_SUFFIXES


def read_ensemble(path: str | Path) -> Ensemble:  # noqa: C901 - one check per field of a hand-edited file, each refused in its own words
    """Read an ensemble file: YAML (needs PyYAML) or JSON (a .json file, or text starting with '{').

    Member paths are relative to the file's folder; every member must exist and must itself be a
    model, not another ensemble file.

    Raises:
        ValueError: unreadable, not a mapping, an unknown key, a missing member, a bad weight or
            fusion setting; one line naming what was expected and what was found.
    """
    p = Path(path)
    where = f"ensemble file {p}"
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: expected UTF-8 YAML or JSON text, found binary data") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"{where}: reading YAML needs PyYAML (pip install 'edgetile[serve]'); "
                "an ensemble file in JSON needs nothing more"
            ) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"{where}: expected a mapping with 'models' (and 'fusion'), found {type(doc).__name__}"
        )
    unknown = sorted(set(map(str, doc)) - {"models", "fusion", "notes"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected models, fusion, notes")
    members = doc.get("models")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{where}: models: expected a list of members, found {members!r}")
    models, weights = [], []
    for i, m in enumerate(members):
        entry = {"path": m} if isinstance(m, str) else m
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(
                f"{where}: models[{i}]: expected a path or {{path: ..., weight: ...}}, found {m!r}"
            )
        extra = sorted(set(entry) - {"path", "weight"})
        if extra:
            raise ValueError(f"{where}: models[{i}]: unknown key(s) {extra}; expected path, weight")
        member = Path(os.path.expanduser(entry["path"]))
        member = member if member.is_absolute() else p.parent / member
        if is_ensemble_file(member):
            raise ValueError(
                f"{where}: models[{i}]: expected a model file, found another ensemble file {member}"
            )
        if not member.is_file():
            raise ValueError(f"{where}: models[{i}]: model file not found: {member}")
        w = entry.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < float("inf"):
            raise ValueError(f"{where}: models[{i}]: weight: expected a positive number, found {w!r}")
        models.append(str(member))
        weights.append(float(w))
    fusion = doc.get("fusion") or {}
    if not isinstance(fusion, dict):
        raise ValueError(f"{where}: fusion: expected a mapping (method, iou), found {fusion!r}")
    bad = sorted(set(fusion) - {"method", "iou"})
    if bad:
        raise ValueError(f"{where}: fusion: unknown key(s) {bad}; expected method, iou")
    method = fusion.get("method", "wbf")
    if method not in FUSION_METHODS:
        raise ValueError(
            f"{where}: fusion method: expected one of {', '.join(FUSION_METHODS)}, found {method!r}"
        )
    iou = fusion.get("iou", 0.55)
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0.0 <= iou <= 1.0:
        raise ValueError(f"{where}: fusion iou: expected a number in [0, 1], found {iou!r}")
    notes = doc.get("notes") or []
    notes = [notes] if isinstance(notes, str) else notes
    if not isinstance(notes, list):
        raise ValueError(f"{where}: notes: expected text or a list of text, found {type(notes).__name__}")
    return Ensemble(tuple(models), tuple(weights), float(iou), p, tuple(map(str, notes)))


def write_ensemble(
    path: str | Path,
    models: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    fusion_iou: float = 0.55,
    notes: Sequence[str] = (),
) -> Path:
    """Write an ensemble file that --model accepts; member paths are stored relative to it.

    A .json path is written as JSON (read without PyYAML); any other as YAML (needs PyYAML).

    Raises:
        ValueError: As :class:`Ensemble` refuses the contents.
    """
    p = Path(path)
    ens = Ensemble(
        tuple(str(m) for m in models),
        tuple(float(w) for w in (weights if weights is not None else [1.0] * len(models))),
        float(fusion_iou),
        notes=tuple(notes),
    )
    base = p.parent.resolve()
    members = [
        {"path": os.path.relpath(Path(m).resolve(), base), "weight": w}
        for m, w in zip(ens.models, ens.weights)
    ]
    doc: dict[str, object] = {"models": members, "fusion": {"method": "wbf", "iou": ens.fusion_iou}}
    if ens.notes:
        doc["notes"] = list(ens.notes)
    p.parent.mkdir(parents=True, exist_ok=True)
    from ..files import write_text_atomic

    if p.suffix.lower() == ".json":
        write_text_atomic(p, json.dumps(doc, indent=1) + "\n")
    else:
        import yaml

        header = "# edgetile ensemble: --model accepts this file as one model; paths are relative to it\n"
        write_text_atomic(p, header + yaml.safe_dump(doc, sort_keys=False))
    return p


@dataclass(frozen=True)
class ModelSet:
    """What --model and --model-weights describe once ensemble files are expanded.

    Attributes:
        paths: Every model file.
        weights: One weight per model, or None (all 1).
        fusion_iou: The ensemble files' fusion IoU, or None (DetectConfig's default).
    """

    paths: list[str]
    weights: list[float] | None
    fusion_iou: float | None


def expand_models(models: Sequence[str], weights: Sequence[float] | None = None) -> ModelSet:
    """Expand ensemble files among model words into their members, weights and fusion IoU.

    A plain model weighs 1 unless ``weights`` is given; ``weights``, when given, has one weight per
    model after expansion and wins over the files' weights.

    Raises:
        UsageError: a missing model or ensemble member, a bad ensemble file, ensemble files that
            disagree on the fusion IoU, or a wrong number of weights.
    """
    paths: list[str] = []
    file_weights: list[float] = []
    fusion: set[float] = set()
    for m in models:
        if is_ensemble_file(m):
            try:
                ens = read_ensemble(m)
            except ValueError as exc:
                raise UsageError(f"--model: {exc}") from None
            paths += ens.models
            file_weights += ens.weights
            fusion.add(ens.fusion_iou)
        else:
            if not Path(m).is_file():
                raise UsageError(f"--model: file not found: {m}")
            paths.append(str(m))
            file_weights.append(1.0)
    if len(fusion) > 1:
        raise UsageError(f"--model: expected ensemble files with one fusion iou, found {sorted(fusion)}")
    if weights is not None:
        if len(weights) != len(paths):
            raise UsageError(
                f"--model-weights: expected {len(paths)} weight(s), one per model"
                + (" (ensemble files counted by their members)" if len(paths) != len(models) else "")
                + f", found {len(weights)}"
            )
        out_weights: list[float] | None = [float(w) for w in weights]
    else:
        out_weights = file_weights if any(w != 1.0 for w in file_weights) else None
    return ModelSet(paths, out_weights, fusion.pop() if fusion else None)


def model_set(a: argparse.Namespace) -> ModelSet:
    """The models of a parse of :func:`add_detect_options` (the bundled demo model when none is given)."""
    return expand_models(a.model or [str(DEMO_MODEL)], a.model_weights)


def model_paths(a: argparse.Namespace) -> list[str]:
    """The --model files (the bundled demo model when none is given), ensemble files expanded.

    Raises:
        UsageError: a model file is missing.
    """
    return model_set(a).paths


@dataclass(frozen=True)
class DetectorRecipe:
    """What a Detector is built from, small enough to send to another process (a Ray worker).

    Attributes:
        models: Model files (ensemble files expanded).
        weights: One fusion weight per model, or None (all 1).
        backend: auto, onnxruntime or tensorrt.
        config: Tiling, thresholds and merging, with the ensemble files' fusion IoU.
        verify: The --verify crop classifier, or None.
        verify_thr: Its threshold (--verify-thr), or None for the one stored in the classifier.
        embed: The --embed appearance embedding model, or None.
    """

    models: tuple[str, ...]
    weights: tuple[float, ...] | None
    backend: str
    config: DetectConfig
    verify: str | None = None
    verify_thr: float | None = None
    embed: str | None = None

    @property
    def uses_tensorrt(self) -> bool:
        """Whether the models run on TensorRT (so on a GPU)."""
        if self.backend != "auto":
            return self.backend == "tensorrt"
        return any(Path(m).suffix.lower() in (".engine", ".plan") for m in self.models)

    def open(self) -> Detector:
        """Build the Detector (ValueError, BackendUnavailable or FileNotFoundError when it cannot)."""
        from ..backends import BackendUnavailable
        from ..detector import Detector

        verifier = embedder = None
        try:
            if self.verify is not None:
                from ..verifier import Verifier

                try:
                    verifier = Verifier(self.verify, backend=self.backend, threshold=self.verify_thr)
                except (ValueError, BackendUnavailable, FileNotFoundError) as exc:
                    raise ValueError(f"--verify: {str(exc).splitlines()[0]}") from exc
            if self.embed is not None:
                from ..embedder import Embedder

                try:
                    embedder = Embedder(self.embed, backend=self.backend)
                except (ValueError, BackendUnavailable, FileNotFoundError) as exc:
                    raise ValueError(f"--embed: {str(exc).splitlines()[0]}") from exc
            weights = list(self.weights) if self.weights is not None else None
            return Detector(
                list(self.models),
                weights=weights,
                backend=self.backend,
                config=self.config,
                verifier=verifier,
                embedder=embedder,
            )
        except BaseException:
            for part in (verifier, embedder):
                if part is not None:
                    part.close()
            raise


def detector_recipe(a: argparse.Namespace) -> DetectorRecipe:
    """The DetectorRecipe that a parse of :func:`add_detect_options` describes.

    Raises:
        UsageError: a missing model or a bad ensemble file.
    """
    from dataclasses import replace

    ms = model_set(a)
    config = detect_config_from_args(a)
    if ms.fusion_iou is not None:
        config = replace(config, fusion_iou=ms.fusion_iou)
    weights = tuple(ms.weights) if ms.weights is not None else None
    path = getattr(a, "verify", None)  # not every command that takes the detection options verifies
    thr = getattr(a, "verify_thr", None)
    if path is None and thr is not None:
        raise UsageError("--verify-thr: expected a --verify MODEL to apply it to, found none")
    if path is not None and not Path(path).is_file():
        raise UsageError(f"--verify: file not found: {path}")
    embed = getattr(a, "embed", None)
    if embed is not None and not Path(embed).is_file():
        raise UsageError(f"--embed: file not found: {embed}")
    return DetectorRecipe(tuple(ms.paths), weights, a.backend, config, path, thr, embed)


def open_detector(a: argparse.Namespace) -> Detector:
    """Build the Detector the options describe (with --verify and --embed); problems become UsageErrors."""
    from ..backends import BackendUnavailable

    try:
        return detector_recipe(a).open()
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
