"""Pseudo-labels: a trained model's confident boxes on unlabelled photos become a separate, extra dataset.

The photos run through the runtime's tiled path, as in the field. A photo joins the extra dataset
only when its boxes can be trusted as a whole: every box at or above ``conf``, between
``min_boxes`` and ``max_boxes`` of them, and no box in the grey zone [``ambiguous``, ``conf``) —
an uncertain person dropped from a photo would be learnt as background. The output has the LADD
layout (JPEGImages/, Annotations/ VOC XML) plus YOLO labels/ and classes.txt, so ``edgetile dataset
tiles`` reads it like any annotated set, and a CSV of every kept box with its score.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import voc_xml
from edgetile.runtime.images import ImageReadError, expand_sources, read_image


@dataclass(frozen=True)
class PseudoLabelFilter:
    """Which predictions and photos are kept.

    Attributes:
        conf: A box is kept at or above this score.
        ambiguous: A photo with any box scoring in [ambiguous, conf) is left out; set it equal to
            conf to turn this off.
        min_boxes: Fewest kept boxes for a photo to be used (0 also keeps confident empty photos as
            negatives).
        max_boxes: Most kept boxes (a photo full of detections is more likely a failure than a crowd).
    """

    conf: float = 0.5
    ambiguous: float = 0.2
    min_boxes: int = 1
    max_boxes: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.conf <= 1.0:
            raise ValueError(f"conf: expected a score in (0, 1], found {self.conf!r}")
        if not 0.0 < self.ambiguous <= self.conf:
            raise ValueError(
                f"ambiguous: expected a score in (0, conf={self.conf:g}], found {self.ambiguous!r}"
            )
        if self.min_boxes < 0 or self.max_boxes < self.min_boxes:
            raise ValueError(
                f"min_boxes, max_boxes: expected 0 <= min <= max, found {self.min_boxes}, {self.max_boxes}"
            )


@dataclass
class PseudoLabelReport:
    """What pseudo_label wrote.

    Attributes:
        out: The dataset folder.
        kept: Photo names kept.
        left_out: Photo name -> why it was left out.
        boxes: Boxes written.
        problems: Unreadable inputs.
    """

    out: Path
    kept: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    boxes: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.left_out.values():
            key = why.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return (
            f"{len(self.kept)} photo(s) kept with {self.boxes} box(es); {len(self.left_out)} left out"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})" if reasons else "")
            + f"; {len(self.problems)} unreadable; dataset: {self.out}"
        )


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def pseudo_label(
    models: Sequence[str | Path],
    sources: Sequence[str],
    out: str | Path,
    filters: PseudoLabelFilter | None = None,
    base: DetectConfig | None = None,
    backend: str = "auto",
    progress: bool = False,
    weights: Sequence[float] | None = None,
) -> PseudoLabelReport:
    """Write the confident predictions of a model on unlabelled photos as an extra dataset.

    Args:
        models: ONNX model(s) or TensorRT engine(s) (an ensemble is fused as detect fuses it).
        sources: Photos, folders or glob patterns.
        out: The new dataset folder (JPEGImages/ holds hard links, or copies across file systems).
        filters: Confidence and count filters.
        base: Tiling and merging (conf is set from the filters).
        backend: "auto", "onnxruntime" or "tensorrt".
        progress: Progress bar on stderr.
        weights: Ensemble weights, one per model (default all 1).

    Returns:
        The report.
    """
    flt = filters or PseudoLabelFilter()
    inputs = expand_sources(sources)
    if not inputs:
        raise ValueError("sources: expected photos, folders or glob patterns, found no inputs")
    cfg = replace(base or DetectConfig(), conf=flt.ambiguous)
    root = Path(out)
    for sub in ("JPEGImages", "Annotations", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    report = PseudoLabelReport(root)
    used: set[str] = set()
    from tqdm import tqdm

    with Detector([str(m) for m in models], weights=weights, backend=backend, config=cfg) as det, open(
        root / "pseudo_labels.csv", "w", newline=""
    ) as f:
        names = [det.names[i] for i in sorted(det.names)]
        (root / "classes.txt").write_text("\n".join(names) + "\n")
        rows = csv.writer(f)
        rows.writerow(["photo", "source", "class", "xmin", "ymin", "xmax", "ymax", "score"])
        bar = tqdm(
            inputs,
            desc="pseudo-label",
            unit="photo",
            file=sys.stderr,
            disable=not (progress and sys.stderr.isatty()),
        )
        for src in bar:
            try:
                image = read_image(src)
            except ImageReadError as exc:
                report.problems.append(f"{src}: skipped: {exc}")
                continue
            h, w = image.shape[:2]
            d = det.detect(image)
            sure = d.scores >= flt.conf
            stem, k = Path(src).stem, 1
            while stem in used:  # same file name from different folders
                stem, k = f"{Path(src).stem}_{k}", k + 1
            grey = int((~sure).sum())
            if grey:
                report.left_out[stem] = (
                    f"ambiguous: {grey} box(es) scoring in [{flt.ambiguous:g}, {flt.conf:g})"
                )
                continue
            n = int(sure.sum())
            if not flt.min_boxes <= n <= flt.max_boxes:
                report.left_out[stem] = f"count: {n} box(es), expected {flt.min_boxes}..{flt.max_boxes}"
                continue
            used.add(stem)
            name = stem + Path(src).suffix.lower()
            _link_or_copy(Path(src), root / "JPEGImages" / name)
            boxes, labels = d.xyxy[sure], [names[int(c)] for c in d.class_ids[sure]]
            (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(name, w, h, boxes, labels))
            (root / "labels" / f"{stem}.txt").write_text(
                "".join(
                    f"{int(c)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
                    f"{(b[3] - b[1]) / h:.6f}\n"
                    for b, c in zip(boxes, d.class_ids[sure])
                )
            )
            for b, c, s in zip(boxes, d.class_ids[sure], d.scores[sure]):
                rows.writerow(
                    [name, src, names[int(c)], *(round(float(v), 1) for v in b), round(float(s), 5)]
                )
            report.kept.append(name)
            report.boxes += n
    return report
