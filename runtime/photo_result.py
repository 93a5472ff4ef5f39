"""One photo's outcome of detection, made where the photo was detected: here, or on a Ray worker.

``edgetile detect`` turns each into its detections.json record on the machine that writes the
outputs, so that a local run and a run on a cluster write the same records in the same order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .detector import Detector
from .images import MAX_PIXELS, ImageReadError, read_image
from .results import Detections

#: What one bad photo may raise without stopping the run: it becomes an error record.
PHOTO_ERRORS = (ImageReadError, MemoryError, OSError, ValueError)


@dataclass
class PhotoResult:
    """What detecting one photo gave.

    Attributes:
        path: The photo, as the inputs name it.
        width: Its width in pixels (0 when it failed).
        height: Its height in pixels (0 when it failed).
        detections: Its detections, or None when it failed.
        timings_ms: Milliseconds per stage (read, tiles, inference, merge...).
        error: Why it failed (one line), or None.
        image: The decoded photo (BGR, (H, W, 3) uint8) when it was detected here; None when it was
            detected elsewhere (a Ray worker), where it stays.
    """

    path: str
    width: int = 0
    height: int = 0
    detections: Detections | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    image: np.ndarray | None = None


def error_line(exc: BaseException) -> str:
    """An exception as a record's one-line error."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def detect_photo(
    detector: Detector, path: str, keep_image: bool = False, max_pixels: int | None = MAX_PIXELS
) -> PhotoResult:
    """Read one photo and detect in it; a bad photo gives an error result instead of raising.

    Args:
        detector: The open Detector.
        path: The photo file.
        keep_image: Keep the decoded photo in the result (for drawing and thumbnails here).
        max_pixels: Refuse a photo whose header claims more pixels (``--max-pixels``; None: no limit).
    """
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        image = read_image(path, max_pixels=max_pixels)
        timings["read"] = (time.perf_counter() - t0) * 1000
        dets = detector.detect(image, timings)
    except PHOTO_ERRORS as exc:
        return PhotoResult(path, error=error_line(exc))
    h, w = image.shape[:2]
    return PhotoResult(path, int(w), int(h), dets, timings, None, image if keep_image else None)
