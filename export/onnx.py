"""PyTorch (.pt) -> ONNX through Ultralytics' exporter, then checked against PyTorch on real tiles.

The ONNX has a dynamic batch axis by default and a fixed input size (TensorRT tunes better for a
fixed size, and DLA needs one), is simplified by onnxslim, and carries the metadata the runtime reads:
Ultralytics' names, imgsz and stride, plus the edgetile version that exported it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetile.runtime._version import __version__

from .artifacts import DEFAULT_BUDGET_MB, ExportError, check_budget, default_out
from .tiles import image_tiles, plan_runtime_tiles, synthetic_photo

# Detectors, and the crop classifiers of train-verifier (output (B, classes), same metadata).
EXPORT_TASKS = ("detect", "classify")
# Below ONNX opset 11 Ultralytics' detection head does not export (Resize, dynamic shapes).
MIN_OPSET = 11


@dataclass(frozen=True)
class OnnxExportConfig:
    """How a .pt becomes an ONNX.

    Attributes:
        imgsz: Model input side in pixels (square), a multiple of the model stride.
        batch: Fixed batch size, or None for a dynamic batch axis (one engine serves any batch).
        opset: ONNX opset, or None for Ultralytics' choice for the installed onnx.
        budget_mb: Largest acceptable file size in MiB.
    """

    imgsz: int = 1024
    batch: int | None = None
    opset: int | None = None
    budget_mb: float = DEFAULT_BUDGET_MB

    def __post_init__(self) -> None:
        if (
            isinstance(self.imgsz, bool)
            or not isinstance(self.imgsz, int)
            or self.imgsz < 32
            or self.imgsz % 32
        ):
            raise ValueError(f"imgsz: expected a multiple of 32 of at least 32, found {self.imgsz!r}")
        if self.batch is not None and (
            isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1
        ):
            raise ValueError(f"batch: expected a positive integer or None (dynamic), found {self.batch!r}")
        if self.opset is not None and (not isinstance(self.opset, int) or self.opset < MIN_OPSET):
            raise ValueError(f"opset: expected an integer >= {MIN_OPSET} or None, found {self.opset!r}")


def _dims(value_info) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _fix_spatial_dims(model, imgsz: int) -> None:
    """Keep only the batch axis dynamic: Ultralytics' dynamic export also frees height and width.

    Shapes inside the graph are cleared so that onnxslim infers them again from the fixed input and
    folds the anchor-grid computation into constants.
    """
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis in (2, 3):
        dims[axis].Clear()
        dims[axis].dim_value = imgsz
    del model.graph.value_info[:]
    for out in model.graph.output:
        for axis, d in enumerate(out.type.tensor_type.shape.dim):
            if axis > 0:
                d.Clear()


def export_onnx(
    weights: str | Path, out: str | Path | None = None, config: OnnxExportConfig | None = None
) -> Path:
    """Export an Ultralytics detection model (or a crop classifier) to ONNX.

    Args:
        weights: The .pt checkpoint.
        out: Where to write the ONNX (default: beside the weights, same name, .onnx).
        config: Input size, batch, opset and budget.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: No such weights file.
        ExportError: Ultralytics or onnxslim failed, or the graph is not a detection model.
        BudgetExceeded: The ONNX is larger than the budget (the file is kept).
    """
    import onnx
    import onnxslim
    from ultralytics import YOLO

    cfg = config or OnnxExportConfig()
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights: file not found: {weights}")
    out = Path(out) if out is not None else default_out(weights, ".onnx")
    with tempfile.TemporaryDirectory(prefix="edgetile-export-") as tmp:
        # Ultralytics writes beside its input, which would overwrite a user's file of the same name.
        local = Path(tmp) / weights.name
        shutil.copyfile(weights, local)
        try:
            model = YOLO(str(local))
        except Exception as exc:  # Ultralytics raises many types for a file that is not a checkpoint
            raise ExportError(
                f"weights {weights}: not an Ultralytics checkpoint ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        if model.task not in EXPORT_TASKS:
            raise ExportError(
                f"weights {weights}: expected a detection model (or a crop classifier), found task {model.task!r}"
            )
        stride = int(max(getattr(model.model, "stride", [32])))
        if cfg.imgsz % stride:
            raise ExportError(f"imgsz: expected a multiple of the model stride {stride}, found {cfg.imgsz}")
        try:
            exported = model.export(
                format="onnx",
                imgsz=cfg.imgsz,
                dynamic=cfg.batch is None,
                batch=cfg.batch or 1,
                opset=cfg.opset,
                simplify=False,
                device="cpu",
                verbose=False,
            )
        except Exception as exc:  # the exporter wraps its failures in bare Exceptions
            raise ExportError(
                f"Ultralytics ONNX export of {weights} failed: {type(exc).__name__}: {exc}"
            ) from exc
        proto = onnx.load(str(exported))
        if len(proto.graph.input) != 1:
            raise ExportError(f"expected one image input, found {len(proto.graph.input)}")
        if cfg.batch is None:
            _fix_spatial_dims(proto, cfg.imgsz)
        # Slimming here rather than inside Ultralytics: its exporter logs a simplifier failure and carries
        # on with an unsimplified graph; ours raises.
        try:
            proto = onnxslim.slim(proto)
        except Exception as exc:  # onnxslim raises bare Exceptions
            raise ExportError(
                f"onnxslim could not simplify the exported graph: {type(exc).__name__}: {exc}"
            ) from exc
        meta = {p.key: p.value for p in proto.metadata_props}
        for key in ("names", "imgsz", "stride"):
            if key not in meta:
                raise ExportError(
                    f"the exported ONNX lacks Ultralytics metadata {key!r} that the runtime reads"
                )
        _set_metadata(proto, {"edgetile_version": __version__, "edgetile_source": weights.name})
        onnx.checker.check_model(proto)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".partial")
        onnx.save(proto, str(tmp_out))
        tmp_out.replace(out)
    check_budget(out, cfg.budget_mb)
    return out


def _set_metadata(proto, entries: dict[str, str]) -> None:
    import onnx

    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in entries.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))


@dataclass(frozen=True)
class Verification:
    """ONNX Runtime against PyTorch on the same tiles.

    Attributes:
        tiles: How many tiles were compared.
        source: Where the tiles came from.
        max_box_diff: Largest absolute difference of a box coordinate, in input pixels.
        max_score_diff: Largest absolute difference of a class score.
        box_tol: Tolerance of max_box_diff.
        score_tol: Tolerance of max_score_diff.
    """

    tiles: int
    source: str
    max_box_diff: float
    max_score_diff: float
    box_tol: float
    score_tol: float

    @property
    def passed(self) -> bool:
        return self.max_box_diff <= self.box_tol and self.max_score_diff <= self.score_tol

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"verify: {verdict}: ONNX Runtime vs PyTorch on {self.tiles} tile(s) of {self.source}: largest "
            f"difference {self.max_box_diff:.2e} px in boxes (tolerance {self.box_tol:g}), "
            f"{self.max_score_diff:.2e} in scores (tolerance {self.score_tol:g})"
        )


def verification_tiles(
    imgsz: int, images: str | Path | None = None, count: int = 8, tile: int = 1024, overlap: float = 0.2
) -> tuple[np.ndarray, str]:
    """Tiles to verify an export on: cut from the user's photos, or from a deterministic test pattern.

    Returns:
        ((K, 3, imgsz, imgsz) float32 tiles, a description of where they came from).
    """
    if images is not None:
        plan = plan_runtime_tiles([images], count, (imgsz, imgsz), tile, overlap)
        tiles = np.stack(list(plan)) if plan.count else np.zeros((0, 3, imgsz, imgsz), np.float32)
        if not len(tiles):
            raise ExportError(f"--verify-images {images}: no readable photo: {'; '.join(plan.problems)}")
        return tiles, f"{len(plan.photos)} photo(s) in {images} (tile {tile}, overlap {overlap})"
    photo = synthetic_photo(0, 2 * tile, int(1.5 * tile))
    return image_tiles(
        photo, count, (imgsz, imgsz), tile, overlap
    ), f"a synthetic {2 * tile}x{int(1.5 * tile)} pattern"


def _torch_outputs(weights: Path, tiles: np.ndarray) -> np.ndarray:
    import torch
    from ultralytics import YOLO

    net = YOLO(str(weights)).model.float().eval()
    with torch.inference_mode():
        out = net(torch.from_numpy(np.ascontiguousarray(tiles)))
    out = out[0] if isinstance(out, (list, tuple)) else out
    return out.numpy()


def verify_onnx(
    weights: str | Path,
    onnx_path: str | Path,
    tiles: np.ndarray,
    source: str = "tiles",
    box_tol: float = 0.05,
    score_tol: float = 1e-3,
) -> Verification:
    """Run the ONNX through the runtime's ONNX Runtime backend and the .pt through PyTorch; compare.

    Args:
        weights: The .pt the ONNX was exported from.
        onnx_path: The exported ONNX.
        tiles: (K, 3, H, W) float32 preprocessed tiles.
        source: Where the tiles came from, for the report.
        box_tol: Largest acceptable box-coordinate difference in input pixels.
        score_tol: Largest acceptable score difference.
    """
    from edgetile.runtime.backends import create_backend
    from edgetile.runtime.decode import check_yolo_output
    from edgetile.runtime.model import model_info

    be = create_backend("onnxruntime", onnx_path)
    try:
        info = model_info(be, str(onnx_path))  # the runtime must be able to read the metadata
        if tuple(tiles.shape[2:]) != info.input_hw:
            raise ValueError(f"tiles: expected input size {info.input_hw}, found {tiles.shape[2:]}")
        step = info.batch or len(tiles)
        outs = []
        for start in range(0, len(tiles), step):
            part = tiles[start : start + step]
            n = len(part)
            if info.batch is not None and n < info.batch:  # a fixed batch runs padded, as in the runtime
                part = np.concatenate([part, np.zeros((info.batch - n,) + part.shape[1:], part.dtype)])
            y = be.infer(np.ascontiguousarray(part, be.input_dtype))[0]
            check_yolo_output(y, len(part), len(info.names) or None)
            outs.append(y[:n])
    finally:
        be.close()
    got = np.concatenate(outs).astype(np.float64)
    ref = _torch_outputs(Path(weights), tiles).astype(np.float64)
    if got.shape != ref.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
    box = float(np.abs(got[:, :4] - ref[:, :4]).max())
    score = float(np.abs(got[:, 4:] - ref[:, 4:]).max())
    return Verification(len(tiles), source, box, score, box_tol, score_tol)
