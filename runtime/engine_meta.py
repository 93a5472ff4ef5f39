"""The JSON sidecar written beside every TensorRT engine, and the check that an engine fits this machine.

A TensorRT plan runs only with the TensorRT version that built it, on the kind of GPU it was built
for. Loading it elsewhere fails deep inside TensorRT with a message about serialization tags, or
worse, crashes. The exporter therefore writes ``ENGINE.json`` beside ``ENGINE`` (the plan stays a
plain plan that ``trtexec --loadEngine`` reads), and the runtime reads it first and refuses a
mismatch with a message that says what was built where.

Stdlib only: this module is part of the lean runtime and is imported by the exporter, never the
other way round.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SIDECAR_FORMAT = "edgetile-engine"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
INT8_SOURCES = ("qdq", "calibrator")


class EngineIncompatible(ValueError):
    """An engine was built for another TensorRT version or another GPU than the one here."""


def sidecar_path(engine_path: str | Path) -> Path:
    """Where the sidecar of an engine lives: ``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


TRT_OLDEST = (8, 5)  # JetPack 5.1: the name-based tensor API starts here
TRT_NEWEST_MAJOR = 11


def parse_trt_version(version: str, what: str = "TensorRT version") -> tuple[int, int, int]:
    """(major, minor, patch) of a TensorRT version string: '10.3.0.26' -> (10, 3, 0), '8.6' -> (8, 6, 0).

    The one parser for the sidecar check, the runtime backend and the engine builder.

    Args:
        version: What ``tensorrt.__version__`` or a sidecar says.
        what: Where the version came from, for the error message.

    Raises:
        ValueError: When it does not start with major.minor.
    """
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not m:
        raise ValueError(f"{what}: expected something like 10.3.0, found {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def supported_trt_version(
    version: str, user: str, newer_remedy: str, error: type[Exception]
) -> tuple[int, int, int]:
    """(major, minor, patch) of a TensorRT version that edgetile was written against (8.5 to 11.x).

    The one range for the runtime backend and the engine builder, which say in their own words what
    to do about a version outside it.

    Args:
        version: ``tensorrt.__version__``.
        user: What uses the name-based tensor API, for the message of an older version.
        newer_remedy: What to do about a newer major version.
        error: The exception raised for a version outside the range.

    Raises:
        error: Older than 8.5 (JetPack 4.x is out of scope) or a major version newer than
            TRT_NEWEST_MAJOR (not written against).
        ValueError: The version does not start with major.minor.
    """
    v = parse_trt_version(version)
    if v[:2] < TRT_OLDEST:
        raise error(
            f"TensorRT {version} is older than 8.5 (JetPack 5.1): the name-based tensor API {user} is "
            "missing; flash JetPack 5.1 or later (JetPack 4.x is not supported)"
        )
    if v[0] > TRT_NEWEST_MAJOR:
        raise error(
            f"TensorRT {version} is newer than any version edgetile was written against (8.5 to "
            f"{TRT_NEWEST_MAJOR}.x); {newer_remedy}"
        )
    return v


@dataclass(frozen=True)
class EngineMeta:
    """What an engine was built from and for.

    Attributes:
        tensorrt_version: Version of the TensorRT that built the plan, e.g. "10.3.0".
        gpu_name: Name of the GPU it was built on, e.g. "Orin".
        compute_capability: "major.minor" of that GPU, e.g. "8.7".
        precision: "fp32", "fp16" or "int8".
        batch_min: Smallest batch of the optimization profile.
        batch_opt: Batch TensorRT tuned for.
        batch_max: Largest batch of the optimization profile.
        input_hw: Model input height and width in pixels.
        names: Class index -> name.
        source_sha256: sha256 of the ONNX the engine was built from.
        source_onnx: File name of that ONNX (for the reader; the hash is what identifies it).
        int8_source: For int8: "qdq" (explicit Q/DQ in the ONNX) or "calibrator" (implicit calibration).
        dla_core: DLA core the engine runs on, or None for the GPU.
        input_name: Name of the image input tensor.
        stride: Largest stride of the network.
        edgetile_version: Version of edgetile that wrote the sidecar.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    batch_min: int
    batch_opt: int
    batch_max: int
    input_hw: tuple[int, int]
    names: dict[int, str]
    source_sha256: str
    source_onnx: str = ""
    int8_source: str | None = None
    dla_core: int | None = None
    input_name: str = "images"
    stride: int = 32
    edgetile_version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_trt_version(self.tensorrt_version, "tensorrt_version")
        if not re.fullmatch(r"\d+\.\d+", str(self.compute_capability)):
            raise ValueError(
                f"compute_capability: expected 'major.minor' like 8.7, found {self.compute_capability!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        if self.precision == "int8" and self.int8_source not in INT8_SOURCES:
            raise ValueError(
                f"int8_source: expected one of {', '.join(INT8_SOURCES)} for an int8 engine, "
                f"found {self.int8_source!r}"
            )
        b = (self.batch_min, self.batch_opt, self.batch_max)
        if (
            not all(isinstance(v, int) and not isinstance(v, bool) for v in b)
            or not 1 <= b[0] <= b[1] <= b[2]
        ):
            raise ValueError(
                f"batch_min, batch_opt, batch_max: expected integers 1 <= min <= opt <= max, found {b}"
            )
        hw = tuple(self.input_hw)
        if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
            raise ValueError(
                f"input_hw: expected two positive integers (height, width), found {self.input_hw!r}"
            )
        object.__setattr__(self, "input_hw", (int(hw[0]), int(hw[1])))
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.source_sha256)):
            raise ValueError(f"source_sha256: expected 64 lowercase hex digits, found {self.source_sha256!r}")
        if self.dla_core is not None and (isinstance(self.dla_core, bool) or int(self.dla_core) < 0):
            raise ValueError(f"dla_core: expected a core index >= 0 or None, found {self.dla_core!r}")

    def to_json(self) -> str:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        d["names"] = {str(k): v for k, v in self.names.items()}
        return json.dumps({"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, **d}, indent=2)

    @classmethod
    def from_dict(cls, d: dict, where: str = "sidecar") -> EngineMeta:
        if d.get("format") != SIDECAR_FORMAT:
            raise ValueError(
                f"{where}: expected an {SIDECAR_FORMAT} sidecar, found format {d.get('format')!r}"
            )
        if d.get("format_version") != SIDECAR_VERSION:
            raise ValueError(
                f"{where}: expected sidecar format_version {SIDECAR_VERSION}, found "
                f"{d.get('format_version')!r}; rebuild the engine with this edgetile"
            )
        known = set(cls.__dataclass_fields__)
        body = {k: v for k, v in d.items() if k in known}
        required = (
            "tensorrt_version",
            "gpu_name",
            "compute_capability",
            "precision",
            "batch_min",
            "batch_opt",
            "batch_max",
            "input_hw",
            "names",
            "source_sha256",
        )
        missing = [k for k in required if k not in body]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            body["names"] = {int(k): str(v) for k, v in dict(body["names"]).items()}
            body["input_hw"] = tuple(int(v) for v in body["input_hw"])
            return cls(**body)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc


def write_engine_sidecar(engine_path: str | Path, meta: EngineMeta) -> Path:
    """Write the sidecar of an engine (atomically: a reader never sees half a file). Returns its path."""
    path = sidecar_path(engine_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(meta.to_json() + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_engine_sidecar(engine_path: str | Path) -> EngineMeta:
    """Read and validate the sidecar of an engine.

    Raises:
        FileNotFoundError: The engine has no sidecar (built by another tool, or copied without it).
        ValueError: The sidecar is not valid JSON or lacks what the runtime needs.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"engine {engine_path}: expected its sidecar {path.name} beside it (TensorRT version, GPU, input "
            "size, classes), found none; build engines with 'edgetile export engine' and copy both files"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: expected JSON, found unreadable text ({exc})") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(d).__name__}")
    return EngineMeta.from_dict(d, str(path))


def check_engine_compatible(
    meta: EngineMeta, trt_version: str, gpu_name: str, compute_capability: str
) -> list[str]:
    """Refuse an engine that this TensorRT on this GPU cannot run.

    TensorRT deserializes a plan only with the exact version that built it (major.minor.patch), and the
    kernels it chose are compiled for one compute capability. A different GPU name with the same compute
    capability (an Orin Nano running an engine built on an AGX Orin) loads, but its tactics were timed
    on other hardware, so that is a warning, not an error.

    Args:
        meta: The engine's sidecar.
        trt_version: Version of the TensorRT here (``tensorrt.__version__``).
        gpu_name: Name of the GPU here.
        compute_capability: "major.minor" of the GPU here.

    Returns:
        Warnings, one line each (empty when the engine was built here).

    Raises:
        EngineIncompatible: The TensorRT version or the compute capability differs.
    """
    built = parse_trt_version(meta.tensorrt_version, "sidecar tensorrt_version")
    here = parse_trt_version(trt_version, "trt_version")
    if built != here or str(meta.compute_capability) != str(compute_capability):
        raise EngineIncompatible(
            f"engine built for TensorRT {meta.tensorrt_version} on GPU {meta.gpu_name} (compute capability "
            f"{meta.compute_capability}), this is TensorRT {trt_version} on GPU {gpu_name} (compute capability "
            f"{compute_capability}); rebuild it here with 'edgetile export engine' from {meta.source_onnx or 'its ONNX'}"
        )
    if meta.gpu_name != gpu_name:
        return [
            f"engine built on GPU {meta.gpu_name}, running on GPU {gpu_name} of the same compute capability "
            f"{compute_capability}: it loads, but rebuild it here for the fastest tactics"
        ]
    return []
