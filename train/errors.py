"""Error analysis behind ``edgetile eval --errors DIR``: look at what the model gets wrong.

Every false positive and every miss at the operating threshold is cut out of its photo (with some
context around it and the box drawn), grouped by box size and by photo, and laid out on one contact
sheet (PNG) per group, so a person can page through hundreds of errors in minutes: label errors,
rocks and logs taken for people, people too small for the tile size. The box-count, box-size and
aspect-ratio distributions of each split of the data, and of the errors against the ground truth,
are drawn as plots.

Matching is the evaluation's own (:func:`edgetile.runtime.evaluation.metrics.match_in_order`, IoU
0.5, class-aware): a detection at or above the threshold that matches no box is a false positive, a
box that no such detection matches is a miss.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.boxes import pairwise_overlap
from edgetile.runtime.evaluation.annotations import Dataset
from edgetile.runtime.evaluation.metrics import LACMUS_IOU, EvalResult, match_in_order

# Box size as the side of the square of the same area, in photo pixels: these people are 15-150 px.
SIZE_EDGES = (16, 32, 64)
KINDS = ("fp", "miss")
KIND_COLOUR = {"fp": (0, 0, 255), "miss": (0, 200, 255)}  # BGR: red for false positives, amber for misses


def size_bin(side: float, edges: Sequence[int] = SIZE_EDGES) -> str:
    """The size group of a box whose sqrt(w*h) is ``side``: '<16', '16-32', '32-64' or '64+' px."""
    if side < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in zip(edges, edges[1:]):
        if side < hi:
            return f"{lo}-{hi}"
    return f"{edges[-1]}+"


@dataclass(frozen=True)
class ErrorCase:
    """One false positive or miss.

    Attributes:
        kind: "fp" (a detection matching no box) or "miss" (a box no detection matches).
        photo: The photo's file.
        box: x1, y1, x2, y2 in photo pixels.
        class_id: The dataset class.
        score: The detection's score (false positives), or the best score of any detection
            overlapping the missed box (0 when none did): how close the model came.
        best_iou: The best IoU with the other side (ground truth for a false positive, detections
            at any score for a miss): a loose box and a missing one look different.
    """

    kind: str
    photo: Path
    box: tuple[float, float, float, float]
    class_id: int
    score: float
    best_iou: float

    @property
    def side(self) -> float:
        x1, y1, x2, y2 = self.box
        return math.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))

    @property
    def size_group(self) -> str:
        return size_bin(self.side)


def find_errors(
    result: EvalResult, score_thr: float | None = None, iou_thr: float = LACMUS_IOU
) -> list[ErrorCase]:
    """Every false positive and miss of an evaluation at an operating threshold.

    Args:
        result: What :func:`~edgetile.runtime.evaluation.metrics.evaluate` returned (it keeps every
            photo's detections).
        score_thr: The operating threshold (default: the result's own).
        iou_thr: IoU a true positive needs.

    Returns:
        False positives (by descending score), then misses, photo by photo.
    """
    thr = result.score_thr if score_thr is None else float(score_thr)
    cases: list[ErrorCase] = []
    for pd in result.per_photo:
        d, photo = pd.detections, pd.photo
        keep = d.scores >= thr
        det_boxes, det_scores, det_cls = d.xyxy[keep], d.scores[keep], d.class_ids[keep]
        all_boxes, all_scores, all_cls = d.xyxy, d.scores, d.class_ids
        for c in sorted(set(map(int, det_cls)) | set(map(int, photo.class_ids))):
            db, ds = det_boxes[det_cls == c], det_scores[det_cls == c]
            gt = photo.boxes[photo.class_ids == c]
            tp = match_in_order(db, gt, iou_thr)
            ious = pairwise_overlap(
                np.asarray(db, np.float64).reshape(-1, 4), np.asarray(gt, np.float64).reshape(-1, 4)
            )
            for i in np.flatnonzero(~tp):
                best = float(ious[i].max()) if ious.shape[1] else 0.0
                cases.append(ErrorCase("fp", photo.path, tuple(map(float, db[i])), c, float(ds[i]), best))
            found = _taken(db, gt, tp, iou_thr)
            ab, asc = all_boxes[all_cls == c], all_scores[all_cls == c]
            near = pairwise_overlap(
                np.asarray(gt, np.float64).reshape(-1, 4), np.asarray(ab, np.float64).reshape(-1, 4)
            )
            for j in np.flatnonzero(~found):
                touching = near[j] > 0 if near.shape[1] else np.zeros(0, bool)
                score = float(asc[touching].max()) if touching.any() else 0.0
                best = float(near[j].max()) if near.shape[1] else 0.0
                cases.append(ErrorCase("miss", photo.path, tuple(map(float, gt[j])), c, score, best))
    return cases


def _taken(det: np.ndarray, gt: np.ndarray, tp: np.ndarray, iou_thr: float) -> np.ndarray:
    """Which ground-truth boxes the true positives took (the same in-order rule as match_in_order)."""
    taken = np.zeros(len(gt), bool)
    if not len(gt) or not tp.any():
        return taken
    ious = pairwise_overlap(
        np.asarray(det, np.float64).reshape(-1, 4), np.asarray(gt, np.float64).reshape(-1, 4)
    )
    best = ious.argmax(axis=1)
    for i in np.flatnonzero(tp):
        taken[best[i]] = True
    return taken


def crop_case(image: np.ndarray, case: ErrorCase, context: float = 1.0, min_side: int = 48) -> np.ndarray:
    """The box with ``context`` times its size around it on each side (at least min_side px in all), box drawn.

    Returns:
        (h, w, 3) uint8 BGR crop.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = case.box
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    half_w = max(bw * (0.5 + context), min_side / 2)
    half_h = max(bh * (0.5 + context), min_side / 2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cx1, cy1 = int(max(0, math.floor(cx - half_w))), int(max(0, math.floor(cy - half_h)))
    cx2, cy2 = int(min(w, math.ceil(cx + half_w))), int(min(h, math.ceil(cy + half_h)))
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2])
    cv2.rectangle(
        crop,
        (int(round(x1 - cx1)), int(round(y1 - cy1))),
        (int(round(x2 - cx1)) - 1, int(round(y2 - cy1)) - 1),
        KIND_COLOUR[case.kind],
        1,
    )
    return crop


def _caption(case: ErrorCase) -> str:
    what = "FP" if case.kind == "fp" else "MISS"
    score = f" {case.score:.2f}" if case.kind == "fp" or case.score > 0 else ""
    return f"{what}{score} {case.side:.0f}px"


def contact_sheet(
    crops: Sequence[np.ndarray],
    captions: Sequence[str],
    title: str,
    cell: int = 112,
    columns: int = 8,
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Crops on a grid, each scaled to fit a cell (never enlarged more than 4x), captioned under it.

    OpenCV's built-in Hershey font draws the text: nothing to download.

    Returns:
        (H, W, 3) uint8 BGR sheet.
    """
    cols = max(1, min(columns, len(crops)))
    rows = max(1, math.ceil(len(crops) / cols))
    cap_h, title_h, pad = 16, 26, 4
    (text_w, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    width = max(cols * (cell + pad) + pad, text_w + 2 * pad)
    sheet = np.full((title_h + rows * (cell + cap_h + pad) + pad, width, 3), 40, np.uint8)
    cv2.putText(sheet, title, (pad, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    for k, (crop, text) in enumerate(zip(crops, captions)):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * (cell + pad), title_h + r * (cell + cap_h + pad)
        ch, cw = crop.shape[:2]
        scale = min(cell / max(cw, 1), cell / max(ch, 1), 4.0)
        nw, nh = max(1, int(cw * scale)), max(1, int(ch * scale))
        interp = cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA  # enlarged pixels stay visible as pixels
        small = cv2.resize(crop, (nw, nh), interpolation=interp)
        ox, oy = x0 + (cell - nw) // 2, y0 + (cell - nh) // 2
        sheet[oy : oy + nh, ox : ox + nw] = small
        if colours is not None:
            cv2.rectangle(sheet, (x0 - 1, y0 - 1), (x0 + cell, y0 + cell), colours[k], 1)
        cv2.putText(
            sheet, text, (x0, y0 + cell + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (230, 230, 230), 1, cv2.LINE_AA
        )
    return sheet


@dataclass
class ErrorReport:
    """What write_error_report wrote.

    Attributes:
        out_dir: The folder.
        cases: Every error found.
        groups: Group folder (``size/16-32``, ``photo/NAME``) -> its cases' count.
        sheets: Group folder -> its contact sheet.
        plots: The distribution plots.
        score_thr: The operating threshold.
    """

    out_dir: Path
    cases: list[ErrorCase]
    groups: dict[str, int] = field(default_factory=dict)
    sheets: dict[str, Path] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    score_thr: float = 0.0

    @property
    def false_positives(self) -> int:
        return sum(c.kind == "fp" for c in self.cases)

    @property
    def misses(self) -> int:
        return sum(c.kind == "miss" for c in self.cases)

    def summary(self) -> str:
        by_size = ", ".join(
            f"{k.split('/', 1)[1]} px: {v}" for k, v in self.groups.items() if k.startswith("size/")
        )
        return (
            f"errors at score >= {self.score_thr:g}: {self.false_positives} false positive(s), {self.misses} "
            f"miss(es) ({by_size or 'none'}); {len(self.sheets)} contact sheet(s) in {self.out_dir}"
        )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "photo"


def write_error_report(
    result: EvalResult,
    out_dir: str | Path,
    score_thr: float | None = None,
    splits: Mapping[str, Dataset] | None = None,
    max_per_sheet: int = 96,
) -> ErrorReport:
    """Crops, contact sheets and distribution plots of an evaluation's errors.

    Layout of ``out_dir``::

        size/<16/  size/16-32/  size/32-64/  size/64+/   one folder per box-size group
        photo/NAME/                                      one folder per photo with errors
            fp_0003_0.87.png  miss_0004.png ...          the crops (box drawn, context around it)
            contact_sheet.png                            every crop of the group on one page
        errors.csv                                       one row per error
        errors.json                                      counts per group and the threshold
        distributions.png                                box count / size / ratio per split
        error_distributions.png                          ground truth against misses and false positives

    Args:
        result: An evaluation (keeps every photo's detections).
        out_dir: Output folder (created).
        score_thr: Operating threshold (default: the result's).
        splits: Name -> dataset of each split to plot (default: the evaluated photos, as "evaluated").
        max_per_sheet: Crops per contact sheet; the rest are in the folder and listed in errors.csv.

    Returns:
        The ErrorReport.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thr = result.score_thr if score_thr is None else float(score_thr)
    cases = find_errors(result, thr)
    by_photo: dict[Path, list[int]] = {}
    for k, c in enumerate(cases):
        by_photo.setdefault(c.photo, []).append(k)
    crops: list[np.ndarray | None] = [None] * len(cases)
    photo_of = {pd.photo.path: pd.photo for pd in result.per_photo}
    stems = {p: _safe(p.stem) for p in by_photo}
    if len(set(stems.values())) < len(stems):
        stems = {p: _safe(f"{p.parent.name}_{p.stem}") for p in by_photo}
    groups: dict[str, list[int]] = {}
    for k, c in enumerate(cases):
        groups.setdefault(f"size/{c.size_group}", []).append(k)
    for p in by_photo:
        groups[f"photo/{stems[p]}"] = by_photo[p]
    rows = []
    files: dict[int, str] = {}
    for p, idx in by_photo.items():
        image = photo_of[p].load()
        for k in idx:
            c = cases[k]
            crops[k] = crop_case(image, c)
            files[k] = f"{c.kind}_{k:04d}" + (f"_{c.score:.2f}" if c.kind == "fp" else "") + ".png"
        del image
    order = sorted(groups, key=lambda g: (not g.startswith("size/"), _size_key(g), g))
    sheets: dict[str, Path] = {}
    for g in order:
        folder = out / g
        folder.mkdir(parents=True, exist_ok=True)
        idx = sorted(groups[g], key=lambda k: (cases[k].kind != "fp", -cases[k].score, cases[k].side))
        for k in idx:
            cv2.imwrite(str(folder / files[k]), crops[k])
        shown = idx[:max_per_sheet]
        n_fp = sum(cases[k].kind == "fp" for k in idx)
        title = f"{g}: {n_fp} false positive(s), {len(idx) - n_fp} miss(es) at score >= {thr:g}" + (
            f" (first {len(shown)})" if len(shown) < len(idx) else ""
        )
        sheet = contact_sheet(
            [crops[k] for k in shown],
            [_caption(cases[k]) for k in shown],
            title,
            colours=[KIND_COLOUR[cases[k].kind] for k in shown],
        )
        sheets[g] = folder / "contact_sheet.png"
        cv2.imwrite(str(sheets[g]), sheet)
    for k, c in enumerate(cases):
        rows.append(
            {
                "kind": c.kind,
                "photo": str(c.photo),
                "x1": round(c.box[0], 1),
                "y1": round(c.box[1], 1),
                "x2": round(c.box[2], 1),
                "y2": round(c.box[3], 1),
                "class": result.class_names[c.class_id]
                if c.class_id < len(result.class_names)
                else c.class_id,
                "score": round(c.score, 4),
                "best_iou": round(c.best_iou, 3),
                "size_px": round(c.side, 1),
                "size_group": c.size_group,
                "size_crop": f"size/{c.size_group}/{files[k]}",
                "photo_crop": f"photo/{stems[c.photo]}/{files[k]}",
            }
        )
    with open(out / "errors.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=list(rows[0])
            if rows
            else ["kind", "photo", "x1", "y1", "x2", "y2", "score", "size_group"],
        )
        w.writeheader()
        w.writerows(rows)
    counts = {g: len(groups[g]) for g in order}
    report = ErrorReport(out, cases, counts, sheets, [], thr)
    split_sets = dict(splits) if splits else None
    report.plots.append(
        plot_distributions(
            _split_boxes(split_sets)
            if split_sets
            else {"evaluated": [pd.photo.boxes for pd in result.per_photo]},
            out / "distributions.png",
            "ground-truth boxes by split",
        )
    )
    report.plots.append(
        plot_distributions(
            {
                "ground truth": [pd.photo.boxes for pd in result.per_photo],
                "misses": _per_photo_boxes(cases, "miss", result),
                "false positives": _per_photo_boxes(cases, "fp", result),
            },
            out / "error_distributions.png",
            f"errors at score >= {thr:g} against the ground truth",
        )
    )
    (out / "errors.json").write_text(
        json.dumps(
            {
                "score_thr": thr,
                "false_positives": report.false_positives,
                "misses": report.misses,
                "groups": counts,
                "sheets": {g: str(p.relative_to(out)) for g, p in sheets.items()},
                "plots": [str(p.relative_to(out)) for p in report.plots],
            },
            indent=1,
        )
    )
    return report


def _size_key(group: str) -> float:
    m = re.match(r"size/<?(\d+)", group)
    return float(m.group(1)) if m else math.inf


def _per_photo_boxes(cases: Sequence[ErrorCase], kind: str, result: EvalResult) -> list[np.ndarray]:
    out = []
    for pd in result.per_photo:
        b = [c.box for c in cases if c.kind == kind and c.photo == pd.photo.path]
        out.append(np.asarray(b, np.float64).reshape(-1, 4))
    return out


def _split_boxes(splits: Mapping[str, Dataset]) -> dict[str, list[np.ndarray]]:
    return {name: [p.boxes for p in ds.photos] for name, ds in splits.items()}


def dataset_splits(
    src: str | Path, format: str = "auto", class_names: Sequence[str] | None = None
) -> dict[str, Dataset]:
    """Each split a dataset declares: VOC ImageSets/Main lists, a YOLO data.yaml's train/val/test.

    A dataset without declared splits is one split, "all".
    """
    from edgetile.runtime.evaluation.annotations import detect_format, load_dataset

    p = Path(src)
    fmt = detect_format(p) if format == "auto" else format
    names: list[str] = []
    if fmt == "voc" and (p / "ImageSets" / "Main").is_dir():
        # LADD also keeps per-class lists (Pedestrian_train.txt): the plain ones are the splits.
        names = sorted(f.stem for f in (p / "ImageSets" / "Main").glob("*.txt") if "_" not in f.stem)
    elif fmt == "yolo":
        yaml_file = p if p.suffix in (".yaml", ".yml") else p / "data.yaml"
        if yaml_file.is_file():
            import yaml

            doc = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
            names = [k for k in ("train", "val", "test") if doc.get(k)]
    if not names:
        return {"all": load_dataset(p, fmt, class_names)}
    return {n: load_dataset(p, fmt, class_names, subset=n) for n in names}


def plot_distributions(series: Mapping[str, Sequence[np.ndarray]], path: str | Path, title: str) -> Path:
    """Boxes per photo, box size sqrt(w*h) and aspect ratio w/h of each series, as fractions (PNG).

    Args:
        series: Name -> (N_i, 4) boxes of each photo.
        path: PNG to write.
        title: The figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    size_bins = np.geomspace(4, 512, 22)
    ratio_bins = np.geomspace(0.125, 8, 19)
    most = max([len(b) for boxes in series.values() for b in boxes] + [1])
    count_bins = np.arange(-0.5, most + 1.5, max(1, math.ceil((most + 1) / 25)))
    for name, boxes in series.items():
        counts = np.array([len(b) for b in boxes])
        allb = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in boxes] or [np.zeros((0, 4))])
        w, h = np.maximum(allb[:, 2] - allb[:, 0], 1e-6), np.maximum(allb[:, 3] - allb[:, 1], 1e-6)
        label = f"{name} ({len(boxes)} photos, {len(allb)} boxes)"
        for ax, values, bins in (
            (axes[0], counts, count_bins),
            (axes[1], np.sqrt(w * h), size_bins),
            (axes[2], w / h, ratio_bins),
        ):
            if len(values):
                ax.hist(
                    values,
                    bins=bins,
                    weights=np.full(len(values), 1 / len(values)),
                    histtype="step",
                    lw=1.6,
                    label=label,
                )
    from matplotlib.ticker import FixedLocator, NullLocator

    axes[0].set(xlabel="boxes per photo", ylabel="fraction of photos")
    axes[1].set(xlabel="box size sqrt(w*h), px", ylabel="fraction of boxes", xscale="log")
    for edge in SIZE_EDGES:
        axes[1].axvline(edge, color="0.7", lw=0.8, ls=":")
    axes[2].set(xlabel="aspect ratio w/h", ylabel="fraction of boxes", xscale="log")
    for ax, ticks, labels in (
        (axes[1], [4, 8, 16, 32, 64, 128, 256, 512], None),
        (axes[2], [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"]),
    ):
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, labels or [str(t) for t in ticks])
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
