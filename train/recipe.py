"""The Lacmus 1st-place pipeline as one resumable command: ``edgetile recipe lacmus DATA --out DIR``.

Each step calls the library function its own command runs; nothing is implemented twice:

1. ``tiles``: 1024 px windows of every photo (:func:`build_tile_dataset`, stratified folds), all
   windows with people plus some random empty ones;
2. ``model1``: a first model at 640 on the windows with people only (:func:`train`);
3. ``hard_negatives``: the empty windows model 1 likes most, p = 1 - prod(1 - s_i) (the
   ``--hard-negatives`` path of :func:`build_tile_dataset`);
4. ``model2``: at 640 on the people and those hard negatives;
5. ``more_hard_negatives``: more of them (the winner's few hundred, then ~1,400);
6. ``model3``: at 1024 on the people and the larger set, starting from model 2's best weights
   (training at 640 then at 1024);
7. ``ensemble``: models 2 and 3 fused by WBF with weights 1:2 (or chosen on the held-out photos),
   horizontal-flip TTA, tiles merged by IoS 0.5 (:func:`write_ensemble`, ``DIR/ensemble.yaml``);
8. ``evaluation``: the ensemble on the full-size photos of the held-out fold, which no model trained
   on (:func:`evaluate`), the threshold sweep (:func:`sweep`) and the error analysis.

Every step is recorded in ``DIR/recipe.json`` when it finishes, with its outputs; a rerun skips the
finished steps and redoes an unfinished one from its start. ``scale`` multiplies every training's
epochs (at least one each) for a quick try of the whole pipeline.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from edgetile.runtime.detector import DetectConfig

from .budget import DEFAULT_BUDGET_MB
from .datasets import TileOptions, build_tile_dataset
from .tiles import read_manifest, write_data_yaml
from .training import TrainOptions, check_train_args, train

STEPS = (
    "tiles",
    "model1",
    "hard_negatives",
    "model2",
    "more_hard_negatives",
    "model3",
    "ensemble",
    "evaluation",
)
RECORD = "recipe.json"
# The outputs that are files or folders: a finished step whose output was deleted runs again.
PATH_OUTPUTS = (
    "data",
    "fold_data",
    "best",
    "onnx",
    "ensemble",
    "settings",
    "metrics",
    "best_detect",
    "errors",
)


@dataclass(frozen=True)
class LacmusRecipe:
    """The settings of the pipeline (defaults: the 1st place's, scaled to one GPU).

    Attributes:
        model: Architecture of the three models (random initialisation from a YAML, or a .pt).
        tile: Window side of the training tiles and of inference, in photo pixels.
        overlap: Window overlap.
        folds: Stratified folds over photos; every model trains on all but fold ``holdout``.
        holdout: The fold whose full-size photos evaluate the models and choose the weights.
        negatives: Random empty windows of the first dataset (None: a quarter of the windows with people).
        hard_negatives: Hard negatives for model 2 and (more) for model 3.
        hard_conf: Model 1's detections below this score do not count towards a window's p.
        imgsz: Input size of models 1-2 and of model 3.
        epochs: Epochs of models 1, 2 and 3 (before ``scale``).
        lr: Initial learning rate of models 1, 2 and 3 (model 3 fine-tunes model 2).
        fusion_weights: Weights of models 2 and 3; None chooses among 1:1, 1:2, 2:1 on the held-out photos.
        fusion_iou: IoU of the weighted boxes fusion joining models and flipped passes.
        tta: Horizontal-flip pass at inference.
        merge: Cross-tile merge of the ensemble ("ios": intersection over the smaller box).
        merge_thr: Its threshold.
        score_thr: Operating threshold of the evaluation's recall, precision, F1 and error analysis.
        batch: Training batch size.
        device: Training device ("" Ultralytics' choice, "cpu", "0").
        workers: Data-loading processes.
        seed: Seeds folds, negatives and training.
        budget_mb: Weight budget of each model.
        scale: Multiplies every epoch count (at least 1 each): 0.1 for a quick try.
        overrides: Other Ultralytics training arguments for every model.
    """

    model: str = "yolov8s.yaml"
    tile: int = 1024
    overlap: float = 0.2
    folds: int = 5
    holdout: int = 0
    negatives: int | None = None
    hard_negatives: tuple[int, int] = (400, 1400)
    hard_conf: float = 0.1
    imgsz: tuple[int, int] = (640, 1024)
    epochs: tuple[int, int, int] = (30, 50, 50)
    lr: tuple[float, float, float] = (1e-3, 1e-3, 1e-4)
    fusion_weights: tuple[float, float] | None = (1.0, 2.0)
    fusion_iou: float = 0.55
    tta: bool = True
    merge: str = "ios"
    merge_thr: float = 0.5
    score_thr: float = 0.05
    batch: int = 16
    device: str = ""
    workers: int = 2
    seed: int = 0
    budget_mb: float = DEFAULT_BUDGET_MB
    scale: float = 1.0
    overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds: expected at least 2, found {self.folds}")
        if not 0 <= self.holdout < self.folds:
            raise ValueError(f"holdout: expected a fold in 0..{self.folds - 1}, found {self.holdout}")
        if len(self.hard_negatives) != 2 or any(n < 0 for n in self.hard_negatives):
            raise ValueError(f"hard_negatives: expected two counts >= 0, found {list(self.hard_negatives)}")
        if len(self.imgsz) != 2 or len(self.epochs) != 3 or len(self.lr) != 3:
            raise ValueError(
                f"expected two input sizes, three epoch counts and three learning rates, found "
                f"{list(self.imgsz)}, {list(self.epochs)}, {list(self.lr)}"
            )
        if not self.scale > 0:
            raise ValueError(f"scale: expected a positive factor, found {self.scale!r}")
        if self.fusion_weights is not None and (
            len(self.fusion_weights) != 2 or any(not w > 0 for w in self.fusion_weights)
        ):
            raise ValueError(
                f"fusion_weights: expected two positive weights, found {list(self.fusion_weights)}"
            )
        check_train_args(self.overrides, "overrides")
        DetectConfig(tile=self.tile, overlap=self.overlap, merge=self.merge, merge_thr=self.merge_thr)

    def epochs_of(self, i: int) -> int:
        """Epochs of model i (0-based) after ``scale``."""
        return max(1, round(self.epochs[i] * self.scale))

    def detect_config(self) -> DetectConfig:
        """The ensemble's inference settings: tiles, TTA, merge and fusion."""
        return DetectConfig(
            tile=self.tile,
            overlap=self.overlap,
            merge=self.merge,
            merge_thr=self.merge_thr,
            tta=("flip",) if self.tta else (),
            fusion_iou=self.fusion_iou,
        )

    def record(self) -> dict:
        d = asdict(self)
        d["overrides"] = dict(self.overrides)
        return json.loads(json.dumps(d))  # tuples as lists, as they read back


@dataclass
class RecipeResult:
    """What run_lacmus did.

    Attributes:
        out_dir: The recipe's folder.
        steps: Step name -> its record (outputs, seconds, finished).
        ran: The steps run this time.
        skipped: The steps found finished and skipped.
    """

    out_dir: Path
    steps: dict[str, dict]
    ran: list[str]
    skipped: list[str]

    def summary(self) -> str:
        lines = [f"recipe lacmus in {self.out_dir}:"]
        for name in STEPS:
            rec = self.steps.get(name)
            state = "skipped (done before)" if name in self.skipped else ("done" if rec else "not run")
            sec = f" {rec['seconds']:.0f} s" if rec and name in self.ran else ""
            lines.append(f"  {name:<20} {state}{sec}")
        ev = (self.steps.get("evaluation") or {}).get("outputs", {})
        if ev:
            s = ev.get("scores", {})
            lines.append(
                f"held-out photos: mAP@0.5 {s.get('map50', float('nan')):.4f}, mAP@0.75 "
                f"{s.get('map75', float('nan')):.4f}, recall {s.get('recall', float('nan')):.4f} at "
                f"{s.get('score_thr', 0):g}; best detect settings: {ev.get('best_detect')}"
            )
            lines.append(
                f"detect with: edgetile detect PHOTOS --model {ev.get('ensemble')} --settings {ev.get('best_detect')} --out results"
            )
        return "\n".join(lines)


def _load_record(path: Path, src: str, recipe: LacmusRecipe) -> dict:
    if not path.is_file():
        return {"recipe": "lacmus", "data": src, "settings": recipe.record(), "steps": {}}
    doc = json.loads(path.read_text())
    if doc.get("data") != src:
        raise ValueError(
            f"{path}: made from {doc.get('data')}, not {src}; expected the same data or another --out"
        )
    old, new = doc.get("settings", {}), recipe.record()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        what = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path}: made with other settings ({what}); expected the same settings to resume, or another --out"
        )
    return doc


def _save_record(path: Path, doc: dict) -> None:
    from edgetile.runtime.files import write_text_atomic

    write_text_atomic(path, json.dumps(doc, indent=1, default=str))


def _outputs_exist(outputs: Mapping[str, object]) -> bool:
    """Every file or folder a finished step named is still there (a deleted output reruns the step)."""
    return all(Path(outputs[k]).exists() for k in PATH_OUTPUTS if isinstance(outputs.get(k), str))


def run_lacmus(
    src: str | Path,
    out: str | Path,
    recipe: LacmusRecipe | None = None,
    format: str = "auto",
    class_names: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> RecipeResult:
    """Run (or resume) the Lacmus 1st-place pipeline.

    Args:
        src: Annotated full-size photos (VOC, YOLO or COCO).
        out: The recipe's folder: tiles/, runs/, ensemble.yaml, eval/ and recipe.json.
        recipe: The settings; a rerun must use the same ones (it resumes, it does not mix).
        format: Annotation format of src.
        class_names: Classes in id order (default: as annotated).
        log: Where progress lines go.

    Returns:
        The RecipeResult.

    Raises:
        ValueError: Bad data or settings, or DIR/recipe.json made from other data or settings.
        BudgetError: A model that cannot fit the weight budget, before it trains.
    """
    rc = recipe or LacmusRecipe()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    src_s = str(Path(src).resolve())
    record_path = out / RECORD
    doc = _load_record(record_path, src_s, rc)
    if not doc["steps"].get("model3", {}).get("done"):
        # Refuse an oversized model in seconds, before hours of tiling: the class count changes only the
        # head (each model is checked again, exactly, before it trains).
        from .budget import check_budget_before_training

        nc = len(class_names) if class_names else 1
        check_budget_before_training(rc.model, nc, rc.budget_mb, onnx=True, imgsz=max(rc.imgsz))
    _save_record(record_path, doc)
    steps: dict[str, dict] = doc["steps"]
    ran: list[str] = []
    skipped: list[str] = []
    actions = _steps(src_s, out, rc, format, class_names, steps)
    for name in STEPS:
        rec = steps.get(name)
        if rec and rec.get("done") and _outputs_exist(rec.get("outputs", {})):
            skipped.append(name)
            log(f"recipe: {name}: done before, skipped")
            continue
        log(f"recipe: {name} ...")
        t0 = time.perf_counter()
        outputs = actions[name]()
        steps[name] = {
            "done": True,
            "outputs": outputs,
            "seconds": round(time.perf_counter() - t0, 1),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _save_record(record_path, doc)
        ran.append(name)
        log(f"recipe: {name}: done in {steps[name]['seconds']:.0f} s")
    return RecipeResult(out, steps, ran, skipped)


def _steps(  # noqa: C901 - the recipe's eight steps as closures over one state, in order
    src: str, out: Path, rc: LacmusRecipe, format: str, class_names: Sequence[str] | None, steps: dict
) -> dict[str, Callable[[], dict]]:
    """Each step as a function of what earlier steps recorded."""

    def output(step: str, key: str) -> str:
        return steps[step]["outputs"][key]

    def tiles(folder: str, negatives: int | None, scorer: str | None) -> dict:
        target = out / folder
        if target.exists():
            shutil.rmtree(target)  # an unfinished step is redone from its start
        report = build_tile_dataset(
            src,
            target,
            TileOptions(tile=rc.tile, overlap=rc.overlap, negatives=negatives, seed=rc.seed),
            format=format,
            class_names=class_names,
            folds=rc.folds,
            hard_negatives=scorer,
            hard_conf=rc.hard_conf,
        )
        return {
            "data": str(report.data_yaml),
            "fold_data": str(report.fold_yamls[rc.holdout]),
            "tiles": report.tiles,
            "positives": report.positives,
            "negatives": report.negatives,
            "problems": len(report.problems),
        }

    def fit(name: str, data: str, model: str, i: int) -> dict:
        run = out / "runs" / name
        if run.exists():
            shutil.rmtree(run)
        overrides = {"optimizer": "AdamW", **({"warmup_epochs": 0} if model.endswith(".pt") else {})}
        overrides.update(rc.overrides)
        overrides["lr0"] = rc.lr[i]
        opt = TrainOptions(
            model=model,
            imgsz=rc.imgsz[0] if i < 2 else rc.imgsz[1],
            epochs=rc.epochs_of(i),
            batch=rc.batch,
            device=rc.device,
            workers=rc.workers,
            seed=rc.seed,
            project=str(out / "runs"),
            name=name,
            overrides=overrides,
        )
        r = train(data, opt, budget_mb=rc.budget_mb, export=True)
        if not r.ok or r.onnx is None:
            raise ValueError(
                f"{name}: expected a model within the budget and its ONNX, found: {r.summary().splitlines()[-1]}"
            )
        return {
            "best": str(r.best),
            "onnx": str(r.onnx),
            "imgsz": opt.imgsz,
            "epochs": opt.epochs,
            "lr0": rc.lr[i],
            "start": model,
            "metrics": r.metrics,
        }

    def step_tiles() -> dict:
        return tiles("tiles", rc.negatives, None)

    def step_model1() -> dict:
        # Model 1 learns people only: its training list keeps the tiles with boxes; its validation
        # keeps the random empty windows too, so its scores count what it finds on empty ground.
        data = Path(output("tiles", "fold_data"))
        folder = data.parent
        kinds = {r["tile"]: r["kind"] for r in read_manifest(folder.parent / "manifest.csv")}
        lines = (folder / f"fold{rc.holdout}_train.txt").read_text().splitlines()
        positives = [ln for ln in lines if kinds.get(Path(ln).stem) == "positive"]
        (folder / "model1_train.txt").write_text("".join(ln + "\n" for ln in positives))
        from .training import data_classes

        yaml = write_data_yaml(
            folder / "model1.yaml",
            "model1_train.txt",
            f"fold{rc.holdout}_val.txt",
            data_classes(data),
            comment=f"recipe model 1: the tiles with people of fold {rc.holdout}'s training photos",
        )
        return fit("model1", str(yaml), rc.model, 0)

    def step_hard() -> dict:
        return _same_folds(tiles("tiles_hard", rc.hard_negatives[0], output("model1", "onnx")), out / "tiles")

    def step_model2() -> dict:
        return fit("model2", output("hard_negatives", "fold_data"), rc.model, 1)

    def step_more() -> dict:
        return _same_folds(tiles("tiles_more", rc.hard_negatives[1], output("model1", "onnx")), out / "tiles")

    def step_model3() -> dict:
        return fit("model3", output("more_hard_negatives", "fold_data"), output("model2", "best"), 2)

    def held_out():
        from .ensemble import held_out_photos

        return held_out_photos(out / "tiles", rc.holdout)

    def step_ensemble() -> dict:
        from edgetile.runtime.options.detect import write_ensemble

        from .ensemble import choose_weights

        models = [output("model2", "onnx"), output("model3", "onnx")]
        rows: list[dict] = []
        if rc.fusion_weights is None:
            weights, rows = choose_weights(models, held_out(), rc.detect_config())
            rule = "chosen on the held-out photos among 1:1, 1:2, 2:1 (mAP@0.5)"
        else:
            weights, rule = tuple(rc.fusion_weights), "given"
        ens = write_ensemble(
            out / "ensemble.yaml",
            models,
            weights,
            rc.fusion_iou,
            notes=[f"edgetile recipe lacmus: models 2 and 3; weights {rule}"],
        )
        settings = out / "ensemble_detect.yaml"
        import yaml

        from edgetile.runtime.options.detect import detect_settings

        settings.write_text(
            "# The recipe's inference settings: flip TTA, tiles merged by IoS; 'edgetile detect --settings'\n"
            + yaml.safe_dump(detect_settings(rc.detect_config()), sort_keys=False)
        )
        return {
            "ensemble": str(ens),
            "settings": str(settings),
            "weights": list(weights),
            "rule": rule,
            "grid": rows,
        }

    def step_evaluation() -> dict:
        from edgetile.runtime.detector import Detector
        from edgetile.runtime.evaluation.metrics import evaluate
        from edgetile.runtime.options.detect import read_ensemble

        from .errors import write_error_report
        from .evaluation import SweepGrid, sweep, write_eval

        ens_path = output("ensemble", "ensemble")
        ens = read_ensemble(ens_path)
        photos = held_out()
        eval_dir = out / "eval"
        if eval_dir.exists():
            shutil.rmtree(eval_dir)
        cfg = replace(rc.detect_config(), conf=0.001)
        with Detector(list(ens.models), weights=list(ens.weights), config=cfg) as det:
            result = evaluate(det, photos, rc.score_thr)
        files = write_eval(result, eval_dir, title=f"recipe ensemble on {len(photos.photos)} held-out photos")
        res = sweep(
            list(ens.models),
            photos,
            rc.detect_config(),
            SweepGrid(merges=(rc.merge,), merge_thrs=(0.3, 0.4, 0.5, 0.6, 0.7)),
            weights=list(ens.weights),
        )
        data = f"{src}, fold {rc.holdout} (held out from every model), {len(photos.photos)} photo(s)"
        paths = res.write(eval_dir, [ens_path], data=data)
        errors = write_error_report(result, eval_dir / "errors", rc.score_thr)
        return {
            "ensemble": ens_path,
            "metrics": str(files["metrics"]),
            "best_detect": str(paths["yaml"]),
            "errors": str(errors.out_dir),
            "scores": {
                "map50": result.map50,
                "map75": result.map75,
                "map50_95": result.map50_95,
                "lacmus_ap50": result.lacmus_ap50,
                "recall": result.recall,
                "precision": result.precision,
                "f1": result.f1,
                "score_thr": rc.score_thr,
            },
            "best": {k: res.best[k] for k in ("merge", "merge_thr", "conf", "recall", "precision", "f1")},
        }

    return {
        "tiles": step_tiles,
        "model1": step_model1,
        "hard_negatives": step_hard,
        "model2": step_model2,
        "more_hard_negatives": step_more,
        "model3": step_model3,
        "ensemble": step_ensemble,
        "evaluation": step_evaluation,
    }


def _same_folds(outputs: dict, first: Path) -> dict:
    """The hard-negative datasets must split the photos as the first one did, or the held-out fold leaks."""
    import csv

    def folds(folder: Path) -> dict[str, str]:
        with open(folder / "photos.csv", newline="") as f:
            return {r["source"]: r["fold"] for r in csv.DictReader(f)}

    new = Path(outputs["data"]).parent
    if folds(new) != folds(first):
        raise ValueError(
            f"{new}: expected the photos in the same folds as {first} (same photos, same seed), found them split otherwise"
        )
    return outputs
