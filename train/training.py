"""Ultralytics training under a weight budget: refuse before training, measure the files after.

There is no hand-written trainer: ``train`` checks the budget from the model's architecture, calls
Ultralytics' ``model.train``, exports the ONNX when asked, measures best.pt (and the ONNX) for real and
writes a run summary with a size table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetile.runtime.files import read_yaml_mapping, write_text_atomic

from .budget import DEFAULT_BUDGET_MB, SizeEstimate, check_budget_before_training, file_sizes_mb, size_table


@dataclass(frozen=True)
class TrainOptions:
    """What Ultralytics is asked to do.

    Attributes:
        model: Model YAML (random initialisation: yolov8n.yaml ... yolo11x.yaml) or a .pt to start from.
        imgsz: Training input size in pixels (tiles are resized to it).
        epochs: Training epochs.
        batch: Batch size (-1: Ultralytics picks one that fills the GPU).
        device: "cpu", a CUDA index ("0") or "" for Ultralytics' choice.
        workers: Data-loading processes.
        seed: Ultralytics' random seed.
        patience: Epochs without improvement before stopping early.
        project: Folder that holds the run folder.
        name: Run folder name.
        overrides: Any other Ultralytics training argument (from --hyp and --set).
    """

    model: str = "yolov8s.yaml"
    imgsz: int = 640
    epochs: int = 100
    batch: int = 16
    device: str = ""
    workers: int = 2
    seed: int = 0
    patience: int = 50
    project: str = "runs/train"
    name: str = "exp"
    overrides: Mapping[str, object] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: The Ultralytics run folder.
        best: best.pt.
        onnx: The exported ONNX, or None.
        sizes_mb: Measured file sizes.
        estimate: The size predicted before training.
        budget_mb: The budget.
        within_budget: Every file fits.
        metrics: Ultralytics' final validation metrics (tile-level, not full-photo).
        export_error: Why the ONNX export failed, or None.
    """

    run_dir: Path
    best: Path
    onnx: Path | None
    sizes_mb: dict[str, float]
    estimate: SizeEstimate
    budget_mb: float
    within_budget: bool
    metrics: dict[str, float]
    export_error: str | None = None

    @property
    def ok(self) -> bool:
        """Within budget and, when asked, exported."""
        return self.within_budget and self.export_error is None

    def summary(self) -> str:
        return (
            f"run: {self.run_dir}\n"
            + "\n".join(f"  {k} {v:.4f}" for k, v in self.metrics.items())
            + "\n"
            + size_table(self.sizes_mb, self.budget_mb, self.estimate)
            + (
                ""
                if self.within_budget
                else "\nOVER BUDGET: choose a smaller model or raise --budget-mb knowingly"
            )
            + (f"\nEXPORT FAILED: {self.export_error}" if self.export_error else "")
        )


def train_keys() -> set[str]:
    """Every argument Ultralytics' trainer accepts."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return set(DEFAULT_CFG_DICT)


def load_hyp(path: str | Path) -> dict[str, object]:
    """Hyperparameters from a YAML file (e.g. edgetile tune's best_hyperparameters.yaml).

    Raises:
        ValueError: When the file is not a flat mapping of Ultralytics training arguments.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--hyp: file not found: {p}")
    doc = read_yaml_mapping(p, "name: value", "--hyp")
    check_train_args(doc, f"--hyp {p}")
    return dict(doc)


# Arguments that a hyperparameter file must not change: they are the run's identity, not its tuning.
_NOT_HYPERPARAMETERS = {"data", "model", "project", "name", "mode", "task", "resume", "exist_ok"}


def check_train_args(args: Mapping[str, object], where: str) -> None:
    """Refuse names Ultralytics does not know (a typo would otherwise be ignored or crash late)."""
    known = train_keys()
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        raise ValueError(f"{where}: expected Ultralytics training arguments, found unknown {unknown}")
    bad = sorted(k for k in args if k in _NOT_HYPERPARAMETERS)
    if bad:
        raise ValueError(f"{where}: expected hyperparameters, found {bad}; pass those as options instead")


def data_classes(data_yaml: str | Path) -> list[str]:
    """Class names of an Ultralytics data.yaml."""
    p = Path(data_yaml)
    if not p.is_file():
        raise ValueError(f"--data: file not found: {p}")
    doc = read_yaml_mapping(p, "path, train, val, names", "--data")
    names = doc.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(doc.get("nc"), int):
        return [f"class_{i}" for i in range(doc["nc"])]
    raise ValueError(f"--data {p}: expected 'names' (or 'nc'), found neither")


def fold_data(data_yaml: str | Path, fold: int | None) -> Path:
    """The data.yaml of fold k, written by ``edgetile dataset tiles --folds K`` beside data.yaml."""
    p = Path(data_yaml)
    if fold is None:
        return p
    f = p.parent / "folds" / f"fold{fold}.yaml"
    if not f.is_file():
        have = (
            sorted(x.stem for x in (p.parent / "folds").glob("fold*.yaml"))
            if (p.parent / "folds").is_dir()
            else []
        )
        raise ValueError(
            f"--fold {fold}: expected {f} (made by 'edgetile dataset tiles --folds K'), found "
            + (f"only {', '.join(have)}" if have else "no folds beside this data.yaml")
        )
    return f


def _export_errors() -> tuple[type[BaseException], ...]:
    """What a failed export raises: edgetile.export's ExportError when present."""
    try:
        from edgetile.export.artifacts import ExportError
    except ImportError:
        return (RuntimeError,)
    return (ExportError, RuntimeError)


def export_onnx(best: Path, imgsz: int, budget_mb: float) -> Path:
    """Export best.pt to ONNX: edgetile.export when present (checked export), else Ultralytics directly."""
    try:
        from edgetile.export.onnx import OnnxExportConfig
        from edgetile.export.onnx import export_onnx as checked_export
    except ImportError:
        checked_export = None
    if checked_export is not None:
        # The budget is judged by train itself (a size table, exit 1), so the exporter is not asked to raise.
        return Path(
            checked_export(
                best,
                best.with_suffix(".onnx"),
                OnnxExportConfig(imgsz=imgsz, batch=None, budget_mb=float("inf")),
            )
        )
    from ultralytics import YOLO

    return Path(YOLO(str(best)).export(format="onnx", dynamic=True, simplify=True, imgsz=imgsz))


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform reports it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def use_every_cpu_core(trainer) -> None:
    """Ultralytics callback: train on every core this process may use when the device is the CPU.

    Ultralytics' select_device sets torch to ``cpu_count - 1`` threads for CPU training (NUM_THREADS,
    at most 8): one thread on a 2-core machine, half of its arithmetic left idle. Registered for
    ``on_pretrain_routine_start``, which runs after the trainer has chosen its device.
    """
    if trainer.device.type == "cpu":
        import torch

        torch.set_num_threads(cpu_cores())


def add_cpu_threads_callback(model) -> None:
    """Register use_every_cpu_core on an Ultralytics YOLO model before its train().

    Not for tune(): Ultralytics' tuner builds its trainers without the model's callbacks.
    """
    model.add_callback("on_pretrain_routine_start", use_every_cpu_core)


def train(
    data: str | Path,
    options: TrainOptions | None = None,
    fold: int | None = None,
    budget_mb: float = DEFAULT_BUDGET_MB,
    export: bool = False,
) -> TrainResult:
    """Train an Ultralytics detector within a weight budget.

    Args:
        data: An Ultralytics data.yaml (e.g. from ``edgetile dataset tiles``).
        options: Model, input size, epochs and any Ultralytics overrides.
        fold: Train on folds/fold{k}.yaml beside data instead.
        budget_mb: Largest acceptable size of best.pt (and of the ONNX when exported), in MiB.
        export: Also export best.pt to ONNX (dynamic batch) beside it.

    Returns:
        The TrainResult with measured sizes (within_budget False when a file is over).

    Raises:
        BudgetError: Before training, when the model cannot fit the budget (seconds, not hours).
        ValueError: Bad data, fold or overrides.
    """
    opt = options or TrainOptions()
    data_path = fold_data(data, fold)
    names = data_classes(data_path)
    check_train_args(opt.overrides, "overrides")
    estimate = check_budget_before_training(opt.model, len(names), budget_mb, onnx=export, imgsz=opt.imgsz)

    from ultralytics import YOLO

    model = YOLO(opt.model)
    add_cpu_threads_callback(model)
    args = dict(
        data=str(data_path),
        imgsz=opt.imgsz,
        epochs=opt.epochs,
        batch=opt.batch,
        workers=opt.workers,
        seed=opt.seed,
        patience=opt.patience,
        project=str(Path(opt.project).resolve()),
        name=opt.name,
    )
    if opt.device:
        args["device"] = opt.device
    args.update(opt.overrides)
    model.train(**args)
    trainer = model.trainer
    run_dir = Path(trainer.save_dir)
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    metrics = {
        k: float(v)
        for k, v in (getattr(trainer, "metrics", None) or {}).items()
        if isinstance(v, (int, float))
    }
    onnx, export_error = None, None
    if export:
        try:
            onnx = export_onnx(best, opt.imgsz, budget_mb)
        except _export_errors() as exc:
            # The trained weights are kept and reported; the failed export is the run's problem line.
            export_error = f"ONNX export of {best} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    sizes = file_sizes_mb({best.name: best, **({onnx.name: onnx} if onnx is not None else {})})
    result = TrainResult(
        run_dir,
        best,
        onnx,
        sizes,
        estimate,
        budget_mb,
        all(v <= budget_mb for v in sizes.values()),
        metrics,
        export_error,
    )
    summary = {
        "data": str(data_path),
        "fold": fold,
        "model": opt.model,
        "options": {**asdict(opt), "overrides": dict(opt.overrides)},
        "best": str(best),
        "onnx": str(onnx) if onnx else None,
        "sizes_mb": sizes,
        "predicted_mb": {"checkpoint": estimate.checkpoint_mb, "onnx": estimate.onnx_mb},
        "params": estimate.params,
        "budget_mb": budget_mb,
        "within_budget": result.within_budget,
        "export_error": export_error,
        "metrics": metrics,
    }
    write_text_atomic(run_dir / "edgetile_summary.json", json.dumps(summary, indent=1, default=str))
    (run_dir / "edgetile_summary.txt").write_text(result.summary() + "\n")
    return result
