"""The daemon's one seam to what it does with results beyond the pixels.

The worker, the video readers and the HTTP API call a ResultHooks at fixed points: each photo's
records before the commit (``annotate``) and the photo's place committed with them (``photo_geo``),
the committed outcomes after it (``publish``), each video frame at its grab (``frame_telemetry``),
extra routes for the API (``routes``), an operator's box to place on the ground (``locate_box``) and
an operator's decision to tell the team (``review``), and ``close`` at the end. ResultHooks itself does nothing at any of them: the daemon of plain pixel results.
:class:`.geo_hooks.GeoHooks` adds ground coordinates, thumbnails, MQTT and MAVLink through it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from fastapi import APIRouter

    from .store import Item, Outcome, PhotoQueue


class ResultHooks:
    """What the daemon does with results beyond the pixels; this base does nothing.

    Attributes:
        publisher: The MQTT publisher (``edgetile.runtime.links.mqtt.MqttPublisher``) that the
            daemon's outbox sends committed detections through, or None for no MQTT.
    """

    publisher: Any = None

    def annotate(self, item: Item, image: np.ndarray, records: list[dict]) -> None:
        """Add to one photo's detection records, in place, before they are committed (worker thread).

        Args:
            item: The queue's input.
            image: The decoded photo, (H, W, 3) uint8 BGR.
            records: Its detection records (``Detections.to_records``).
        """

    def photo_geo(self, item: Item) -> dict | None:
        """What is known of the photo's place after ``annotate`` (worker thread), committed with its result.

        Returns:
            {"pose": CameraPose.to_dict(), "footprint": [[lat, lon] x4] or None, "gsd_cm": float or
            None}, or None when nothing is known.
        """
        return None

    def locate_box(self, pose: dict | None, bbox: list[float]) -> dict | None:
        """Ground coordinates of a box the operator drew: {"lat", "lon", "error_m"}, or None.

        Args:
            pose: The photo's pose as ``photo_geo`` recorded it, or None.
            bbox: x1, y1, x2, y2 in photo pixels.
        """
        return None

    def review(self, detection: dict) -> None:
        """Tell the team about a confirmed or flagged decision just committed (HTTP thread).

        MQTT is not sent from here: the decision's outbox row was committed with it.
        """

    def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Tell the outside world about outcomes just committed (worker thread)."""

    @property
    def frame_telemetry(self) -> Callable[[], dict] | None:
        """Called at each kept video frame's grab; what it returns is recorded with the frame. None: nothing."""
        return None

    def wait_for_telemetry(self, stop: threading.Event) -> bool:
        """Before a video source is opened: wait (briefly) for what frame_telemetry needs.

        Returns:
            True when it is ready (or nothing is needed); False when it did not come or on a stop.
        """
        return True

    def routes(self, queue: Callable[[], PhotoQueue]) -> APIRouter:
        """Extra routes for the HTTP API, behind its token; ``queue`` opens the daemon's queue."""
        from fastapi import APIRouter

        return APIRouter()

    def close(self) -> None:
        """Close what the hooks opened (links to brokers and vehicles), at the daemon's end."""
