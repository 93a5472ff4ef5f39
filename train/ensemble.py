"""Fold ensembles: train every fold, score each model on its held-out photos, write an ensemble file.

``train_folds`` is what ``edgetile train --folds`` runs on a dataset made by ``edgetile dataset tiles
--folds K``: each fold's model trains on the other folds' tiles and is scored out of fold, on the
**full-size photos** of its own fold (the runtime's tiled path, :func:`evaluate`), never on tiles it
saw. The models, their fusion weights and the fusion IoU go into an ensemble file that ``edgetile
detect --model``, ``serve``, ``eval`` and ``export engine`` take as they take one model.

Fusion weights: ``equal``; ``oof``, proportional to each model's out-of-fold mAP@0.5; or given. A
grid search of weights needs photos that no member trained on: every photo of a K-fold dataset is in
the training of K-1 of its models, so :func:`choose_weights` is for photos held out from all of them
(the recipe's two models trained on the same folds, scored on the fold they both left out).
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import Dataset, load_dataset
from edgetile.runtime.evaluation.metrics import EvalResult, evaluate
from edgetile.runtime.files import write_json_atomic
from edgetile.runtime.options.detect import write_ensemble

from .budget import DEFAULT_BUDGET_MB
from .stages import Stage, run_folder, train_stages
from .training import TrainOptions, train

WEIGHT_RULES = ("equal", "oof")
OBJECTIVES = ("map50", "map75", "map50_95", "lacmus_ap50", "f1")


def tile_source(tiles_dir: str | Path) -> dict:
    """What ``dataset tiles`` recorded in source.json: the annotated photos it read, tile and overlap."""
    p = Path(tiles_dir) / "source.json"
    if not p.is_file():
        raise ValueError(
            f"{p.parent}: expected source.json (written by 'edgetile dataset tiles'), found none; "
            "make the tiles again with this version"
        )
    return json.loads(p.read_text())


def held_out_photos(tiles_dir: str | Path, fold: int | None = None) -> Dataset:
    """The full-size annotated photos a model of this tile dataset never trained on.

    Args:
        tiles_dir: A folder made by ``edgetile dataset tiles``.
        fold: The fold whose photos to return; None: the photos of the validation split.

    Raises:
        ValueError: The dataset records no source or photos, or the fold holds no photo.
    """
    root = Path(tiles_dir)
    src = tile_source(root)
    if not src.get("src"):
        raise ValueError(f"{root}/source.json: expected the annotated photos' path, found none")
    with open(root / "photos.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if fold is None:
        keep = {str(Path(r["source"]).resolve()) for r in rows if r["split"] == "val"}
        what = "the validation split"
    else:
        keep = {str(Path(r["source"]).resolve()) for r in rows if r["fold"] != "" and int(r["fold"]) == fold}
        what = f"fold {fold}"
    ds = load_dataset(src["src"], src.get("format") or "auto", src.get("class_names"))
    photos = [p for p in ds.photos if str(p.path.resolve()) in keep]
    if not photos:
        raise ValueError(f"{root}: expected photos in {what}, found none")
    return Dataset(photos, ds.class_names, [], ds.format, ds.root)


def evaluate_models(
    models: Sequence[str | Path],
    dataset: Dataset,
    base: DetectConfig,
    weights: Sequence[float] | None = None,
    score_thr: float = 0.05,
) -> EvalResult:
    """Full-photo evaluation of one model or an ensemble at conf 0.001 (the whole curve counts)."""
    cfg = replace(base, conf=min(base.conf, 0.001))
    with Detector([str(m) for m in models], weights=weights, config=cfg) as det:
        return evaluate(det, dataset, score_thr)


def weight_grid(n: int, values: Sequence[float] = (1.0, 2.0)) -> list[tuple[float, ...]]:
    """Weight vectors of n models from values, without multiples of one another (1:1 and 2:2 are one).

    For two models and values 1, 2: 1:1, 1:2, 2:1.
    """
    seen, out = set(), []
    for w in itertools.product(values, repeat=n):
        key = tuple(round(x / min(w), 6) for x in w)
        if key not in seen:
            seen.add(key)
            out.append(tuple(float(x) for x in w))
    return out


def choose_weights(
    models: Sequence[str | Path],
    dataset: Dataset,
    base: DetectConfig,
    grid: Sequence[Sequence[float]] | None = None,
    objective: str = "map50",
) -> tuple[tuple[float, ...], list[dict]]:
    """The fusion weights that score best on photos held out from every model.

    Args:
        models: The members.
        dataset: Photos none of the members trained on.
        base: Tiling, TTA and merging of the ensemble.
        grid: Weight vectors to try (default: :func:`weight_grid`: 1:1, 1:2, 2:1 for two models).
        objective: The metric to maximise; ties go to the earlier vector of the grid.

    Returns:
        The best weights and one row per vector tried (weights and scores).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, found {objective!r}")
    grid = [tuple(map(float, w)) for w in (grid or weight_grid(len(models)))]
    rows = []
    for w in grid:
        r = evaluate_models(models, dataset, base, w)
        rows.append({"weights": list(w), **_scores(r)})
    best = max(range(len(rows)), key=lambda i: (rows[i][objective], -i))
    return grid[best], rows


def _scores(r: EvalResult) -> dict[str, float]:
    return {
        "map50": r.map50,
        "map75": r.map75,
        "map50_95": r.map50_95,
        "lacmus_ap50": r.lacmus_ap50,
        "f1": r.f1,
        "recall": r.recall,
        "precision": r.precision,
    }


@dataclass
class FoldsResult:
    """What train_folds produced.

    Attributes:
        run_dir: The folder holding fold0/ ... fold{K-1}/, the ensemble file and folds.json.
        ensemble: The ensemble file.
        models: Each fold's ONNX.
        oof: Each fold's out-of-fold scores on its full-size photos.
        weights: The fusion weights.
        weights_rule: How they were chosen.
        ok: Every fold trained within budget and exported.
    """

    run_dir: Path
    ensemble: Path
    models: list[Path]
    oof: list[dict[str, float]]
    weights: list[float]
    weights_rule: str
    ok: bool = True
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'fold':>4} {'weight':>6} {'mAP50':>7} {'mAP75':>7} {'recall':>7} {'F1':>6}  model"]
        for k, (m, s, w) in enumerate(zip(self.models, self.oof, self.weights)):
            lines.append(
                f"{k:>4} {w:>6.3g} {s['map50']:>7.4f} {s['map75']:>7.4f} {s['recall']:>7.4f} {s['f1']:>6.4f}  {m}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        return (
            f"{len(self.models)} fold model(s) in {self.run_dir}, scored out of fold on full-size photos:\n"
            f"{self.table()}\nfusion weights: {self.weights_rule}\nensemble: {self.ensemble} "
            f"(edgetile detect --model {self.ensemble})"
        )


def fold_count(data: str | Path) -> int:
    """K of the folds beside a data.yaml made by ``dataset tiles --folds K``."""
    folder = Path(data).parent / "folds"
    k = len(list(folder.glob("fold*.yaml"))) if folder.is_dir() else 0
    if k < 2:
        raise ValueError(
            f"--folds: expected folds/fold0.yaml ... beside {data} (made by 'edgetile dataset tiles --folds K'), "
            f"found {k}"
        )
    return k


def train_folds(
    data: str | Path,
    options: TrainOptions | None = None,
    stages: Sequence[Stage] | None = None,
    budget_mb: float = DEFAULT_BUDGET_MB,
    weights: str | Sequence[float] = "oof",
    fusion_iou: float = 0.55,
    base: DetectConfig | None = None,
    score_thr: float = 0.05,
    weights_data: Dataset | None = None,
) -> FoldsResult:
    """Train a model per fold, score each out of fold on full photos, write the ensemble file.

    Args:
        data: The data.yaml of a tile dataset made with ``--folds K``.
        options: Model and training settings shared by every fold; project/name is the run folder.
        stages: Train each fold in these stages (see :func:`train_stages`) instead of once.
        budget_mb: Weight budget of each model.
        weights: "equal", "oof" (proportional to each fold's out-of-fold mAP@0.5), "choose" (the best
            of :func:`weight_grid` on ``weights_data``) or one weight per fold.
        fusion_iou: IoU of the WBF joining the members, written to the ensemble file.
        base: Detect settings of the out-of-fold evaluation (default: the dataset's tile and overlap).
        score_thr: Operating threshold of the out-of-fold recall, precision and F1.
        weights_data: With weights "choose": annotated photos that no fold trained on (a test set).

    Returns:
        The FoldsResult; RUN/ensemble.yaml, RUN/folds.json and RUN/fold{k}/oof/ (metrics.json, ...).
    """
    from .evaluation import write_eval

    opt = options or TrainOptions()
    k_folds = fold_count(data)
    if not isinstance(weights, str) and len(weights) != k_folds:
        raise ValueError(f"weights: expected one per fold ({k_folds}), found {len(list(weights))}")
    if isinstance(weights, str) and weights not in (*WEIGHT_RULES, "choose"):
        raise ValueError(f"weights: expected equal, oof, choose or numbers, found {weights!r}")
    if weights == "choose" and (weights_data is None or not weights_data.photos):
        raise ValueError(
            "weights choose: expected annotated photos that no fold trained on (e.g. the test subset), found none; "
            "every photo of the folds is in the training of all but one model"
        )
    tiles_dir = Path(data).parent
    src = tile_source(tiles_dir)
    if weights == "choose":
        with open(tiles_dir / "photos.csv", newline="") as f:
            trained = {str(Path(r["source"]).resolve()) for r in csv.DictReader(f)}
        leaked = [p.path for p in weights_data.photos if str(p.path.resolve()) in trained]
        if leaked:
            raise ValueError(
                f"weights choose: expected photos that no fold trained on, found {len(leaked)} of the folds' own "
                f"(first: {leaked[0]})"
            )
    base = base or DetectConfig(tile=int(src.get("tile", 1024)), overlap=float(src.get("overlap", 0.2)))
    run_dir = run_folder(opt.project, opt.name)
    models, oof, ok = [], [], True
    for k in range(k_folds):
        fold_opt = replace(opt, project=str(run_dir), name=f"fold{k}")
        if stages:
            res = train_stages(data, stages, fold_opt, fold=k, budget_mb=budget_mb, export=True)
        else:
            res = train(data, fold_opt, fold=k, budget_mb=budget_mb, export=True)
        ok = ok and res.ok
        if res.onnx is None:
            raise ValueError(f"fold {k}: expected an ONNX export of {res.best}, found none (see its summary)")
        held = held_out_photos(tiles_dir, k)
        r = evaluate_models([res.onnx], held, base, score_thr=score_thr)
        write_eval(r, run_dir / f"fold{k}" / "oof", title=f"fold {k} out of fold ({len(held.photos)} photos)")
        models.append(Path(res.onnx))
        oof.append(_scores(r))
    if isinstance(weights, str) and weights == "equal":
        w, rule = [1.0] * k_folds, "equal"
    elif isinstance(weights, str) and weights == "choose":
        best, rows = choose_weights(models, weights_data, base)
        w = list(best)
        rule = f"chosen on {len(weights_data.photos)} photo(s) no fold trained on, among " + ", ".join(
            ":".join(f"{x:g}" for x in row["weights"]) for row in rows
        )
    elif isinstance(weights, str):
        # A fold that learnt nothing still gets a little say, so the file stays valid.
        raw = [max(s["map50"], 1e-3) for s in oof]
        w = [round(x / max(raw), 4) for x in raw]
        rule = "oof: proportional to each fold's out-of-fold mAP@0.5"
    else:
        w, rule = [float(x) for x in weights], "given"
    notes = [
        f"fold {k}: out-of-fold mAP@0.5 {s['map50']:.4f}, mAP@0.75 {s['map75']:.4f}"
        for k, s in enumerate(oof)
    ]
    notes.append(f"weights: {rule}")
    ensemble = write_ensemble(run_dir / "ensemble.yaml", models, w, fusion_iou, notes)
    result = FoldsResult(run_dir, ensemble, models, oof, w, rule, ok)
    doc = {
        "data": str(data),
        "folds": k_folds,
        "models": [str(m) for m in models],
        "oof": oof,
        "weights": w,
        "weights_rule": rule,
        "fusion_iou": fusion_iou,
        "ensemble": str(ensemble),
        "ok": ok,
    }
    write_json_atomic(run_dir / "folds.json", doc)
    (run_dir / "folds.txt").write_text(result.summary() + "\n")
    return result
