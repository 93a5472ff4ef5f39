"""From the operator's review in an `edgetile serve` state folder to a Pascal VOC dataset (LADD layout).

The daemon's queue database is opened read-only (SQLite ``mode=ro``): the dataset is made while the
daemon may still run, and never changes what it holds. For each photo with at least one decision
whose copy is still on disk:

* confirmed and flagged boxes of the model, and every box the operator drew, become ``person``;
* rejected boxes are left unlabelled and listed in ``DIR/hard_negatives.json``
  (``{"IMAGE FILE NAME": [[x1, y1, x2, y2], ...]}``), which ``edgetile dataset tiles`` reads to prefer
  windows around them as negatives (the model's own mistakes, the most useful background);
* a photo that still has an unreviewed detection is left out: that box may be a person, and
  unlabelled it would teach the model that people are background.

JPEGImages/ holds hard links to the daemon's copies (copies across file systems); names are
``{outcome id:06d}_{photo stem}{suffix}`` so two photos called DJI_0001.JPG from two cards stay two.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetile.runtime.evaluation.annotations import voc_xml

HARD_NEGATIVES = "hard_negatives.json"
PERSON = "person"
REVIEW_SCHEMA = 4  # the first queue schema with reviews


@dataclass
class FromReviewReport:
    """What ``from-review`` wrote.

    Attributes:
        out: The dataset folder.
        photos: Photo files written.
        persons: Boxes labelled person.
        negatives: Rejected boxes listed in hard_negatives.json.
        left_out: Photo name -> why it was left out.
    """

    out: Path
    photos: list[str] = field(default_factory=list)
    persons: int = 0
    negatives: int = 0
    left_out: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.photos)} photo(s) with {self.persons} person box(es) and {self.negatives} rejected "
            f"box(es) as hard negatives; {len(self.left_out)} reviewed photo(s) left out; dataset: {self.out}"
        )


def open_read_only(state: str | Path) -> sqlite3.Connection:
    """The daemon's queue database, read-only.

    Raises:
        ValueError: No queue database there, or one without reviews (an older daemon).
    """
    db = Path(state) / "queue.sqlite3"
    if not db.is_file():
        raise ValueError(
            f"STATE: expected an edgetile serve state folder with queue.sqlite3, found none at {db}"
        )
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    version = int(row[0]) if row else 0
    if version < REVIEW_SCHEMA:
        conn.close()
        raise ValueError(
            f"STATE: expected a queue of schema {REVIEW_SCHEMA} or later (with reviews), found schema {version}: "
            "start the daemon of this version once to migrate it"
        )
    return conn


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link to the daemon's copy (no bytes copied), or a copy across file systems."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _clip(box: list[float], w: int, h: int) -> list[float] | None:
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = max(0.0, min(x1, w)), max(0.0, min(x2, w))
    y1, y2 = max(0.0, min(y1, h)), max(0.0, min(y2, h))
    return [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)] if x2 > x1 and y2 > y1 else None


def dataset_from_review(state: str | Path, out: str | Path) -> FromReviewReport:
    """Write the review's decisions as a VOC dataset with a list of hard negatives (see the module).

    Args:
        state: The daemon's state folder (its --state).
        out: The dataset folder (created; files of the same names are replaced).

    Returns:
        The report.
    """
    conn = open_read_only(state)
    try:
        latest = {
            r["detection"]: r["status"]
            for r in conn.execute(
                "SELECT r.detection, r.status FROM reviews r JOIN (SELECT detection, MAX(id) AS last "
                "FROM reviews GROUP BY detection) l ON r.id = l.last"
            )
        }
        operator: dict[int, list[list[float]]] = {}
        for r in conn.execute("SELECT id, outcome_id, bbox FROM operator_detections ORDER BY id"):
            if latest.get(f"op-{r['id']}", "confirmed") in ("confirmed", "flagged"):
                operator.setdefault(r["outcome_id"], []).append(json.loads(r["bbox"]))
        decided = {int(k.split("-")[0]) for k in latest if not k.startswith("op-")} | set(operator)
        rows = conn.execute(
            "SELECT o.id, o.width, o.height, o.detections, i.name, i.path, i.removed_at FROM outcomes o "
            "JOIN items i USING (item_id) WHERE o.ok=1 ORDER BY o.id"
        ).fetchall()
    finally:
        conn.close()
    root = Path(out)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    report = FromReviewReport(root)
    negatives: dict[str, list[list[float]]] = {}
    for r in rows:
        if r["id"] not in decided:
            continue
        w, h = int(r["width"]), int(r["height"])
        persons, rejected, unreviewed = [], [], 0
        for k, d in enumerate(json.loads(r["detections"] or "[]")):
            status = latest.get(f"{r['id']}-{k}", "unreviewed")
            if status == "unreviewed":
                unreviewed += 1
            elif status == "rejected":
                rejected.append(d["bbox"])
            else:
                persons.append(d["bbox"])
        persons += operator.get(r["id"], [])
        if unreviewed:
            report.left_out[r["name"]] = f"{unreviewed} detection(s) not reviewed yet"
            continue
        if r["removed_at"] is not None or not Path(r["path"]).is_file():
            report.left_out[r["name"]] = "its copy was removed by the daemon's retention"
            continue
        stem = f"{r['id']:06d}_{Path(r['name'].split('#')[0]).stem}"
        name = stem + (Path(r["path"]).suffix.lower() or ".jpg")
        _link_or_copy(Path(r["path"]), root / "JPEGImages" / name)
        boxes = [b for b in (_clip(b, w, h) for b in persons) if b is not None]
        (root / "Annotations" / f"{stem}.xml").write_text(
            voc_xml(name, w, h, np.asarray(boxes, np.float64).reshape(-1, 4), [PERSON] * len(boxes))
        )
        hard = [b for b in (_clip(b, w, h) for b in rejected) if b is not None]
        if hard:
            negatives[name] = hard
        report.photos.append(name)
        report.persons += len(boxes)
        report.negatives += len(hard)
    stems = [Path(n).stem for n in report.photos]
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / HARD_NEGATIVES).write_text(json.dumps(negatives, indent=1) + "\n")
    return report


def read_hard_negatives(src: str | Path) -> dict[str, np.ndarray] | None:
    """SRC/hard_negatives.json as {image file name: (N, 4) boxes}, or None when there is none.

    Raises:
        ValueError: A file that is not {name: [[x1, y1, x2, y2], ...]}.
    """
    path = Path(src) / HARD_NEGATIVES
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON object, found {type(raw).__name__}")
        return {str(k): np.asarray(v, np.float64).reshape(-1, 4) for k, v in raw.items()}
    except ValueError as exc:
        raise ValueError(
            f"{path}: expected {{image name: [[x1, y1, x2, y2], ...]}}, found something else ({exc})"
        ) from None


class RejectedBoxScorer:
    """Ranks empty windows by the rejected boxes they hold: windows around the model's mistakes first.

    A window's score is the largest fraction of a rejected box inside it (1 for a whole box), plus a
    small random part that orders the rest at random as plain negatives would be.

    Args:
        boxes: {image file name: (N, 4) rejected boxes} (see :func:`read_hard_negatives`).
        seed: Seeds the random part.
    """

    def __init__(self, boxes: dict[str, np.ndarray], seed: int = 0) -> None:
        self.boxes = boxes
        self.rng = np.random.default_rng(seed)

    def __call__(self, photo, windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, np.float64).reshape(-1, 4)
        jitter = self.rng.random(len(w)) * 1e-3
        b = self.boxes.get(Path(photo.source).name)
        if b is None or len(b) == 0:
            return jitter
        ix = np.clip(
            np.minimum(w[:, None, 2], b[None, :, 2]) - np.maximum(w[:, None, 0], b[None, :, 0]), 0, None
        )
        iy = np.clip(
            np.minimum(w[:, None, 3], b[None, :, 3]) - np.maximum(w[:, None, 1], b[None, :, 1]), 0, None
        )
        area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
        return (ix * iy / area[None]).max(axis=1) + jitter
