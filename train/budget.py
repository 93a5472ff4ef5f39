"""The weight budget: how large a model's files will be, known before a minute of training is spent.

A trained Ultralytics checkpoint (best.pt, optimizer stripped) stores the model in FP16: two bytes per
parameter and per floating-point buffer, plus about 700 bytes of pickled structure per module. An
ONNX export stores FP32: four bytes per parameter of the BatchNorm-fused graph. Both are computed from
the model's architecture built on PyTorch's "meta" device (shapes only, no memory, no
initialisation), so even a YOLOv8x is sized in well under a second; the files written after training
are then measured for real.

Sizes are in MiB (1024 * 1024 bytes), like the export side's budget.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUDGET_MB = 100.0
MB = 1024 * 1024
# Measured on Ultralytics 8.4 checkpoints: pickled module structure per nn.Module, and the run's
# metadata (train_args, date, version, metrics).
_BYTES_PER_MODULE = 700
_CHECKPOINT_METADATA = 16 * 1024
# Measured on ONNX exports (opset 17-18, onnxslim): node and initializer names per nn.Module.
_ONNX_BYTES_PER_MODULE = 1300


class BudgetError(ValueError):
    """A model's files would be (or are) larger than the weight budget."""


@dataclass(frozen=True)
class SizeEstimate:
    """Predicted file sizes of one model.

    Attributes:
        name: What to pass as --model to get this model (e.g. "yolov8s.yaml").
        scale: The family's scale letter (n, s, m, l, x), or "" when the model has no scales.
        params: Parameters (before BatchNorm fusion).
        checkpoint_mb: Predicted size of the trained best.pt (FP16, optimizer stripped).
        onnx_mb: Predicted size of the FP32 ONNX export.
    """

    name: str
    scale: str
    params: int
    checkpoint_mb: float
    onnx_mb: float

    def largest_mb(self, onnx: bool) -> float:
        """The size that the budget is checked against: the checkpoint, or the ONNX too when exported."""
        return max(self.checkpoint_mb, self.onnx_mb) if onnx else self.checkpoint_mb


def _architecture(model: str | Path) -> tuple[dict, str]:
    """The model's YAML dict and a name for it, from a YAML name/path or a .pt checkpoint."""
    from ultralytics.nn.tasks import yaml_model_load

    m = str(model)
    if m.endswith((".yaml", ".yml")):
        try:
            return yaml_model_load(m), Path(m).name
        except FileNotFoundError:
            raise ValueError(
                f"--model: expected a model YAML such as yolov8s.yaml or a .pt file, found {m!r} "
                "(no such file, and Ultralytics has no model of that name)"
            ) from None
    if m.endswith(".pt"):
        p = Path(m)
        if not p.is_file():
            raise ValueError(f"--model: file not found: {m}")
        from ultralytics.nn.tasks import load_checkpoint

        net, _ = load_checkpoint(str(p), device="cpu")
        yaml = getattr(net, "yaml", None)
        if not isinstance(yaml, dict):
            raise ValueError(
                f"--model: {m} holds no model architecture (no 'yaml' in the checkpoint's model)"
            )
        return copy.deepcopy(yaml), p.name
    raise ValueError(f"--model: expected a model YAML (e.g. yolov8s.yaml) or a .pt checkpoint, found {m!r}")


def _scale_name(name: str, scale: str, scales: list[str]) -> str:
    """yolov8s.yaml -> yolov8m.yaml for scale m; other names get ' (scale m)'."""
    pattern = re.compile(r"^(yolo(?:e-)?v?\d+)([" + "".join(scales) + r"])(.*\.ya?ml)$")
    hit = pattern.match(name)
    if hit:
        return f"{hit.group(1)}{scale}{hit.group(3)}"
    return f"{name} (scale {scale})"


def _estimate(arch: dict, nc: int, name: str, scale: str, imgsz: int) -> SizeEstimate:
    import torch
    from ultralytics.nn.tasks import parse_model

    d = copy.deepcopy(arch)
    d["nc"] = int(nc)
    if scale:
        d["scale"] = scale
    with torch.device("meta"):
        seq, _ = parse_model(d, ch=d.get("channels", 3), verbose=False)
    params = sum(p.numel() for p in seq.parameters())
    buffers = sum(b.numel() for b in seq.buffers() if b.is_floating_point())
    modules = sum(1 for _ in seq.modules())
    checkpoint = 2 * (params + buffers) + _BYTES_PER_MODULE * modules + _CHECKPOINT_METADATA
    # Fusion folds each BatchNorm (4 numbers per channel) into its convolution (1 bias per channel).
    bn_channels = sum(m.num_features for m in seq.modules() if isinstance(m, torch.nn.BatchNorm2d))
    fused = params - bn_channels
    # A fixed input size folds the anchor grid (x, y, stride per anchor) into constants.
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    onnx = 4 * fused + _ONNX_BYTES_PER_MODULE * modules + 12 * anchors
    return SizeEstimate(name, scale, int(params), checkpoint / MB, onnx / MB)


def estimate_sizes(model: str | Path, nc: int, imgsz: int = 640) -> tuple[SizeEstimate, list[SizeEstimate]]:
    """Predicted sizes of a model and of every scale of its family.

    Args:
        model: A model YAML name or path (yolov8s.yaml, yolo11m.yaml) or a .pt checkpoint.
        nc: Number of classes the model will be trained for (the head depends on it).
        imgsz: Input size of the ONNX export.

    Returns:
        (the model's estimate, estimates of every scale of its family by ascending size; empty when
        the architecture has no scales).
    """
    arch, name = _architecture(model)
    scales = list((arch.get("scales") or {}).keys())
    own_scale = str(arch.get("scale") or (scales[0] if scales else ""))
    own = _estimate(arch, nc, name, own_scale, imgsz)
    family = []
    for s in scales:
        family.append(own if s == own_scale else _estimate(arch, nc, _scale_name(name, s, scales), s, imgsz))
    family.sort(key=lambda e: e.checkpoint_mb)
    return own, family


def check_budget_before_training(
    model: str | Path, nc: int, budget_mb: float, onnx: bool = False, imgsz: int = 640
) -> SizeEstimate:
    """Refuse a model whose trained files would exceed the budget, naming the largest one that fits.

    Args:
        model: A model YAML name or path, or a .pt checkpoint.
        nc: Number of classes.
        budget_mb: Largest acceptable file size in MiB.
        onnx: The run will also export an FP32 ONNX, which must fit too.
        imgsz: Input size of that ONNX.

    Returns:
        The model's estimate when it fits.

    Raises:
        BudgetError: When it does not; the message names the largest model of the family that fits.
    """
    if not budget_mb > 0:
        raise ValueError(f"budget_mb: expected a positive size in MB, found {budget_mb!r}")
    own, family = estimate_sizes(model, nc, imgsz)
    what = "best.pt and its ONNX" if onnx else "best.pt"
    if own.largest_mb(onnx) <= budget_mb:
        return own
    fits = [e for e in family if e.largest_mb(onnx) <= budget_mb]
    sizes = ", ".join(f"{e.name} {e.largest_mb(onnx):.1f} MB" for e in family)
    if fits:
        advice = (
            f"the largest of its family that fits is {fits[-1].name} ({fits[-1].largest_mb(onnx):.1f} MB)"
        )
    elif family:
        advice = "no model of its family fits; raise --budget-mb knowingly"
    else:
        advice = (
            "its architecture has no smaller scales; choose a smaller model or raise --budget-mb knowingly"
        )
    raise BudgetError(
        f"--model {own.name}: {what} would be {own.largest_mb(onnx):.1f} MB ({own.params / 1e6:.1f} M parameters), "
        f"over the weight budget of {budget_mb:g} MB; {advice}" + (f" [{sizes}]" if family else "")
    )


def file_sizes_mb(paths: dict[str, Path]) -> dict[str, float]:
    """Sizes in MiB of the files that exist."""
    return {k: Path(p).stat().st_size / MB for k, p in paths.items() if p is not None and Path(p).is_file()}


def size_table(sizes: dict[str, float], budget_mb: float, estimate: SizeEstimate | None = None) -> str:
    """A small text table: file, size, predicted size, within budget."""
    lines = [f"{'file':<12} {'MB':>8} {'predicted':>10}  budget {budget_mb:g} MB"]
    for name, mb in sizes.items():
        pred = ""
        if estimate is not None:
            pred = f"{estimate.checkpoint_mb:.1f}" if name.endswith(".pt") else f"{estimate.onnx_mb:.1f}"
        lines.append(f"{name:<12} {mb:>8.1f} {pred:>10}  {'ok' if mb <= budget_mb else 'OVER BUDGET'}")
    return "\n".join(lines)
