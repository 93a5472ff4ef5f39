"""Writing results as they come, so that an interrupted run keeps what it had done.

detections.json is rewritten atomically (temporary file, then rename) at most every few seconds and
at the end; detections.csv (the Lacmus competition layout) is appended and flushed per image.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from .files import write_json_atomic
from .results import Detections

CSV_HEADER = ["id", "xmin", "ymin", "xmax", "ymax", "score"]

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): a photo named
# "=HYPERLINK(...).jpg" must reach Excel or LibreOffice as text.
_FORMULA_START = ("=", "+", "-", "@")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def csv_text_cell(value: object) -> str:
    """A text cell safe to open in a spreadsheet or to read line by line.

    Control characters (tab, CR and LF included) are written as a visible ``\\xNN``, and lone
    surrogates (a file name's undecodable bytes, which UTF-8 cannot carry) as ``\\udcXX``; then a
    cell starting with = + - or @ gets a leading ' so that a spreadsheet shows it as text. Only for
    text (names, paths): numbers are written as numbers, so that -12.5 stays a number.
    """
    s = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    s = _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", s)
    return "'" + s if s.startswith(_FORMULA_START) else s


def draw_detections(image: np.ndarray, dets: Detections, names: Mapping[int, str]) -> np.ndarray:
    """A copy of the image with each box and its score drawn, thick enough to see on a 4000 px photo."""
    out = image.copy()
    thick = max(2, int(round(max(image.shape[:2]) / 800)))
    font = max(0.5, max(image.shape[:2]) / 3000)
    for b, s, c in zip(dets.xyxy, dets.scores, dets.class_ids):
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        pad = 2 * thick
        cv2.rectangle(out, (x1 - pad, y1 - pad), (x2 + pad, y2 + pad), (0, 0, 255), thick)
        label = f"{names.get(int(c), str(int(c)))} {s:.2f}"
        cv2.putText(
            out,
            label,
            (x1 - pad, max(y1 - 2 * pad, 12)),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (0, 0, 255),
            max(1, thick // 2),
            cv2.LINE_AA,
        )
    return out


def csv_rows(image_id: str, dets: Detections) -> list[list]:
    """Rows of detections.csv (CSV_HEADER) for one image, rounded as detections.json rounds them."""
    return [
        [csv_text_cell(image_id), *(round(float(v), 2) for v in b), round(float(s), 5)]
        for b, s in zip(dets.xyxy, dets.scores)
    ]


class ResultWriter:
    """Collects one record per input and keeps DIR/detections.json and DIR/detections.csv current.

    Args:
        out_dir: Output folder (created).
        names: Class index -> name, for the visualisations.
        save_vis: Also write annotated JPEGs to DIR/vis/.
        flush_every_s: Longest time between rewrites of detections.json.
    """

    def __init__(
        self,
        out_dir: str | Path,
        names: Mapping[int, str],
        save_vis: bool = False,
        flush_every_s: float = 2.0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names = dict(names)
        self.save_vis = save_vis
        self.records: list[dict] = []
        self._flush_every = flush_every_s
        self._last_flush = 0.0
        self._vis_names: set[str] = set()
        self.json_path = self.out_dir / "detections.json"
        self.csv_path = self.out_dir / "detections.csv"
        self.vis_dir = self.out_dir / "vis"
        self._csv_file = open(self.csv_path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(CSV_HEADER)
        self._csv_file.flush()
        write_json_atomic(self.json_path, [])

    def add(self, record: dict, image: np.ndarray | None = None, dets: Detections | None = None) -> None:
        """Record one input's result; write its CSV rows and, when asked, its annotated image.

        Args:
            record: The input's entry of detections.json: "image", and "detections" as
                Detections.to_records wrote them (with what georeferencing put in their data), or "error".
            image: The photo, for the annotated copy.
            dets: The input's Detections, from which the CSV rows and the annotated copy are made;
                None reads the boxes back from the record's detections (none for a failed input).
        """
        self.records.append(record)
        image_id = os.path.basename(str(record["image"]))
        boxes = dets if dets is not None else Detections.from_records(record.get("detections", []))
        self._csv.writerows(csv_rows(image_id, boxes))
        self._csv_file.flush()
        if self.save_vis and image is not None and dets is not None:
            self.vis_dir.mkdir(exist_ok=True)
            stem = Path(image_id).stem
            name, k = f"{stem}.jpg", 1
            while name in self._vis_names:  # same file name from different folders
                name, k = f"{stem}_{k}.jpg", k + 1
            self._vis_names.add(name)
            cv2.imwrite(
                str(self.vis_dir / name),
                draw_detections(image, dets, self.names),
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            record["vis"] = str(self.vis_dir / name)
        self._flush_if_due()

    def keep(self, record: dict) -> None:
        """Take an earlier run's record of a photo as it is (``detect --resume``).

        Its CSV rows are written again from its detections, so that detections.csv is rebuilt in input
        order; its annotated image, if that run drew one, stays and keeps its name.
        """
        self.records.append(record)
        image_id = os.path.basename(str(record["image"]))
        self._csv.writerows(csv_rows(image_id, Detections.from_records(record.get("detections", []))))
        self._csv_file.flush()
        if record.get("vis"):
            self._vis_names.add(Path(str(record["vis"])).name)
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self._flush_every:
            write_json_atomic(self.json_path, self.records)
            self._last_flush = now

    def close(self) -> None:
        """Write the final detections.json and close the CSV. Safe to call twice."""
        if self._csv_file.closed:
            return
        write_json_atomic(self.json_path, self.records)
        self._csv_file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
