"""The training side's `edgetile` subcommands: dataset tiles, train, train-verifier, train-embedder, tune, eval,
pseudo-label, recipe.

Each ``register_*`` adds one subcommand through the ``edgetile.commands`` entry-point group and imports
nothing heavy: torch, Ultralytics, pycocotools and matplotlib are imported when a command runs. The
handlers are thin: they turn options into the library calls of edgetile.train and report.

Exit codes: 0 all done; 1 some inputs failed (bad annotations, unreadable photos, files over the
budget), the rest still written; 2 usage errors, including a model refused by the weight budget.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgetile.runtime.argtypes import finite_number, int_at_least, number_in
from edgetile.runtime.options import EXIT_OK, EXIT_SOME_FAILED, UsageError

FORMATS = ("auto", "voc", "yolo", "coco")


def _progress(a: argparse.Namespace) -> bool:
    return not getattr(a, "quiet", False) and sys.stderr.isatty()


def _no_runtime_installs() -> None:
    # Ultralytics pip-installs missing packages at run time unless told not to; edgetile declares
    # them as dependencies instead. Read by Ultralytics when it is first imported.
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")


def _key_values(items: list[str] | None, option: str) -> dict[str, object]:
    """KEY=VALUE words; values are read as YAML scalars (0.01, true, AdamW)."""
    import yaml

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option}: expected KEY=VALUE, found {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


# --------------------------------------------------------------------------------------------------- dataset


def register_dataset(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile dataset tiles SRC --out DIR` and `edgetile dataset from-review STATE --out DIR`."""
    p = subparsers.add_parser(
        "dataset",
        help="make training datasets from annotated photos or a review (dataset tiles, from-review)",
        description="Make training datasets from annotated full-size photos.",
    )
    sub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    p.set_defaults(func=_dataset_needs_subcommand)
    t = sub.add_parser(
        "tiles",
        help="cut annotated photos into an Ultralytics tile dataset (splits or folds, negatives)",
        description="Cut annotated photos (Pascal VOC XML as in LADD, YOLO txt or COCO JSON) into windows laid out "
        "exactly as the runtime tiles at inference, and write an Ultralytics dataset: images/, labels/, "
        "data.yaml, manifest.csv (which photo and window each tile came from), splits.csv or folds.csv "
        "(each split's class, box-count and box-size distribution) and problems.txt (bad annotations, "
        "reported and skipped, never repaired).",
        epilog="Example (LADD, five folds, hard negatives from a first model):\n"
        "  edgetile dataset tiles LADD/ --out tiles/ --folds 5 --negatives 1400 --hard-negatives first.onnx\n"
        "Exit codes: 0 done, 1 done but some annotations or photos were bad (see problems.txt), 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "src",
        metavar="SRC",
        help="annotated photos: a VOC folder (Annotations/, JPEGImages/), a YOLO "
        "folder or data.yaml, or a COCO .json",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="output folder for the tile dataset")
    t.add_argument(
        "--format", choices=FORMATS, default="auto", help="annotation format (default: auto, detected)"
    )
    t.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names in id order; boxes of other classes are reported as unknown "
        "(default: as the annotations name them)",
    )
    t.add_argument(
        "--subset",
        metavar="NAME",
        help="VOC: the ImageSets/Main list to read (e.g. trainval); YOLO: the data.yaml split "
        "(default: every photo)",
    )
    t.add_argument(
        "--skip",
        choices=("photo", "box"),
        default="photo",
        help="what a bad annotation removes: the whole photo (default, so nobody stays in it "
        "unlabelled) or only that box",
    )
    g = t.add_argument_group("windows")
    g.add_argument(
        "--tile",
        type=int_at_least("--tile", 32),
        default=1024,
        help="window side in photo pixels; use the --tile you will detect with (default: 1024)",
    )
    g.add_argument(
        "--overlap",
        type=number_in("--overlap", 0.0, 0.9, hi_open=True),
        default=0.2,
        help="fraction shared by neighbouring windows, as detect's --overlap (default: 0.2)",
    )
    g.add_argument(
        "--min-visible",
        type=number_in("--min-visible", 0.01, 1.0),
        default=0.5,
        help="keep a box cut by a window edge only when this fraction of it is visible, so slivers "
        "are not taught as people (default: 0.5)",
    )
    g = t.add_argument_group("negatives (windows without people)")
    g.add_argument(
        "--negatives",
        type=int_at_least("--negatives", 0),
        default=None,
        metavar="N",
        help="empty windows to keep in all (default: a quarter of the windows with people)",
    )
    g.add_argument(
        "--hard-negatives",
        metavar="MODEL",
        help="a first model (.onnx, .engine or .pt) ranking empty windows by p = 1 - prod(1 - s) over its "
        "detections, highest first: the rocks, logs and bushes it mistakes for people "
        "(default: random windows)",
    )
    g.add_argument(
        "--hard-conf",
        type=number_in("--hard-conf", 0.001, 0.999),
        default=0.1,
        help="that model's detections below this score are ignored (default: 0.1)",
    )
    g = t.add_argument_group("splits (over photos, never tiles)")
    g.add_argument(
        "--folds",
        type=int_at_least("--folds", 2),
        default=None,
        metavar="K",
        help="K multilabel-stratified folds by class presence, box count and box size; one data.yaml "
        "per fold in DIR/folds/ (default: one stratified hold-out instead)",
    )
    g.add_argument(
        "--val-fraction",
        type=number_in("--val-fraction", 0.0, 1.0, hi_open=True),
        default=0.2,
        help="without --folds: fraction of photos held out for validation (default: 0.2)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seeds the split and the random negatives (default: 0)"
    )
    t.add_argument(
        "--jpeg-quality",
        type=int_at_least("--jpeg-quality", 1),
        default=95,
        help="JPEG quality of the tiles (default: 95)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar, problems or table")
    t.set_defaults(func=cmd_dataset_tiles)
    r = sub.add_parser(
        "from-review",
        help="turn an edgetile serve daemon's review decisions into a VOC dataset with hard negatives",
        description="Read the operator's decisions in an 'edgetile serve' state folder (read-only: the daemon may "
        "keep running) and write a Pascal VOC dataset in the LADD layout (JPEGImages/, Annotations/, "
        "ImageSets/Main/trainval.txt): confirmed, flagged and operator-drawn boxes as 'person'; rejected boxes "
        "unlabelled and listed in DIR/hard_negatives.json, which 'edgetile dataset tiles DIR' reads to prefer "
        "windows around them as negatives. Photos with a detection not yet reviewed are left out.",
        epilog="Example:\n  edgetile dataset from-review /var/lib/edgetile --out reviewed/\n"
        "  edgetile dataset tiles reviewed/ --out tiles/ --negatives 500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("state", metavar="STATE", help="the daemon's state folder (its --state)")
    r.add_argument("--out", required=True, metavar="DIR", help="folder of the new dataset")
    r.add_argument("--quiet", action="store_true", help="no summary")
    r.set_defaults(func=cmd_dataset_from_review)
    return p


def _dataset_needs_subcommand(a: argparse.Namespace) -> int:
    raise UsageError("expected a subcommand: tiles or from-review (see 'edgetile dataset tiles --help')")


def cmd_dataset_from_review(a: argparse.Namespace) -> int:
    from .from_review import dataset_from_review

    try:
        report = dataset_from_review(a.state, a.out)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if not a.quiet:
        for name, why in report.left_out.items():
            print(f"left out: {name}: {why}", file=sys.stderr)
        print(report.summary(), file=sys.stderr)
    return EXIT_OK


def cmd_dataset_tiles(a: argparse.Namespace) -> int:
    from edgetile.runtime.evaluation.annotations import load_dataset

    from .datasets import TileOptions, build_tile_dataset, print_report

    if a.hard_negatives and a.hard_negatives.endswith(".pt"):
        _no_runtime_installs()
    try:
        ds = load_dataset(a.src, a.format, a.classes, skip=a.skip, subset=a.subset)
        report = build_tile_dataset(
            ds,
            a.out,
            TileOptions(
                tile=a.tile,
                overlap=a.overlap,
                min_visible=a.min_visible,
                negatives=a.negatives,
                seed=a.seed,
                jpeg_quality=a.jpeg_quality,
            ),
            folds=a.folds or 0,
            val_fraction=a.val_fraction,
            hard_negatives=a.hard_negatives,
            hard_conf=a.hard_conf,
            progress=_progress(a),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if not a.quiet:
        print_report(report)
    return EXIT_SOME_FAILED if report.problems else EXIT_OK


# --------------------------------------------------------------------------------------------------- train


def register_train(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile train --data data.yaml --model yolov8s.yaml`."""
    p = subparsers.add_parser(
        "train",
        help="train an Ultralytics detector on a tile dataset within a weight budget",
        description="Train with Ultralytics (no hand-written trainer). The weight budget is checked before training "
        "from the model's architecture - a model whose best.pt (and ONNX, with --export onnx) would "
        "exceed --budget-mb is refused within seconds, naming the largest model of its family that "
        "fits - and after training on the real files, with a size table in the run summary "
        "(RUN/edgetile_summary.txt and .json). --stages trains at several sizes and learning rates in a row, "
        "each from the previous best.pt; --folds trains every fold and writes an ensemble file of them.",
        epilog="Example: edgetile train --data tiles/data.yaml --fold 2 --model yolov8s.yaml --imgsz 1024 "
        "--hyp runs/tune/best_hyperparameters.yaml\n"
        "Example: edgetile train --data tiles/data.yaml --model yolov8s.yaml --stages 640:30:1e-3 1024:10:1e-4\n"
        "Example: edgetile train --data tiles/data.yaml --folds --model yolov8s.yaml --imgsz 640 --epochs 50 "
        "(then: edgetile detect PHOTOS --model runs/train/exp/ensemble.yaml --out results)\n"
        "Exit codes: 0 trained within budget, 1 trained but a file is over budget or the export failed, "
        "2 usage error or refused.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="YAML",
        help="Ultralytics data.yaml, e.g. from 'edgetile dataset tiles'",
    )
    p.add_argument(
        "--model",
        default="yolov8s.yaml",
        metavar="YAML|PT",
        help="architecture to train from random initialisation (yolov8n.yaml ... yolo11x.yaml) or a .pt "
        "to start from (default: yolov8s.yaml)",
    )
    p.add_argument(
        "--fold",
        type=int_at_least("--fold", 0),
        default=None,
        metavar="K",
        help="train on fold K made by 'dataset tiles --folds' (folds/foldK.yaml beside --data)",
    )
    p.add_argument(
        "--folds",
        action="store_true",
        help="train every fold made by 'dataset tiles --folds K' (one model each, in RUN/foldK/), score each "
        "on its own fold's full-size photos (out of fold), and write RUN/ensemble.yaml, which detect, "
        "serve, eval and export engine take as --model",
    )
    p.add_argument(
        "--fusion-weights",
        nargs="+",
        default=["oof"],
        metavar="RULE|W",
        help="with --folds: the members' weights in the ensemble file: oof (proportional to each fold's "
        "out-of-fold mAP@0.5), equal, choose (the best of a 1/2 grid on --weights-data), or one number "
        "per fold (default: oof)",
    )
    p.add_argument(
        "--weights-data",
        metavar="DIR",
        help="with --fusion-weights choose: annotated full-size photos that no fold trained on, e.g. a test "
        "set (VOC, YOLO or COCO; --weights-subset picks a list)",
    )
    p.add_argument(
        "--weights-subset", metavar="NAME", help="VOC ImageSets/Main list or YOLO split of --weights-data"
    )
    p.add_argument(
        "--fusion-iou",
        type=number_in("--fusion-iou"),
        default=0.55,
        help="with --folds: IoU of the weighted boxes fusion that joins the members (default: 0.55)",
    )
    p.add_argument(
        "--hyp", metavar="YAML", help="hyperparameters, e.g. best_hyperparameters.yaml from 'edgetile tune'"
    )
    p.add_argument(
        "--imgsz",
        type=int_at_least("--imgsz", 32),
        default=640,
        help="training input size; a 1024 tile at 640 is seen at 0.625 scale (default: 640)",
    )
    p.add_argument("--epochs", type=int_at_least("--epochs", 1), default=100, help="epochs (default: 100)")
    p.add_argument(
        "--stages",
        nargs="+",
        metavar="IMGSZ:EPOCHS:LR",
        help="train in stages, each from the previous stage's best.pt at its own input size, epochs and "
        "learning rate, e.g. --stages 640:30:1e-3 1024:10:1e-4 (the Lacmus winner's 640 then 1024), or "
        "one YAML file listing {imgsz, epochs, lr0, other training arguments}; replaces --imgsz and "
        "--epochs; one run folder with stage1/, stage2/ ... and stages.json (default: one stage)",
    )
    p.add_argument("--batch", type=int, default=16, help="batch size; -1 fills the GPU (default: 16)")
    p.add_argument(
        "--budget-mb",
        type=finite_number("--budget-mb", 0.0, inclusive=False),
        default=100.0,
        help="largest acceptable best.pt (and ONNX) in MB, e.g. a competition's weight limit (default: 100)",
    )
    p.add_argument(
        "--export",
        choices=("onnx", "none"),
        default="onnx",
        help="export best.pt to ONNX for the runtime after training (default: onnx)",
    )
    p.add_argument(
        "--device", default="", help="cpu, or a CUDA index such as 0 (default: Ultralytics' choice)"
    )
    p.add_argument(
        "--workers", type=int_at_least("--workers", 0), default=2, help="data-loading processes (default: 2)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--patience",
        type=int_at_least("--patience", 1),
        default=50,
        help="stop after this many epochs without improvement (default: 50)",
    )
    p.add_argument(
        "--project", default="runs/train", help="folder holding the run folders (default: runs/train)"
    )
    p.add_argument(
        "--name", default="exp", help="run folder name; an existing one is numbered on (default: exp)"
    )
    p.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        help="any other Ultralytics training argument, e.g. --set cos_lr=true mosaic=0.5",
    )
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(a: argparse.Namespace) -> int:
    _no_runtime_installs()
    from .budget import BudgetError
    from .training import TrainOptions, load_hyp, train

    try:
        overrides = {**(load_hyp(a.hyp) if a.hyp else {}), **_key_values(a.set, "--set")}
        opt = TrainOptions(
            model=a.model,
            imgsz=a.imgsz,
            epochs=a.epochs,
            batch=a.batch,
            device=a.device,
            workers=a.workers,
            seed=a.seed,
            patience=a.patience,
            project=a.project,
            name=a.name,
            overrides=overrides,
        )
        if a.folds:
            from .ensemble import train_folds
            from .stages import parse_stages

            if a.fold is not None:
                raise UsageError(
                    "--folds trains every fold: expected no --fold with it, found --fold " + str(a.fold)
                )
            weights_data = None
            if a.weights_data and a.fusion_weights != ["choose"]:
                raise UsageError(
                    "--weights-data: expected --fusion-weights choose with it, found "
                    + " ".join(a.fusion_weights)
                )
            if a.weights_data:
                from edgetile.runtime.evaluation.annotations import load_dataset

                weights_data = load_dataset(a.weights_data, subset=a.weights_subset)
            folds = train_folds(
                a.data,
                opt,
                stages=parse_stages(a.stages) if a.stages else None,
                budget_mb=a.budget_mb,
                weights=_fusion_weights(a.fusion_weights),
                fusion_iou=a.fusion_iou,
                weights_data=weights_data,
            )
            print(folds.summary(), file=sys.stderr)
            return EXIT_OK if folds.ok else EXIT_SOME_FAILED
        if a.stages:
            from .stages import parse_stages, train_stages

            result = train_stages(
                a.data,
                parse_stages(a.stages),
                opt,
                fold=a.fold,
                budget_mb=a.budget_mb,
                export=a.export == "onnx",
            )
        else:
            result = train(a.data, opt, fold=a.fold, budget_mb=a.budget_mb, export=a.export == "onnx")
    except BudgetError as exc:
        raise UsageError(f"refused: {exc}") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    print(result.summary(), file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_SOME_FAILED


def _fusion_weights(words: list[str]) -> str | list[float]:
    if len(words) == 1 and words[0] in ("oof", "equal", "choose"):
        return words[0]
    try:
        values = [float(w) for w in words]
    except ValueError:
        raise UsageError(
            f"--fusion-weights: expected oof, equal, choose or positive numbers, found {' '.join(words)}"
        ) from None
    if any(not 0 < v < float("inf") for v in values):
        raise UsageError(f"--fusion-weights: expected positive numbers, found {' '.join(words)}")
    return values


# --------------------------------------------------------------------------------------------------- train-verifier


def register_train_verifier(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile train-verifier --data PHOTOS --model DETECTOR.onnx`."""
    from edgetile.runtime.options.detect import add_detect_options

    p = subparsers.add_parser(
        "train-verifier",
        help="train the crop classifier that gives every detection a second look (detect --verify)",
        description="Train a small crop classifier that rejects what the detector mistakes for people (rocks, "
        "logs, bags). The detector runs over annotated photos (or a tile dataset, whose empty tiles are "
        "hard-negative windows); crops with context around annotated people and matching detections are "
        "'person', crops around its false positives and random ground 'background'. An Ultralytics "
        "classifier is trained on them within its own weight budget and exported to ONNX (OUT/verifier.onnx, "
        "which 'edgetile export engine' builds like a detector). Its threshold is chosen on the validation "
        "photos so that at the detector's --conf it rejects at most --max-recall-loss of the people the "
        "detector finds, and stored in the ONNX; OUT/verifier_report.json and OUT/verifier_pr.png show the "
        "false positives it removed for that and the precision-recall curves before and after.",
        epilog="Example: edgetile train-verifier --data LADD/ --subset train --val LADD/ --val-subset val "
        "--model person.onnx --conf 0.1 --out runs/verifier\n"
        "then: edgetile detect PHOTOS --model person.onnx --conf 0.1 --verify runs/verifier/verifier.onnx\n"
        "Exit codes: 0 done, 1 done but some photos were unreadable, 2 usage error or refused by the budget.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        metavar="SRC",
        help="annotated photos or tiles: a VOC folder, a YOLO folder or data.yaml, or a COCO .json",
    )
    g.add_argument("--format", choices=FORMATS, default="auto", help="annotation format (default: auto)")
    g.add_argument("--subset", metavar="NAME", help="VOC ImageSets/Main list or YOLO split to train on")
    g.add_argument(
        "--val",
        metavar="SRC",
        help="validation photos (default: --data, with --val-subset or a held-out part)",
    )
    g.add_argument("--val-subset", metavar="NAME", help="VOC list or YOLO split of the validation photos")
    g.add_argument(
        "--val-fraction",
        type=number_in("--val-fraction", 0.0, 1.0, hi_open=True),
        default=0.2,
        help="without --val or --val-subset: this part of --data's photos, chosen by --seed (default: 0.2)",
    )
    add_detect_options(p)
    g = p.add_argument_group("crops and threshold")
    g.add_argument(
        "--context",
        type=finite_number("--context", 1.0),
        default=2.0,
        help="crop side over the box's longer side: the ground around an object tells a rock from a "
        "person (default: 2)",
    )
    g.add_argument(
        "--min-side",
        type=int_at_least("--min-side", 1),
        default=32,
        help="smallest crop side in photo pixels (default: 32)",
    )
    g.add_argument(
        "--mine-conf",
        type=number_in("--mine-conf"),
        default=0.05,
        help="detector threshold while collecting crops, below --conf for more negatives (default: 0.05)",
    )
    g.add_argument(
        "--random-negatives",
        type=int_at_least("--random-negatives", 0),
        default=2,
        help="random ground windows per photo as background (default: 2)",
    )
    g.add_argument(
        "--max-recall-loss",
        type=number_in("--max-recall-loss", 0.0, 1.0, hi_open=True),
        default=0.01,
        help="largest part of the people found at --conf that the classifier may reject (default: 0.01)",
    )
    g = p.add_argument_group("classifier training")
    g.add_argument(
        "--classifier",
        default="yolov8n-cls.yaml",
        metavar="YAML|PT",
        help="Ultralytics classification model, from scratch or a -cls .pt (default: yolov8n-cls.yaml)",
    )
    g.add_argument(
        "--imgsz",
        type=int_at_least("--imgsz", 32),
        default=64,
        help="classifier input in pixels (default: 64)",
    )
    g.add_argument("--epochs", type=int_at_least("--epochs", 1), default=15, help="epochs (default: 15)")
    g.add_argument(
        "--batch-size", type=int_at_least("--batch-size", 1), default=64, help="crops per batch (default: 64)"
    )
    g.add_argument(
        "--budget-mb",
        type=finite_number("--budget-mb", 0.0, inclusive=False),
        default=10.0,
        help="largest acceptable checkpoint and ONNX of the classifier in MB (default: 10)",
    )
    g.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0 (default: cpu)")
    g.add_argument(
        "--workers", type=int_at_least("--workers", 0), default=0, help="data-loading processes (default: 0)"
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        help="any other Ultralytics training argument",
    )
    p.add_argument(
        "--out", default="runs/verifier", metavar="DIR", help="output folder (default: runs/verifier)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_verifier)
    return p


def _verifier_photos(a: argparse.Namespace) -> tuple[list, list, list[str]]:
    """(training photos, validation photos, annotation problems) as the data options say."""
    from edgetile.runtime.evaluation.annotations import load_dataset

    try:
        ds = load_dataset(a.data, a.format, subset=a.subset)
        if a.val is not None or a.val_subset is not None:
            val = load_dataset(a.val or a.data, a.format, subset=a.val_subset)
            train_photos, val_photos, problems = ds.photos, val.photos, ds.problems + val.problems
        else:
            import numpy as np

            order = np.random.default_rng(a.seed).permutation(len(ds.photos))
            n_val = max(1, int(round(a.val_fraction * len(ds.photos))))
            val_photos = [ds.photos[i] for i in sorted(order[:n_val])]
            train_photos = [ds.photos[i] for i in sorted(order[n_val:])]
            problems = ds.problems
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if not train_photos or not val_photos:
        raise UsageError(
            f"--data {a.data}: expected training and validation photos, found {len(train_photos)} and "
            f"{len(val_photos)}"
        )
    return train_photos, val_photos, problems


def cmd_train_verifier(a: argparse.Namespace) -> int:
    _no_runtime_installs()
    from edgetile.runtime.options.detect import detect_config_from_args, model_paths
    from edgetile.runtime.verifier import CropConfig

    from .budget import BudgetError
    from .verifier import VerifierOptions, train_verifier

    for given, option in ((a.verify, "--verify"), (a.verify_thr, "--verify-thr")):
        if given is not None:
            raise UsageError(
                f"{option}: expected none here: train-verifier makes the classifier and chooses its threshold"
            )
    if a.embed is not None:
        raise UsageError(
            "--embed: expected none here: train-verifier mines crops by boxes, not by appearance"
        )
    train_photos, val_photos, problems = _verifier_photos(a)
    try:
        opt = VerifierOptions(
            model=a.classifier,
            imgsz=a.imgsz,
            epochs=a.epochs,
            batch=a.batch_size,
            workers=a.workers,
            seed=a.seed,
            device=a.device,
            crop=CropConfig(a.context, a.min_side),
            mine_conf=a.mine_conf,
            random_negatives=a.random_negatives,
            max_recall_loss=a.max_recall_loss,
            budget_mb=a.budget_mb,
            overrides=_key_values(a.set, "--set"),
        )
        result = train_verifier(
            train_photos,
            val_photos,
            model_paths(a),
            a.out,
            config=detect_config_from_args(a),
            weights=a.model_weights,
            backend=a.backend,
            options=opt,
            progress=_progress(a),
        )
    except BudgetError as exc:
        raise UsageError(f"refused: {exc}") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    for line in problems[:20]:
        print(f"problem: {line}", file=sys.stderr)
    print(result.summary())
    return EXIT_SOME_FAILED if problems or result.report["problems"] else EXIT_OK


# --------------------------------------------------------------------------------------------------- train-embedder


def register_train_embedder(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile train-embedder --out DIR`."""
    p = subparsers.add_parser(
        "train-embedder",
        help="train the appearance embedding that tells people apart across photos (detect --embed)",
        description="Train an appearance embedding by metric learning: crops of the same person in several "
        "photos (other headings, sizes, light, ground, a tree over part of them, blur) are pulled together, "
        "crops of other people, above all of people in similar clothes, pushed apart. The crops are a folder "
        "per person (--crops ID/*.png, cut as the runtime cuts them) or rendered from synthetic people. A "
        "small torchvision network from random initialisation (GeM pooling, 128 values, unit length) is "
        "trained by pytorch-metric-learning within its own weight budget and exported to OUT/embedder.onnx "
        "(which 'edgetile export engine' builds like a detector). On held-out people it reports the "
        "verification accuracy of same/different pairs at the best threshold and the ROC AUC, and stores "
        "that threshold in the ONNX (OUT/embedder_report.json).",
        epilog="Example: edgetile train-embedder --people 300 --val-people 100 --epochs 30 --out runs/embedder\n"
        "then: edgetile detect PHOTOS --embed runs/embedder/embedder.onnx --out results\n"
        "Exit codes: 0 done, 1 done but some crops were unreadable, 2 usage error or refused by the budget.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("crops")
    g.add_argument(
        "--crops",
        metavar="DIR",
        help="crops to train on, one folder per person (DIR/ID/*.png), at least two per person "
        "(default: rendered synthetic people)",
    )
    g.add_argument(
        "--val-crops",
        metavar="DIR",
        help="held-out people to measure and choose the threshold on, laid out like --crops, none of them "
        "in --crops (default: rendered synthetic people never seen in training)",
    )
    g.add_argument(
        "--people",
        type=int_at_least("--people", 2),
        default=300,
        help="synthetic people to render for training, without --crops (default: 300)",
    )
    g.add_argument(
        "--val-people",
        type=int_at_least("--val-people", 2),
        default=100,
        help="synthetic people to render for validation, without --val-crops (default: 100)",
    )
    g.add_argument(
        "--sightings",
        type=int_at_least("--sightings", 2),
        default=8,
        help="crops rendered per synthetic person (default: 8)",
    )
    g.add_argument(
        "--context",
        type=finite_number("--context", 1.0),
        default=1.25,
        help="crop side over the box's longer side: the person and a margin for loose boxes (default: 1.25)",
    )
    g.add_argument(
        "--min-side",
        type=int_at_least("--min-side", 1),
        default=16,
        help="smallest crop side in photo pixels (default: 16)",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--backbone",
        choices=["mobilenet_v3_small", "mobilenet_v3_large", "resnet18"],
        default="mobilenet_v3_small",
        help="torchvision backbone, from random initialisation (default: mobilenet_v3_small, 3.9 MB)",
    )
    g.add_argument(
        "--imgsz",
        type=int_at_least("--imgsz", 32),
        default=64,
        help="crop side in model pixels, a multiple of 32 (default: 64)",
    )
    g.add_argument(
        "--loss",
        choices=["triplet", "arcface"],
        default="triplet",
        help="triplet: margin loss on the triplets --miner picks in each batch; arcface: additive "
        "angular margin over the training people (default: triplet)",
    )
    g.add_argument(
        "--miner",
        choices=["semihard", "batch_hard", "all"],
        default="semihard",
        help="which triplets of a batch the triplet loss learns from: semihard (negatives farther than the "
        "positive but within the margin), batch_hard (each anchor's hardest positive and negative; can "
        "collapse from random initialisation), all (every triplet within the margin) (default: semihard)",
    )
    g.add_argument(
        "--margin",
        type=finite_number("--margin", 0.0, inclusive=False),
        default=None,
        help="triplet margin (default 0.2), or ArcFace's margin in degrees (default 28.6)",
    )
    g.add_argument("--epochs", type=int_at_least("--epochs", 1), default=30, help="epochs (default: 30)")
    g.add_argument(
        "--batch-size",
        type=int_at_least("--batch-size", 4),
        default=64,
        help="crops per batch, a multiple of --per-person (default: 64)",
    )
    g.add_argument(
        "--per-person",
        type=int_at_least("--per-person", 2),
        default=4,
        help="crops of one person in a batch (default: 4)",
    )
    g.add_argument(
        "--lr",
        type=finite_number("--lr", 0.0, inclusive=False),
        default=1e-3,
        help="Adam learning rate (default: 0.001)",
    )
    g.add_argument(
        "--max-minutes",
        type=finite_number("--max-minutes", 0.0),
        default=0.0,
        help="stop after the epoch that passes this many minutes of training (default: 0, no limit)",
    )
    g.add_argument(
        "--budget-mb",
        type=finite_number("--budget-mb", 0.0, inclusive=False),
        default=10.0,
        help="largest acceptable checkpoint and ONNX of the embedder in MB (default: 10)",
    )
    g.add_argument("--device", default="cpu", help="cpu, or a CUDA device such as cuda:0 (default: cpu)")
    g.add_argument(
        "--workers",
        type=int_at_least("--workers", 1),
        default=1,
        help="processes rendering crops (default: 1)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--out", default="runs/embedder", metavar="DIR", help="output folder (default: runs/embedder)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=cmd_train_embedder)
    return p


def cmd_train_embedder(a: argparse.Namespace) -> int:
    from edgetile.runtime.verifier import CropConfig

    from .budget import BudgetError
    from .embedder import EmbedderOptions, train_embedder

    if not _progress(a):
        # pytorch-metric-learning's trainer draws a progress bar per epoch with no way to turn it off
        # but tqdm's own switch, read from the environment (this process runs this one command).
        os.environ.setdefault("TQDM_DISABLE", "1")
    for given, option in ((a.crops, "--crops"), (a.val_crops, "--val-crops")):
        if given is not None and not Path(given).is_dir():
            raise UsageError(
                f"{option}: expected a folder of person folders (ID/*.png), found no folder {given}"
            )
    try:
        opt = EmbedderOptions(
            backbone=a.backbone,
            imgsz=a.imgsz,
            crop=CropConfig(a.context, a.min_side),
            loss=a.loss,
            miner=a.miner,
            margin=a.margin,
            epochs=a.epochs,
            per_identity=a.per_person,
            batch=a.batch_size,
            lr=a.lr,
            max_minutes=a.max_minutes,
            seed=a.seed,
            device=a.device,
            budget_mb=a.budget_mb,
        )
        result = train_embedder(
            a.out,
            opt,
            train_crops=a.crops,
            val_crops=a.val_crops,
            people=(a.people, a.val_people),
            sightings=a.sightings,
            progress=_progress(a),
            log=(lambda line: None) if a.quiet else (lambda line: print(line, file=sys.stderr)),
            workers=a.workers,
        )
    except BudgetError as exc:
        raise UsageError(f"refused: {exc}") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    for line in result.report["problems"][:20]:  # type: ignore[index]
        print(f"problem: {line}", file=sys.stderr)
    print(result.summary())
    return EXIT_SOME_FAILED if result.report["problems"] else EXIT_OK


# --------------------------------------------------------------------------------------------------- tune


def register_tune(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile tune --data mini.yaml`."""
    p = subparsers.add_parser(
        "tune",
        help="search hyperparameters by genetic evolution (or Ray Tune) on a mini dataset",
        description="Search training hyperparameters with Ultralytics' genetic evolution: each iteration mutates the "
        "best candidates so far and trains a short run. Writes OUT/tune_results.csv (one row per "
        "candidate) and OUT/best_hyperparameters.yaml for 'edgetile train --hyp'. With --ray the same "
        "space is searched on Ray Tune, which several machines can share (one 'ray start --head', "
        "the others 'ray start --address').",
        epilog="Example: edgetile tune --data mini/data.yaml --model yolov8s.yaml --iterations 50 --epochs 10 "
        "--space lr0 lrf momentum weight_decay=0:0.001",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", required=True, metavar="YAML", help="a small data.yaml: tuning trains many short runs"
    )
    p.add_argument(
        "--model", default="yolov8n.yaml", metavar="YAML|PT", help="model to tune (default: yolov8n.yaml)"
    )
    p.add_argument(
        "--fold",
        type=int_at_least("--fold", 0),
        default=None,
        metavar="K",
        help="use fold K made by 'dataset tiles --folds'",
    )
    p.add_argument(
        "--space",
        nargs="+",
        default=["lr0", "lrf", "momentum"],
        metavar="NAME[=LO:HI]",
        help="hyperparameters to search; known ones have Ultralytics' bounds, any other training "
        "argument needs NAME=LO:HI (default: lr0 lrf momentum)",
    )
    p.add_argument(
        "--iterations",
        type=int_at_least("--iterations", 1),
        default=30,
        help="candidates to train (default: 30)",
    )
    p.add_argument(
        "--epochs",
        type=int_at_least("--epochs", 1),
        default=10,
        help="epochs per candidate: enough to rank, not to finish (default: 10)",
    )
    p.add_argument("--imgsz", type=int_at_least("--imgsz", 32), default=640, help="input size (default: 640)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    p.add_argument(
        "--optimizer",
        default="AdamW",
        help="optimizer, fixed for the search and written to the result (default: AdamW)",
    )
    p.add_argument("--device", default="", help="cpu or a CUDA index (default: Ultralytics' choice)")
    p.add_argument(
        "--workers", type=int_at_least("--workers", 0), default=2, help="data-loading processes (default: 2)"
    )
    p.add_argument("--out", default="runs/tune", metavar="DIR", help="output folder (default: runs/tune)")
    p.add_argument("--resume", action="store_true", help="continue the search already in --out")
    p.add_argument("--ray", action="store_true", help="search on Ray Tune (pip install 'edgetile[ray]')")
    p.add_argument(
        "--ray-search",
        choices=("random", "optuna"),
        default="random",
        help="Ray's search algorithm; optuna needs 'pip install optuna' (default: random)",
    )
    p.add_argument(
        "--grace-period",
        type=int_at_least("--grace-period", 1),
        default=1,
        help="Ray's ASHA scheduler: epochs before a poor trial may be stopped (default: 1)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        help="other fixed Ultralytics training arguments, e.g. --set mosaic=0 amp=false",
    )
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(a: argparse.Namespace) -> int:
    _no_runtime_installs()
    from .tuning import TuneOptions, parse_space, tune

    try:
        opt = TuneOptions(
            model=a.model,
            space=parse_space(a.space),
            iterations=a.iterations,
            epochs=a.epochs,
            imgsz=a.imgsz,
            batch=a.batch,
            device=a.device,
            workers=a.workers,
            optimizer=a.optimizer,
            out=a.out,
            overrides=_key_values(a.set, "--set"),
        )
        result = tune(
            a.data,
            opt,
            fold=a.fold,
            ray=a.ray,
            ray_search=a.ray_search,
            grace_period=a.grace_period,
            resume=a.resume,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    print(
        f"{len(result.rows)} candidate(s); best fitness {result.best_fitness:.5f}: {result.best}\n"
        f"results: {result.csv}\nbest: {result.best_yaml}  (edgetile train --hyp {result.best_yaml})",
        file=sys.stderr,
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- eval


def _adjust_conf(p: argparse.ArgumentParser, default: float, help_text: str) -> None:
    action = next(x for x in p._actions if x.dest == "conf")
    action.default, action.help = default, help_text
    p.set_defaults(conf=default)


def _floats(name: str):
    def parse(s: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(v) for v in s.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers for {name}, found {s!r}"
            ) from None
        if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
            raise argparse.ArgumentTypeError(f"expected numbers in [0, 1] for {name}, found {s!r}")
        return vals

    return parse


def register_eval(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile eval --model M --data DIR [--sweep]`."""
    from edgetile.runtime.options.detect import add_detect_options

    p = subparsers.add_parser(
        "eval",
        help="score a model on full-size annotated photos through the tiled runtime (COCO mAP, Lacmus)",
        description="Run the runtime's tiled path on full-size annotated photos (not tiles) and score it: COCO "
        "mAP@0.5, mAP@0.75 and mAP@0.5:0.95 by pycocotools (maxDets raised so hundreds of boxes per "
        "photo count), the Lacmus competition metric (VOC all-point AP@0.5 and F1 over scores >= 0.05, "
        "matched in submission order), recall and precision at --score-thr. Writes OUT/metrics.json, "
        "OUT/pr_curve.png and OUT/detections.csv. --sweep tries conf, merge method and merge threshold "
        "and writes OUT/best_detect.yaml, the best settings as detect option names, which "
        "'edgetile detect --settings' and 'edgetile serve --config' read; OUT/best_detect.json (the "
        "same with the scores and the DetectConfig), OUT/best_detect.txt (a detect command line) and "
        "OUT/sweep.csv (every setting's scores).",
        epilog="Example: edgetile eval --model person.onnx --data LADD/ --subset test --sweep --min-recall 0.9\n"
        "then: edgetile detect PHOTOS --model person.onnx --out results --settings runs/eval/best_detect.yaml\n"
        "Exit codes: 0 done, 1 done but some photos or annotations were bad, 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", required=True, metavar="DIR", help="annotated full-size photos (VOC, YOLO or COCO)"
    )
    p.add_argument("--format", choices=FORMATS, default="auto", help="annotation format (default: auto)")
    p.add_argument(
        "--subset", metavar="NAME", help="VOC ImageSets/Main list or YOLO split (default: every photo)"
    )
    p.add_argument(
        "--classes", nargs="+", metavar="NAME", help="dataset class names in id order (default: as annotated)"
    )
    p.add_argument(
        "--score-thr",
        type=number_in("--score-thr"),
        default=0.05,
        help="operating threshold for recall, precision and F1 (default: 0.05, the Lacmus rule)",
    )
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="output folder (default: runs/eval)")
    add_detect_options(p)
    _adjust_conf(
        p,
        0.001,
        "lowest score the model reports; keep it low, the mAPs need the whole curve (default: 0.001)",
    )
    g = p.add_argument_group("sweep")
    g.add_argument(
        "--sweep", action="store_true", help="tune conf, merge method and merge threshold on these photos"
    )
    g.add_argument(
        "--sweep-conf",
        type=_floats("--sweep-conf"),
        default=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6),
        metavar="C1,C2,...",
        help="operating thresholds to try (default: 0.05,0.1,...,0.6)",
    )
    g.add_argument(
        "--sweep-merge",
        default="ios,nms,nmm,wbf",
        metavar="M1,M2",
        help="merge methods to try (default: ios,nms,nmm,wbf)",
    )
    g.add_argument(
        "--sweep-merge-thr",
        type=_floats("--sweep-merge-thr"),
        default=(0.3, 0.4, 0.5, 0.6, 0.7),
        metavar="T1,T2,...",
        help="merge thresholds to try (default: 0.3,0.4,0.5,0.6,0.7)",
    )
    g.add_argument(
        "--objective",
        choices=("f1", "lacmus_ap50", "lacmus_f1", "map50", "map75", "map50_95"),
        default="f1",
        help="what the sweep maximises; conf-free metrics then take the conf of best F1 (default: f1)",
    )
    g.add_argument(
        "--min-recall",
        type=number_in("--min-recall"),
        default=None,
        help="only settings reaching this recall qualify: recall first when every miss counts",
    )
    p.add_argument(
        "--errors",
        metavar="DIR",
        help="error analysis: crops of every false positive and miss at --score-thr, grouped by box size "
        "(<16, 16-32, 32-64, 64+ px) and by photo with a contact sheet per group, errors.csv, and plots "
        "of the box-count/size/ratio distributions of each split and of the errors (default: none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_eval)
    return p


def _eval_records(a: argparse.Namespace, result, out: Path) -> dict[str, Path]:
    """With --embed, detections.json: the embeddings have no column in the Lacmus CSV, detect's records do."""
    if a.embed is None:
        return {}
    from .evaluation import write_detections_json

    return {"records": write_detections_json(result, out / "detections.json")}


def cmd_eval(a: argparse.Namespace) -> int:
    import json
    import shlex
    from dataclasses import replace

    from edgetile.runtime.evaluation.annotations import load_dataset
    from edgetile.runtime.evaluation.metrics import evaluate
    from edgetile.runtime.options.detect import detect_config_from_args, model_set, open_detector

    from .evaluation import SweepGrid, sweep, write_eval

    try:
        ds = load_dataset(a.data, a.format, a.classes, subset=a.subset)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if not ds.photos:
        raise UsageError(
            f"--data {a.data}: expected annotated photos, found none usable ({len(ds.problems)} problem(s))"
        )
    out = Path(a.out)
    with open_detector(a) as det:
        try:
            result = evaluate(det, ds, a.score_thr, progress=_progress(a))
        except ValueError as exc:
            raise UsageError(str(exc).splitlines()[0]) from exc
    result.problems[:0] = ds.problems
    files = write_eval(
        result, out, title=f"{Path(a.model[0]).name if a.model else 'demo model'} on {ds.root.name}"
    )
    files.update(_eval_records(a, result, out))
    if not a.quiet:
        for line in result.problems[:20]:
            print(f"problem: {line}", file=sys.stderr)
        for line in result.notes:
            print(f"note: {line}", file=sys.stderr)
        print(result.summary(), file=sys.stderr)
        print(f"results: {'  '.join(str(f) for f in files.values())}", file=sys.stderr)
    if a.errors:
        from .errors import dataset_splits, write_error_report

        try:
            splits = dataset_splits(a.data, a.format, a.classes)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"--errors: the splits of {a.data}: {str(exc).splitlines()[0]}") from exc
        report = write_error_report(result, a.errors, a.score_thr, splits)
        if not a.quiet:
            print(report.summary(), file=sys.stderr)
    if a.sweep:
        merges = tuple(m.strip() for m in a.sweep_merge.split(",") if m.strip())
        try:
            grid = SweepGrid(confs=a.sweep_conf, merges=merges, merge_thrs=a.sweep_merge_thr)
            ms = model_set(a)
            models = a.model or ms.paths  # an ensemble file is named as given, not by its members
            base = detect_config_from_args(a)
            if ms.fusion_iou is not None:
                base = replace(base, fusion_iou=ms.fusion_iou)
            res = sweep(
                ms.paths,
                ds,
                base,
                grid,
                weights=ms.weights,
                backend=a.backend,
                objective=a.objective,
                min_recall=a.min_recall,
                progress=_progress(a),
                verifier=a.verify,
                verifier_threshold=a.verify_thr,
            )
        except ValueError as exc:
            raise UsageError(str(exc).splitlines()[0]) from exc
        data = str(ds.root) + (f" (subset {a.subset})" if a.subset else "") + f", {len(ds.photos)} photo(s)"
        paths = res.write(out, models, weights=a.model_weights, data=data)
        if not a.quiet:
            b = res.best
            for line in res.notes:
                print(f"note: {line}", file=sys.stderr)
            use = shlex.join(
                [
                    "edgetile",
                    "detect",
                    "PHOTOS",
                    "--model",
                    *models,
                    "--out",
                    "results",
                    "--settings",
                    str(paths["yaml"]),
                    *(["--verify", a.verify] if a.verify else []),
                ]
            )
            print(
                f"sweep: {len(res.rows)} settings; best by {a.objective}: merge {b['merge']} {b['merge_thr']:g}, "
                f"conf {b['conf']:g}: recall {b['recall']:.4f} precision {b['precision']:.4f} F1 {b['f1']:.4f}\n"
                f"settings: {paths['yaml']} (for 'edgetile detect --settings' and 'edgetile serve --config')\n"
                f"detect with: {use}\n"
                f"  or: {json.loads(paths['json'].read_text())['command']}\n"
                f"results: {paths['csv']}  {paths['yaml']}  {paths['json']}",
                file=sys.stderr,
            )
    return EXIT_SOME_FAILED if result.problems else EXIT_OK


# --------------------------------------------------------------------------------------------------- pseudo-label


def register_pseudo_label(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile pseudo-label PHOTOS --model M --out DIR`."""
    from edgetile.runtime.options.detect import add_detect_options

    p = subparsers.add_parser(
        "pseudo-label",
        help="turn a model's confident detections on unlabelled photos into an extra dataset",
        description="Run a trained model (ONNX or engine) through the tiled runtime on unlabelled photos and write "
        "its confident boxes as a separate dataset (LADD layout: JPEGImages/, Annotations/; plus YOLO "
        "labels/, classes.txt and pseudo_labels.csv with every score), ready for 'edgetile dataset tiles'. "
        "A photo is kept only when all its boxes are confident (none in the --ambiguous grey zone) and "
        "their count is within --min-boxes..--max-boxes.",
        epilog="Example: edgetile pseudo-label flights/2024-07/ --model person.onnx --out extra/ --conf 0.6\n"
        "Exit codes: 0 done, 1 some photos unreadable (the rest written), 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="unlabelled photos, folders or glob patterns")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the new dataset")
    add_detect_options(p)
    _adjust_conf(p, 0.5, "a box becomes a label at or above this score (default: 0.5)")
    p.add_argument(
        "--ambiguous",
        type=number_in("--ambiguous", 0.001, 1.0),
        default=0.2,
        help="a photo with any box scoring between this and --conf is left out: an uncertain person "
        "would be learnt as background (default: 0.2; equal to --conf turns it off)",
    )
    p.add_argument(
        "--min-boxes",
        type=int_at_least("--min-boxes", 0),
        default=1,
        help="fewest boxes for a photo to be kept; 0 also keeps confidently empty photos (default: 1)",
    )
    p.add_argument(
        "--max-boxes",
        type=int_at_least("--max-boxes", 0),
        default=100,
        help="most boxes for a photo to be kept (default: 100)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_pseudo_label)
    return p


def cmd_pseudo_label(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from edgetile.runtime.options.detect import detect_config_from_args, model_set

    from .pseudo import PseudoLabelFilter, pseudo_label

    ms = model_set(a)
    config = detect_config_from_args(a)
    if ms.fusion_iou is not None:
        config = replace(config, fusion_iou=ms.fusion_iou)
    try:
        flt = PseudoLabelFilter(
            conf=a.conf, ambiguous=min(a.ambiguous, a.conf), min_boxes=a.min_boxes, max_boxes=a.max_boxes
        )
        report = pseudo_label(
            ms.paths,
            a.sources,
            a.out,
            flt,
            config,
            backend=a.backend,
            weights=ms.weights,
            progress=_progress(a),
        )
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if not a.quiet:
        for line in report.problems:
            print(f"problem: {line}", file=sys.stderr)
        print(report.summary(), file=sys.stderr)
    return EXIT_SOME_FAILED if report.problems else EXIT_OK


# --------------------------------------------------------------------------------------------------- recipe


def register_recipe(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile recipe lacmus DATA --out DIR`."""
    p = subparsers.add_parser(
        "recipe",
        help="run a winning recipe end to end, resumable (recipe lacmus)",
        description="Run a competition-winning training recipe as one command, each step recorded in "
        "DIR/recipe.json so that a rerun resumes instead of repeating.",
    )
    sub = p.add_subparsers(dest="recipe_command", metavar="RECIPE")
    p.set_defaults(func=_recipe_needs_name)
    r = sub.add_parser(
        "lacmus",
        help="the Lacmus 1st place: 1024 windows, hard negatives, 640 then 1024, a 1:2 WBF ensemble",
        description="The Lacmus Drone Dataset competition's 1st-place pipeline on annotated photos (VOC, YOLO or "
        "COCO): (1) 1024 px windows with every person and some random empty windows, in stratified folds; "
        "(2) model 1 at 640 on the windows with people; (3) hard negatives: the empty windows model 1 "
        "scores highest, p = 1 - prod(1 - s_i); (4) model 2 at 640 with them; (5) more hard negatives; "
        "(6) model 3 at 1024 with those, from model 2's best weights; (7) models 2 and 3 fused by WBF "
        "1:2 with flip TTA and tiles merged by IoS 0.5 (DIR/ensemble.yaml, DIR/ensemble_detect.yaml); "
        "(8) full-photo evaluation on the held-out fold, the threshold sweep (DIR/eval/best_detect.yaml) "
        "and the error analysis (DIR/eval/errors/). Each step calls the library function of its own "
        "command; DIR/recipe.json records each finished step, and a rerun skips them.",
        epilog="Example: edgetile recipe lacmus LADD/ --out runs/lacmus --device 0\n"
        "Quick try of every step: edgetile recipe lacmus LADD/ --out runs/try --scale 0.05 --model yolov8n.yaml\n"
        "Then: edgetile detect PHOTOS --model runs/lacmus/ensemble.yaml --settings "
        "runs/lacmus/eval/best_detect.yaml --out results\n"
        "Exit codes: 0 done, 1 done but some annotations were bad, 2 usage error or a model refused by "
        "the budget.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "data",
        metavar="DATA",
        help="annotated full-size photos: VOC folder, YOLO folder or data.yaml, COCO .json",
    )
    r.add_argument(
        "--out", required=True, metavar="DIR", help="the recipe's folder; rerun with the same DIR to resume"
    )
    r.add_argument("--format", choices=FORMATS, default="auto", help="annotation format (default: auto)")
    r.add_argument(
        "--classes", nargs="+", metavar="NAME", help="class names in id order (default: as annotated)"
    )
    r.add_argument(
        "--scale",
        type=finite_number("--scale", 0.0, inclusive=False),
        default=1.0,
        help="multiply every model's epochs (at least 1 each): 0.05 tries every step quickly (default: 1)",
    )
    r.add_argument(
        "--model",
        default="yolov8s.yaml",
        metavar="YAML|PT",
        help="architecture of the three models (default: yolov8s.yaml, 21 MB best.pt)",
    )
    r.add_argument(
        "--tile", type=int_at_least("--tile", 32), default=1024, help="window side (default: 1024)"
    )
    r.add_argument(
        "--overlap",
        type=number_in("--overlap", 0.0, 0.9, hi_open=True),
        default=0.2,
        help="window overlap (default: 0.2)",
    )
    r.add_argument(
        "--folds", type=int_at_least("--folds", 2), default=5, help="stratified folds (default: 5)"
    )
    r.add_argument(
        "--negatives",
        type=int_at_least("--negatives", 0),
        default=None,
        help="random empty windows of the first dataset (default: a quarter of the windows with people)",
    )
    r.add_argument(
        "--hard-negatives",
        nargs=2,
        type=int_at_least("--hard-negatives", 0),
        default=[400, 1400],
        metavar=("N2", "N3"),
        help="hard negatives for model 2 and for model 3 (default: 400 1400)",
    )
    r.add_argument(
        "--imgsz",
        nargs=2,
        type=int_at_least("--imgsz", 32),
        default=[640, 1024],
        metavar=("SMALL", "LARGE"),
        help="input size of models 1-2 and of model 3 (default: 640 1024)",
    )
    r.add_argument(
        "--epochs",
        nargs=3,
        type=int_at_least("--epochs", 1),
        default=[30, 50, 50],
        metavar=("E1", "E2", "E3"),
        help="epochs of models 1, 2 and 3 before --scale (default: 30 50 50)",
    )
    r.add_argument(
        "--lr",
        nargs=3,
        type=finite_number("--lr", 0.0, inclusive=False),
        default=[1e-3, 1e-3, 1e-4],
        metavar=("L1", "L2", "L3"),
        help="learning rate (AdamW) of models 1, 2 and 3; model 3 fine-tunes model 2 (default: 1e-3 1e-3 1e-4)",
    )
    r.add_argument(
        "--fusion-weights",
        nargs="+",
        default=["1", "2"],
        metavar="W|choose",
        help="weights of models 2 and 3 in the ensemble, or 'choose' among 1:1, 1:2, 2:1 on the held-out "
        "photos (default: 1 2, the winner's)",
    )
    r.add_argument("--no-tta", action="store_true", help="no horizontal-flip pass in the ensemble")
    r.add_argument("--batch", type=int, default=16, help="training batch size (default: 16)")
    r.add_argument("--device", default="", help="cpu or a CUDA index (default: Ultralytics' choice)")
    r.add_argument(
        "--workers", type=int_at_least("--workers", 0), default=2, help="data-loading processes (default: 2)"
    )
    r.add_argument("--seed", type=int, default=0, help="seeds folds, negatives and training (default: 0)")
    r.add_argument(
        "--budget-mb",
        type=finite_number("--budget-mb", 0.0, inclusive=False),
        default=100.0,
        help="weight budget of each model (default: 100)",
    )
    r.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        help="other Ultralytics training arguments for every model, e.g. --set mosaic=0.5",
    )
    r.set_defaults(func=cmd_recipe_lacmus)
    return p


def _recipe_needs_name(a: argparse.Namespace) -> int:
    raise UsageError("expected a recipe: lacmus (see 'edgetile recipe lacmus --help')")


def cmd_recipe_lacmus(a: argparse.Namespace) -> int:
    _no_runtime_installs()
    from .budget import BudgetError
    from .recipe import LacmusRecipe, run_lacmus

    if a.fusion_weights == ["choose"]:
        weights = None
    else:
        w = _fusion_weights(a.fusion_weights)
        if isinstance(w, str) or len(w) != 2:
            raise UsageError(
                f"--fusion-weights: expected two weights or 'choose', found {' '.join(a.fusion_weights)}"
            )
        weights = tuple(w)
    try:
        recipe = LacmusRecipe(
            model=a.model,
            tile=a.tile,
            overlap=a.overlap,
            folds=a.folds,
            negatives=a.negatives,
            hard_negatives=tuple(a.hard_negatives),
            imgsz=tuple(a.imgsz),
            epochs=tuple(a.epochs),
            lr=tuple(a.lr),
            fusion_weights=weights,
            tta=not a.no_tta,
            batch=a.batch,
            device=a.device,
            workers=a.workers,
            seed=a.seed,
            budget_mb=a.budget_mb,
            scale=a.scale,
            overrides=_key_values(a.set, "--set"),
        )
        result = run_lacmus(a.data, a.out, recipe, format=a.format, class_names=a.classes)
    except BudgetError as exc:
        raise UsageError(f"refused: {exc}") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    print(result.summary(), file=sys.stderr)
    problems = (result.steps.get("tiles") or {}).get("outputs", {}).get("problems", 0)
    return EXIT_SOME_FAILED if problems else EXIT_OK


# --------------------------------------------------------------------------------------------------- synth


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 64:
        raise argparse.ArgumentTypeError(f"--size: expected WIDTHxHEIGHT of at least 64x64, found {text!r}")
    return size


def register_synth(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`edgetile synth flight OUT`: synthetic flight lines with people's identities across photos."""
    p = subparsers.add_parser(
        "synth",
        help="draw synthetic aerial data (synth flight: overlapping photos of a line with identities)",
        description="Draw synthetic aerial data (train/synth.py): no real photos are needed.",
    )
    sub = p.add_subparsers(dest="synth_command", metavar="SUBCOMMAND")
    p.set_defaults(func=_synth_needs_subcommand)
    f = sub.add_parser(
        "flight",
        help="overlapping photos of flight lines: the same people across photos, with identities and poses",
        description="Draw flight lines over synthetic ground: each flight photographs the same people "
        "(same clothes, body and renderer), groups of alike-dressed people standing close together, some "
        "walking slowly, and person-like distractors, in consecutive overlapping photos. Each photo carries "
        "its recorded pose in DJI XMP (so detect --format geojson georeferences it); annotations.json gives "
        "each person box an identity; flights.json holds the true and recorded poses and where everyone "
        "stood.",
        epilog="Example (20 flights of 8 photos, identity crops for an embedding):\n"
        "  edgetile synth flight flights/ --flights 20 --crops crops/\n"
        "Exit codes: 0 done, 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument(
        "out", metavar="OUT", help="output folder (JPEGImages/, annotations.json, flights.json, ...)"
    )
    f.add_argument(
        "--flights", type=int_at_least("--flights", 1), default=1, help="number of flights (default: 1)"
    )
    f.add_argument(
        "--photos", type=int_at_least("--photos", 1), default=8, help="photos per flight line (default: 8)"
    )
    f.add_argument("--seed", type=int, default=0, help="flight k is drawn from seed + k (default: 0)")
    f.add_argument(
        "--altitude",
        type=finite_number("--altitude", 1.0),
        default=50.0,
        metavar="M",
        help="height above the ground in metres (default: 50)",
    )
    f.add_argument(
        "--overlap",
        type=number_in("--overlap", 0.0, 1.0, hi_open=True),
        default=0.6,
        help="forward overlap between consecutive photos, a fraction (default: 0.6)",
    )
    f.add_argument(
        "--size",
        type=_size,
        default=(2000, 1500),
        metavar="WxH",
        help="photo size in pixels (default: 2000x1500)",
    )
    f.add_argument(
        "--focal-px",
        type=finite_number("--focal-px", 1.0),
        default=None,
        help="focal length in pixels (default: 0.75 x the photo's width, a 26 mm-equivalent lens; "
        "a person's length in pixels is about 1.7 m x focal / altitude)",
    )
    f.add_argument(
        "--crops",
        metavar="DIR",
        help="also write each sighting as DIR/IDENTITY/PHOTO.png (the runtime's crop window at "
        "--crop-context), for "
        "training an appearance embedding",
    )
    f.add_argument(
        "--workers",
        type=int_at_least("--workers", 1),
        default=1,
        help="processes drawing flights (default: 1)",
    )
    f.add_argument(
        "--crop-context",
        type=finite_number("--crop-context", 1.0),
        default=1.25,
        metavar="X",
        help="identity crops' side over the box's longer side, at least 16 px; use your embedding model's "
        "(default: 1.25, the embedder's default: the person and a margin for a loose box)",
    )
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_synth_flight)
    return p


def _synth_needs_subcommand(a: argparse.Namespace) -> int:
    raise UsageError("synth: expected a subcommand: flight")


def cmd_synth_flight(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from .synth import FLIGHT_SCENE, FlightConfig, write_flights

    w, h = a.size
    try:
        config = FlightConfig(
            photos=a.photos,
            altitude_m=a.altitude,
            overlap=a.overlap,
            focal_px=a.focal_px if a.focal_px is not None else 0.75 * w,
            scene=replace(FLIGHT_SCENE, width=w, height=h),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    out = write_flights(
        a.out,
        a.flights,
        a.seed,
        config,
        crops=a.crops,
        crop_context=a.crop_context,
        workers=a.workers,
        progress=_progress(a),
    )
    if not a.quiet:
        print(f"{a.flights} flights of {a.photos} photos written to {out}", file=sys.stderr)
    return EXIT_OK
