"""Progressive resolution and staged fine-tuning: several trainings in a row, each from the last one's best.

The Lacmus winner trained at 640 then at 1024; the SIIM notes trained at lr 1e-3, then at 1e-4 from the
best checkpoint; the whale solution grew its input 229 -> 384 -> 512. ``train_stages`` runs such a list
of stages with :func:`edgetile.train.training.train` (Ultralytics underneath), each stage starting from
the previous stage's best.pt at its own input size, epochs and learning rate, all in one run folder with
one summary.

Two Ultralytics defaults would defeat a stage's learning rate, so a stage sets them unless told
otherwise: ``optimizer='auto'`` ignores ``lr0`` altogether (it picks SGD or AdamW and its own rate),
so stages use AdamW; and the 3-epoch warm-up starts biases at ``warmup_bias_lr`` 0.1, which would undo
a fine-tuning stage, so stages after the first train without warm-up. Either can be set per stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgetile.runtime.files import write_text_atomic

from .budget import DEFAULT_BUDGET_MB, check_budget_before_training
from .training import TrainOptions, TrainResult, check_train_args, data_classes, fold_data, train

STAGE_OPTIMIZER = "AdamW"


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        imgsz: Training input size in pixels.
        epochs: Epochs of this stage.
        lr0: Initial learning rate of this stage.
        overrides: Other Ultralytics training arguments for this stage only (e.g. mosaic: 0).
    """

    imgsz: int
    epochs: int
    lr0: float
    overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.imgsz, bool) or not isinstance(self.imgsz, int) or self.imgsz < 32:
            raise ValueError(f"imgsz: expected an integer of at least 32 pixels, found {self.imgsz!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, found {self.epochs!r}")
        if isinstance(self.lr0, bool) or not isinstance(self.lr0, (int, float)) or not 0 < self.lr0 < 1:
            raise ValueError(f"lr0: expected a learning rate in (0, 1), found {self.lr0!r}")

    @property
    def words(self) -> str:
        """The stage as the command line writes it: IMGSZ:EPOCHS:LR."""
        return f"{self.imgsz}:{self.epochs}:{self.lr0:g}"


def parse_stage(word: str) -> Stage:
    """``IMGSZ:EPOCHS:LR``, e.g. ``640:30:1e-3``.

    Raises:
        ValueError: Not three fields, or a field out of range.
    """
    parts = word.split(":")
    if len(parts) != 3:
        raise ValueError(f"--stages: expected IMGSZ:EPOCHS:LR (e.g. 640:30:1e-3), found {word!r}")
    try:
        imgsz, epochs, lr0 = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(
            f"--stages: expected IMGSZ:EPOCHS:LR as integer:integer:number, found {word!r}"
        ) from None
    try:
        return Stage(imgsz, epochs, lr0)
    except ValueError as exc:
        raise ValueError(f"--stages {word}: {exc}") from None


def load_stages(path: str | Path) -> list[Stage]:
    """Stages from a YAML file: a list of mappings with imgsz, epochs, lr0 and any other training argument.

    Example::

        - {imgsz: 640, epochs: 30, lr0: 1.0e-3}
        - {imgsz: 1024, epochs: 10, lr0: 1.0e-4, mosaic: 0}

    Raises:
        ValueError: Unreadable, not a list of mappings, a missing field or an unknown argument.
    """
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--stages {p}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--stages {p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(doc, dict) and "stages" in doc:
        doc = doc["stages"]
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"--stages {p}: expected a list of stages (imgsz, epochs, lr0), found {doc!r}")
    stages = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise ValueError(f"--stages {p}: stage {i + 1}: expected a mapping, found {entry!r}")
        missing = [k for k in ("imgsz", "epochs", "lr0") if k not in entry]
        if missing:
            raise ValueError(
                f"--stages {p}: stage {i + 1}: expected imgsz, epochs and lr0, missing {missing}"
            )
        rest = {k: v for k, v in entry.items() if k not in ("imgsz", "epochs", "lr0")}
        check_train_args(rest, f"--stages {p}: stage {i + 1}")
        try:
            stages.append(Stage(entry["imgsz"], entry["epochs"], float(entry["lr0"]), rest))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--stages {p}: stage {i + 1}: {exc}") from None
    return stages


def parse_stages(words: Sequence[str]) -> list[Stage]:
    """``--stages`` words: IMGSZ:EPOCHS:LR each, or one YAML file of stages."""
    if len(words) == 1 and Path(words[0]).suffix.lower() in (".yaml", ".yml"):
        return load_stages(words[0])
    if not words:
        raise ValueError("--stages: expected at least one stage, found none")
    return [parse_stage(w) for w in words]


@dataclass
class StagesResult:
    """What a staged training produced.

    Attributes:
        run_dir: The folder holding every stage's Ultralytics run and the summary.
        stages: The stages as run.
        results: Each stage's TrainResult.
        starts: The weights each stage started from.
        seconds: Each stage's wall time.
    """

    run_dir: Path
    stages: list[Stage]
    results: list[TrainResult]
    starts: list[str]
    seconds: list[float]

    @property
    def best(self) -> Path:
        """The last stage's best.pt: the model the stages produced."""
        return self.results[-1].best

    @property
    def onnx(self) -> Path | None:
        return self.results[-1].onnx

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def rows(self) -> list[dict]:
        out = []
        for i, (s, r, start, sec) in enumerate(zip(self.stages, self.results, self.starts, self.seconds)):
            out.append(
                {
                    "stage": i + 1,
                    "imgsz": s.imgsz,
                    "epochs": s.epochs,
                    "lr0": s.lr0,
                    "start": start,
                    "best": str(r.best),
                    "run_dir": str(r.run_dir),
                    "seconds": round(sec, 1),
                    "within_budget": r.within_budget,
                    "metrics": r.metrics,
                    **({"overrides": dict(s.overrides)} if s.overrides else {}),
                }
            )
        return out

    def table(self) -> str:
        """One line per stage: size, epochs, lr, tile-level mAPs, time and where it started."""
        head = (
            f"{'stage':>5} {'imgsz':>5} {'epochs':>6} {'lr0':>8} {'mAP50':>7} {'mAP50-95':>8} {'s':>7}  start"
        )
        lines = [head]
        for row in self.rows():
            m = row["metrics"]
            lines.append(
                f"{row['stage']:>5} {row['imgsz']:>5} {row['epochs']:>6} {row['lr0']:>8g} "
                f"{m.get('metrics/mAP50(B)', float('nan')):>7.4f} {m.get('metrics/mAP50-95(B)', float('nan')):>8.4f} "
                f"{row['seconds']:>7.0f}  {row['start']}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        last = self.results[-1]
        return (
            f"run: {self.run_dir} ({len(self.stages)} stage(s))\n{self.table()}\n"
            f"best: {self.best}" + (f"\nonnx: {self.onnx}" if self.onnx else "") + "\n" + last.summary()
        )


def run_folder(project: str | Path, name: str) -> Path:
    """project/name, numbered on (name2, name3, ...) when it holds a run already, as Ultralytics does."""
    base = Path(project).resolve() / name
    path, n = base, 2
    while path.exists() and any(path.iterdir()):
        path, n = base.with_name(f"{name}{n}"), n + 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_stages(
    data: str | Path,
    stages: Sequence[Stage],
    options: TrainOptions | None = None,
    fold: int | None = None,
    budget_mb: float = DEFAULT_BUDGET_MB,
    export: bool = False,
) -> StagesResult:
    """Train stage after stage, each from the previous stage's best weights at its own lr.

    Args:
        data: An Ultralytics data.yaml (e.g. from ``edgetile dataset tiles``).
        stages: The stages, in order (imgsz, epochs, lr0 and per-stage overrides).
        options: The model of the first stage and what every stage shares (batch, device, seed,
            overrides); its imgsz and epochs are replaced by each stage's. project/name is the run
            folder that holds the stages (``stage1``, ``stage2``, ...) and the summary.
        fold: Train on folds/fold{k}.yaml beside data instead.
        budget_mb: Largest acceptable best.pt (and ONNX when exported), checked before the first stage.
        export: Export the last stage's best.pt to ONNX.

    Returns:
        The StagesResult; RUN/stages.json and RUN/stages.txt hold the summary.

    Raises:
        BudgetError: Before the first stage, when the model cannot fit the budget.
        ValueError: No stages, bad data, fold or overrides.
    """
    if not stages:
        raise ValueError("stages: expected at least one stage, found none")
    opt = options or TrainOptions()
    check_train_args(opt.overrides, "overrides")
    for i, s in enumerate(stages):
        check_train_args(s.overrides, f"stage {i + 1}")
    names = data_classes(fold_data(data, fold))
    # The largest input decides the ONNX's size; best.pt does not depend on it.
    check_budget_before_training(
        opt.model, len(names), budget_mb, onnx=export, imgsz=max(s.imgsz for s in stages)
    )
    run_dir = run_folder(opt.project, opt.name)
    results: list[TrainResult] = []
    starts: list[str] = []
    seconds: list[float] = []
    start = opt.model
    for i, s in enumerate(stages):
        overrides: dict[str, object] = {"optimizer": STAGE_OPTIMIZER}
        if i > 0:
            overrides["warmup_epochs"] = 0
        overrides.update(opt.overrides)
        overrides.update(s.overrides)
        overrides["lr0"] = s.lr0
        stage_opt = replace(
            opt,
            model=str(start),
            imgsz=s.imgsz,
            epochs=s.epochs,
            project=str(run_dir),
            name=f"stage{i + 1}",
            overrides=overrides,
        )
        t0 = time.perf_counter()
        r = train(data, stage_opt, fold=fold, budget_mb=budget_mb, export=export and i == len(stages) - 1)
        seconds.append(time.perf_counter() - t0)
        results.append(r)
        starts.append(str(start))
        start = r.best
        _write_summary(
            run_dir,
            data,
            fold,
            opt,
            budget_mb,
            StagesResult(run_dir, list(stages[: i + 1]), results, starts, seconds),
        )
    return StagesResult(run_dir, list(stages), results, starts, seconds)


def _write_summary(
    run_dir: Path, data: str | Path, fold: int | None, opt: TrainOptions, budget_mb: float, res: StagesResult
) -> None:
    """stages.json and stages.txt, rewritten after every stage so an interrupted run says how far it got."""
    doc = {
        "data": str(data),
        "fold": fold,
        "model": opt.model,
        "budget_mb": budget_mb,
        "stages": res.rows(),
        "best": str(res.best),
        "onnx": str(res.onnx) if res.onnx else None,
        "ok": res.ok,
    }
    write_text_atomic(run_dir / "stages.json", json.dumps(doc, indent=1, default=str))
    (run_dir / "stages.txt").write_text(res.summary() + "\n")
