"""Full-photo evaluation and the threshold/merge sweep behind ``edgetile eval``.

The sweep tunes the operating threshold (conf), the cross-tile merge method and its threshold on a
validation set. The models run once per photo (Detector.candidates, on the GPU path where the backend
has one); every merge setting then costs only the merge (Detector.merge), and every conf is scored
again from the kept detections.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgetile.runtime.detector import MERGE_METHODS, DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import Dataset
from edgetile.runtime.evaluation.metrics import (
    EvalResult,
    PhotoDetections,
    class_mapping,
    loaded_photos,
    map_classes,
    operating_point,
    score_detections,
)
from edgetile.runtime.files import write_text_atomic
from edgetile.runtime.options.detect import detect_args, detect_settings
from edgetile.runtime.outputs import CSV_HEADER, csv_rows
from edgetile.runtime.verifier import Verifier

OBJECTIVES = ("f1", "lacmus_ap50", "lacmus_f1", "map50", "map75", "map50_95")


@dataclass(frozen=True)
class SweepGrid:
    """Settings tried by the sweep.

    Attributes:
        confs: Operating thresholds (scored again from one run; the lowest is what the model runs at).
        merges: Cross-tile merge methods.
        merge_thrs: Merge thresholds.
    """

    confs: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)
    merges: tuple[str, ...] = MERGE_METHODS
    merge_thrs: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)

    def __post_init__(self) -> None:
        for name in ("confs", "merge_thrs"):
            vals = getattr(self, name)
            if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
                raise ValueError(f"{name}: expected numbers in [0, 1], found {list(vals)}")
        bad = [m for m in self.merges if m not in MERGE_METHODS]
        if not self.merges or bad:
            raise ValueError(
                f"merges: expected some of {', '.join(MERGE_METHODS)}, found {list(self.merges)}"
            )


@dataclass
class SweepResult:
    """Every setting's scores and the best one.

    Attributes:
        rows: One row per (merge, merge_thr, conf): recall, precision, F1, TP, FP, and the setting's
            mAPs and Lacmus AP/F1 (which do not depend on conf).
        best: The chosen row.
        config: The DetectConfig of the chosen row.
        objective: What was maximised.
        min_recall: The recall floor, or None.
        notes: How the choice was made.
        model_runs: Batches the models ran: each photo's once, whatever the number of merge settings.
    """

    rows: list[dict]
    best: dict
    config: DetectConfig
    objective: str
    min_recall: float | None
    notes: list[str] = field(default_factory=list)
    model_runs: int = 0

    def detect_args(self, weights: Sequence[float] | None = None) -> list[str]:
        """The detect options of the best setting, as command-line words."""
        return detect_args(self.config, weights)

    def settings(self, weights: Sequence[float] | None = None) -> dict[str, object]:
        """The best setting as detect option names -> values: what best_detect.yaml holds."""
        return detect_settings(self.config, weights)

    def write(
        self,
        out_dir: str | Path,
        models: Sequence[str | Path],
        weights: Sequence[float] | None = None,
        data: str | None = None,
    ) -> dict[str, Path]:
        """Write sweep.csv, best_detect.yaml, best_detect.json and best_detect.txt.

        best_detect.yaml holds the best setting as detect option names, under a comment saying where
        it came from: ``edgetile detect --settings`` and ``edgetile serve --config`` both read it.
        best_detect.json records the DetectConfig fields, the detect options as words, the command
        line, the objective and the scores; best_detect.txt is the command line.

        Args:
            out_dir: Output folder (created).
            models: The model(s) swept, named in the command line and the YAML's header.
            weights: Ensemble weights the sweep ran with, or None.
            data: What the photos were (e.g. the dataset folder and subset), for the YAML's header.

        Returns:
            "csv", "yaml", "json" and "txt" -> the paths written.
        """
        import yaml

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "sweep.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0].keys()))
            w.writeheader()
            w.writerows(self.rows)
        settings = self.settings(weights)
        words = detect_args(self.config, weights)
        cmd = ["edgetile", "detect", "PHOTOS", "--model", *map(str, models), "--out", "results", *words]
        scores = {k: self.best[k] for k in ("recall", "precision", "f1", "map50", "map75", "lacmus_ap50")}
        doc = {
            "detect_config": {**asdict(self.config), "tta": list(self.config.tta)},
            "detect_settings": settings,
            "detect_args": words,
            "command": shlex.join(cmd),
            "objective": self.objective,
            "min_recall": self.min_recall,
            "scores": scores,
            "notes": self.notes,
        }
        floor = "none" if self.min_recall is None else f"{self.min_recall:g}"
        header = [
            "Detection settings chosen by 'edgetile eval --sweep'; option names of 'edgetile detect'.",
            f"data: {data or 'not recorded'}",
            f"model(s): {' '.join(map(str, models))} (the file names no model: give --model when using it)",
            f"objective: {self.objective}, min recall: {floor}; {len(self.rows)} settings tried",
            "scores at these settings: "
            + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                for k, v in scores.items()
            ),
            "use: edgetile detect PHOTOS --model MODEL --out DIR --settings best_detect.yaml",
            "     edgetile serve --model MODEL --config best_detect.yaml ...",
            "options given on the command line win over this file.",
        ]
        body = yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)  # one key per line
        (out / "best_detect.yaml").write_text(
            "".join(f"# {' '.join(line.splitlines())}\n" for line in header) + body
        )
        (out / "best_detect.json").write_text(json.dumps(doc, indent=1))
        (out / "best_detect.txt").write_text(shlex.join(cmd) + "\n")
        return {
            "csv": out / "sweep.csv",
            "yaml": out / "best_detect.yaml",
            "json": out / "best_detect.json",
            "txt": out / "best_detect.txt",
        }


def sweep(
    models: Sequence[str | Path],
    dataset: Dataset,
    base: DetectConfig | None = None,
    grid: SweepGrid | None = None,
    weights: Sequence[float] | None = None,
    backend: str = "auto",
    objective: str = "f1",
    min_recall: float | None = None,
    progress: bool = False,
    verifier: str | Path | None = None,
    verifier_threshold: float | None = None,
) -> SweepResult:
    """Try every merge setting and operating threshold on a validation set; pick the best.

    Args:
        models: One model, or an ensemble (fused as detect fuses them).
        dataset: Validation photos with ground truth.
        base: Tiling, TTA and the rest of the detect settings, kept fixed.
        grid: What to try.
        weights: Ensemble weights.
        backend: "auto", "onnxruntime" or "tensorrt".
        objective: What to maximise: "f1" (at the conf, IoU 0.5; the default), or a conf-independent
            metric ("map50", "map75", "map50_95", "lacmus_ap50", "lacmus_f1"), whose best setting then
            gets the conf with the best F1.
        min_recall: Only settings reaching this recall qualify (recall first, when every miss counts).
        progress: Progress bar on stderr.
        verifier: A crop classifier that gives each merge's detections a second look, as detect
            --verify does.
        verifier_threshold: Its threshold (default: the one stored in it).

    Returns:
        The SweepResult.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, found {objective!r}")
    if min_recall is not None and not 0.0 <= min_recall <= 1.0:
        raise ValueError(f"min_recall: expected a fraction in [0, 1], found {min_recall!r}")
    base = base or DetectConfig()
    grid = grid or SweepGrid()
    settings = [(m, t) for m in grid.merges for t in grid.merge_thrs]
    run_conf = min(grid.confs)
    # Only merge settings vary, so one photo's candidates serve them all; every conf is scored from the
    # boxes found at the lowest.
    found_with = replace(base, conf=run_conf)
    merges = [replace(found_with, merge=m, merge_thr=t) for m, t in settings]
    runs = 0
    second_look = (
        Verifier(verifier, backend=backend, threshold=verifier_threshold) if verifier is not None else None
    )
    with Detector(
        [str(m) for m in models], weights=weights, backend=backend, config=found_with, verifier=second_look
    ) as detector:
        mapping, notes = class_mapping(detector.names, dataset.class_names)
        per_setting: list[list[PhotoDetections]] = [[] for _ in settings]
        problems: list[str] = []
        for photo, image in loaded_photos(dataset, problems, progress, desc="sweep"):
            candidates = detector.candidates(image)
            runs += candidates.batches
            for k, cfg in enumerate(merges):
                found = detector.merge(candidates, cfg)
                if second_look is not None:
                    found = second_look.verify(image, found)
                per_setting[k].append(PhotoDetections(photo, map_classes(found, mapping)))
    rows = []
    for (m, t), per_photo in zip(settings, per_setting):
        whole = score_detections(per_photo, dataset.class_names, run_conf)
        for c in sorted(grid.confs):
            tp, fp, n_gt, rec, prec, f1 = operating_point(per_photo, c)
            rows.append(
                {
                    "merge": m,
                    "merge_thr": t,
                    "conf": c,
                    "recall": rec,
                    "precision": prec,
                    "f1": f1,
                    "tp": tp,
                    "fp": fp,
                    "gt_boxes": n_gt,
                    "map50": whole.map50,
                    "map75": whole.map75,
                    "map50_95": whole.map50_95,
                    "lacmus_ap50": whole.lacmus_ap50,
                    "lacmus_f1": whole.lacmus_f1,
                }
            )
    notes = (
        list(notes) + problems + [f"the model ran at conf {run_conf:g}; mAPs count detections from there up"]
    )
    best = _choose(rows, objective, min_recall, notes)
    cfg = replace(
        base, conf=float(best["conf"]), merge=str(best["merge"]), merge_thr=float(best["merge_thr"])
    )
    return SweepResult(rows, best, cfg, objective, min_recall, notes, runs)


def _num(v: float) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else -1.0


def _choose(rows: list[dict], objective: str, min_recall: float | None, notes: list[str]) -> dict:
    pool = rows
    if min_recall is not None:
        pool = [r for r in rows if _num(r["recall"]) >= min_recall]
        if not pool:
            top = max(_num(r["recall"]) for r in rows)
            notes.append(
                f"no setting reaches recall {min_recall:g} (best {top:.4f}): the highest-recall settings "
                "were chosen from"
            )
            pool = [r for r in rows if _num(r["recall"]) == top]
    # Ties go to the lower conf: when two settings score alike, the one that misses fewer people wins.
    if objective == "f1":
        return max(pool, key=lambda r: (_num(r["f1"]), _num(r["recall"]), -r["conf"]))
    best_val = max(_num(r[objective]) for r in pool)
    tied = [r for r in pool if _num(r[objective]) == best_val]
    return max(tied, key=lambda r: (_num(r["f1"]), _num(r["recall"]), -r["conf"]))


def write_detections_csv(result: EvalResult, path: str | Path) -> Path:
    """Detections at or above the result's operating threshold in the Lacmus layout: id,xmin,ymin,xmax,ymax,score."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for pd in result.per_photo:
            d = pd.detections
            w.writerows(csv_rows(pd.photo.path.name, d[d.scores >= result.score_thr]))
    return Path(path)


def write_detections_json(result: EvalResult, path: str | Path) -> Path:
    """Detections at or above the result's operating threshold as detect's records, per photo.

    Written when the records carry more than detections.csv holds: ``eval --embed``'s embeddings, the
    verifier's two scores.
    """
    names = dict(enumerate(result.class_names))
    photos = [
        {
            "image": str(pd.photo.path),
            "detections": pd.detections[pd.detections.scores >= result.score_thr].to_records(names),
        }
        for pd in result.per_photo
    ]
    write_text_atomic(path, json.dumps(photos, indent=1))
    return Path(path)


def write_eval(result: EvalResult, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """metrics.json, pr_curve.png and detections.csv in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    tmp.replace(out / "metrics.json")
    return {
        "metrics": out / "metrics.json",
        "pr_curve": result.write_pr_curve(out / "pr_curve.png", title),
        "detections": write_detections_csv(result, out / "detections.csv"),
    }
