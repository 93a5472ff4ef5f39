"""Hyperparameter search on a mini dataset: Ultralytics' genetic evolution, or the same space on Ray Tune.

The search space is a list of Ultralytics training arguments with bounds: by default lr0, lrf and
momentum (the winning LADD recipe evolved those three). Any numeric argument can be named; the known
ones have Ultralytics' own bounds, others need NAME=LO:HI. The results come out as a CSV (one row
per trained candidate) and a best-hyperparameters YAML that ``edgetile train --hyp`` reads.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_SPACE = ("lr0", "lrf", "momentum")
# Ultralytics' own bounds (engine/tuner.py): (min, max) or (min, max, mutation gain).
KNOWN_BOUNDS: Mapping[str, tuple[float, ...]] = {
    "lr0": (1e-5, 1e-2),
    "lrf": (0.01, 1.0),
    "momentum": (0.7, 0.98, 0.3),
    "weight_decay": (0.0, 0.001),
    "warmup_epochs": (0.0, 5.0),
    "warmup_momentum": (0.0, 0.95),
    "box": (1.0, 20.0),
    "cls": (0.1, 4.0),
    "dfl": (0.4, 12.0),
    "hsv_h": (0.0, 0.1),
    "hsv_s": (0.0, 0.9),
    "hsv_v": (0.0, 0.9),
    "degrees": (0.0, 45.0),
    "translate": (0.0, 0.9),
    "scale": (0.0, 0.95),
    "shear": (0.0, 10.0),
    "perspective": (0.0, 0.001),
    "flipud": (0.0, 1.0),
    "fliplr": (0.0, 1.0),
    "bgr": (0.0, 1.0),
    "mosaic": (0.0, 1.0),
    "mixup": (0.0, 1.0),
    "cutmix": (0.0, 1.0),
    "copy_paste": (0.0, 1.0),
    "close_mosaic": (0.0, 10.0),
}


def parse_space(items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """Search space from NAME or NAME=LO:HI items.

    Raises:
        ValueError: For unknown names, names without known bounds and no LO:HI, and bad bounds.
    """
    from .training import train_keys

    known = train_keys()
    space: dict[str, tuple[float, ...]] = {}
    for item in items:
        name, _, rng = item.partition("=")
        name = name.strip()
        if name not in known:
            raise ValueError(
                f"--space {item!r}: expected an Ultralytics training argument, found unknown {name!r}"
            )
        if rng:
            try:
                lo, hi = (float(v) for v in rng.split(":"))
            except ValueError:
                raise ValueError(
                    f"--space {item!r}: expected NAME=LO:HI with two numbers, found {rng!r}"
                ) from None
            if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
                raise ValueError(f"--space {item!r}: expected LO < HI, found {lo:g}:{hi:g}")
            space[name] = (lo, hi)
        elif name in KNOWN_BOUNDS:
            space[name] = KNOWN_BOUNDS[name]
        else:
            raise ValueError(f"--space {item!r}: no default bounds for {name!r}; give them as {name}=LO:HI")
    if not space:
        raise ValueError("--space: expected at least one hyperparameter, found none")
    return space


@dataclass(frozen=True)
class TuneOptions:
    """A search.

    Attributes:
        model: Model YAML or .pt.
        space: Hyperparameter -> (min, max[, gain]).
        iterations: Candidates to train.
        epochs: Epochs per candidate (short: it ranks, it does not finish training).
        imgsz: Training input size.
        batch: Batch size.
        device: "cpu", a CUDA index, or "" for Ultralytics' choice.
        workers: Data-loading processes.
        optimizer: Fixed for the whole search and written to the result, because the best lr0 of one
            optimizer is not the best of another.
        out: Output folder (tune_results.csv, best_hyperparameters.yaml, Ultralytics' files).
        overrides: Other fixed Ultralytics training arguments.
    """

    model: str = "yolov8n.yaml"
    space: Mapping[str, tuple[float, ...]] = field(
        default_factory=lambda: {k: KNOWN_BOUNDS[k] for k in DEFAULT_SPACE}
    )
    iterations: int = 30
    epochs: int = 10
    imgsz: int = 640
    batch: int = 16
    device: str = ""
    workers: int = 2
    optimizer: str = "AdamW"
    out: str = "runs/tune"
    overrides: Mapping[str, object] = field(default_factory=dict)


@dataclass
class TuneResult:
    """Where the search wrote its results.

    Attributes:
        csv: tune_results.csv, one row per candidate: iteration, fitness, the hyperparameters, metrics.
        best_yaml: best_hyperparameters.yaml for ``edgetile train --hyp``.
        best: The best candidate's hyperparameters.
        best_fitness: Its fitness (Ultralytics: mAP@0.5:0.95 on the validation tiles).
        rows: Every candidate.
    """

    csv: Path
    best_yaml: Path
    best: dict[str, object]
    best_fitness: float
    rows: list[dict]


def _train_args(opt: TuneOptions, data: Path) -> dict:
    args = dict(
        data=str(data),
        epochs=opt.epochs,
        imgsz=opt.imgsz,
        batch=opt.batch,
        workers=opt.workers,
        optimizer=opt.optimizer,
        plots=False,
    )
    if opt.device:
        args["device"] = opt.device
    args.update(opt.overrides)
    return args


def tune(
    data: str | Path,
    options: TuneOptions | None = None,
    fold: int | None = None,
    ray: bool = False,
    ray_search: str = "random",
    grace_period: int = 1,
    resume: bool = False,
) -> TuneResult:
    """Search hyperparameters with Ultralytics' genetic evolution (or Ray Tune with ray=True).

    Args:
        data: A (mini) data.yaml.
        options: Model, space, iterations, epochs.
        fold: Use folds/fold{k}.yaml beside data.
        ray: Run the same space on Ray Tune (pip install 'edgetile[ray]'); several machines can join
            one Ray cluster (``ray start``) and share the trials.
        ray_search: Ray's search algorithm: "random" (no extra package) or "optuna" (needs optuna).
        grace_period: Ray's ASHA scheduler: epochs before a poor trial may be stopped.
        resume: Continue the search already in options.out (its evolve/ or ray/ folder).

    Returns:
        The TuneResult.

    Raises:
        ValueError: Bad space, data or overrides, or an earlier search in out without resume.
    """
    from .training import check_train_args, fold_data

    opt = options or TuneOptions()
    # Absolute paths: Ray runs each trial in a folder of its own.
    data_path = fold_data(data, fold).resolve()
    if Path(opt.model).is_file():
        opt = replace(opt, model=str(Path(opt.model).resolve()))
    check_train_args(opt.overrides, "overrides")
    if opt.iterations < 1:
        raise ValueError(f"iterations: expected at least 1, found {opt.iterations}")
    out = Path(opt.out).resolve()
    # Ultralytics numbers a folder that exists (evolve2, evolve3...) unless it resumes, so a second
    # search into the same --out is refused rather than written somewhere else.
    search_dir = out / ("ray" if ray else "evolve")
    if search_dir.exists() and not resume:
        raise ValueError(
            f"--out {opt.out}: a search is already there ({search_dir.name}/); continue it with "
            "--resume or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    if ray:
        rows = _tune_ray(data_path, opt, search_dir, ray_search, grace_period, resume)
    else:
        rows = _tune_genetic(data_path, opt, search_dir, resume)
    ok = [r for r in rows if r.get("fitness") is not None and math.isfinite(float(r["fitness"]))]
    if not ok:
        raise RuntimeError(f"tune: no candidate finished training; see the Ultralytics log in {out}")
    best_row = max(ok, key=lambda r: float(r["fitness"]))
    best = {k: best_row[k] for k in opt.space}
    best["optimizer"] = opt.optimizer
    csv_path = out / "tune_results.csv"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    best_yaml = out / "best_hyperparameters.yaml"
    lines = [
        f"# edgetile tune: best of {len(rows)} candidate(s), fitness {float(best_row['fitness']):.5f} "
        f"(iteration {best_row.get('iteration')}); use with: edgetile train --hyp {best_yaml.name}"
    ]
    for k, v in best.items():
        lines.append(f"{k}: {v!r}" if isinstance(v, (int, float)) else f"{k}: {v}")
    best_yaml.write_text("\n".join(lines) + "\n")
    return TuneResult(csv_path, best_yaml, best, float(best_row["fitness"]), rows)


def _tune_genetic(data: Path, opt: TuneOptions, search_dir: Path, resume: bool) -> list[dict]:
    from ultralytics import YOLO

    model = YOLO(opt.model)
    # The search goes to out/evolve, each candidate's training to out/train, out/train2... (Ultralytics
    # deletes all but the best).
    model.tune(
        iterations=opt.iterations,
        space=dict(opt.space),
        project=str(search_dir.parent),
        name=search_dir.name,
        resume=resume,
        **_train_args(opt, data),
    )
    results = search_dir / "tune_results.ndjson"
    if not results.is_file():
        raise RuntimeError(f"tune: Ultralytics wrote no {results.name} in {search_dir}")
    rows = []
    for line in results.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        row: dict = {"iteration": rec.get("iteration"), "fitness": rec.get("fitness")}
        row.update({k: rec.get("hyperparameters", {}).get(k) for k in opt.space})
        # Ultralytics keeps metrics per dataset ({"datasets": {name: {...}}}); one dataset is tuned here.
        per_dataset = rec.get("datasets") or {}
        metrics = next(iter(per_dataset.values()), None) if len(per_dataset) == 1 else rec.get("metrics")
        if isinstance(metrics, dict):
            row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "fitness"})
        rows.append(row)
    return rows


def _tune_ray(
    data: Path, opt: TuneOptions, search_dir: Path, search: str, grace_period: int, resume: bool
) -> list[dict]:
    try:
        import ray  # noqa: F401
        from ray import tune as rtune
    except ImportError:
        raise ValueError("--ray: Ray Tune is not installed; pip install 'edgetile[ray]'") from None
    if search not in ("random", "optuna"):
        raise ValueError(f"--ray-search: expected random or optuna, found {search!r}")
    if search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ValueError("--ray-search optuna: optuna is not installed; pip install optuna") from None
    from ultralytics import YOLO

    model = YOLO(opt.model)
    space = {k: rtune.uniform(float(b[0]), float(b[1])) for k, b in opt.space.items()}
    grid = model.tune(
        use_ray=True,
        space=space,
        iterations=opt.iterations,
        search_alg=search,
        grace_period=grace_period,
        project=str(search_dir.parent),
        name=search_dir.name,
        resume=resume,
        **_train_args(opt, data),
    )
    rows = []
    for i, res in enumerate(grid):
        metrics = res.metrics or {}
        fitness = metrics.get("fitness")
        if fitness is None:
            fitness = metrics.get("metrics/mAP50-95(B)")
        row: dict = {"iteration": i + 1, "fitness": None if fitness is None else float(fitness)}
        row.update({k: (res.config or {}).get(k) for k in opt.space})
        row.update(
            {k: v for k, v in metrics.items() if k.startswith("metrics/") and isinstance(v, (int, float))}
        )
        if res.error is not None:
            row["error"] = str(res.error).splitlines()[0]
        rows.append(row)
    return rows
