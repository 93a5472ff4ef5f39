"""Ground coordinates, thumbnails, MQTT and MAVLink in the daemon (`edgetile serve --geo --mqtt HOST:PORT`).

With --geo the worker adds lat, lon, error_m, ground_alt_m, distance_m and a thumbnail to each
detection's data before its record is committed, so GET /detections serves them; the HTTP API also
serves every georeferenced detection as /detections.geojson, /detections.kml, /detections_geo.csv,
the tracks as /tracks.geojson, and the thumbnails as /thumbs/NAME (see :mod:`.geo_routes`).

With --mqtt each detection of a committed photo is published (see ``edgetile.runtime.links.mqtt``)
as JSON with the photo's name and SHA-256, from the daemon's outbox (:mod:`.outbox`): the messages
are committed with the result and forgotten only once the broker acknowledged them, so what
subscribers hear is what the daemon keeps, at least once, across broker outages and restarts. With
--mavlink-out each is also sent to a ground station (see ``edgetile.runtime.links.mavlink``) after
the commit.

With --mavlink-in the vehicle's telemetry is read (``links.mavlink.MavlinkTelemetry``), and each
video frame gets the pose of the moment it was grabbed, recorded with it in the queue (a frame has
no EXIF, and it may wait in the queue, across a restart, while the vehicle moves on). Photos keep
using their own EXIF/XMP pose: when a photo reaches a watched folder says nothing about when it was
taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..geo.ground import centre_gsd_m, locate_boxes, locate_pixels, photo_footprint
from ..geo.pose import CameraPose, PoseError, photo_time, pose_from_photo
from ..geo.writers import GeoConfig, crop_thumbnail, georeference, missing_geo_packages, record_boxes
from .hooks import ResultHooks

if TYPE_CHECKING:
    import numpy as np
    from fastapi import APIRouter

    from ..options.geo import ServeGeoConfig
    from ..results import Detections
    from .store import Item, Outcome, PhotoQueue

log = logging.getLogger("edgetile.serve")
NO_TELEMETRY = "no fresh MAVLink telemetry when the frame was grabbed"
TELEMETRY_GRACE_S = 5.0  # at start, how long video sources wait for the vehicle's first position and attitude


class GeoHooks(ResultHooks):
    """What the daemon's worker does with each photo's detections beyond the pixels.

    Args:
        config: Pose overrides, error model, track radius.
        state_dir: The daemon's state folder; thumbnails go to STATE/thumbs.
        georeference: Add coordinates and thumbnails (--geo).
        publisher: An MqttPublisher for the daemon's outbox, or None.
        mavlink: A MavlinkSender, or None.
        telemetry: A MavlinkTelemetry (--mavlink-in), or None.
        max_age_s: Telemetry older than this at a frame's grab gives the frame no pose.
    """

    def __init__(
        self,
        config: GeoConfig,
        state_dir: Path,
        georeference: bool = True,
        publisher: Any = None,
        mavlink: Any = None,
        telemetry: Any = None,
        max_age_s: float = 1.0,
    ) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.georeference = georeference
        self.publisher = publisher
        self.mavlink = mavlink
        self.telemetry = telemetry
        self.max_age_s = max_age_s
        self._warned: dict[str, int] = {}
        self._poses: dict[str, CameraPose] = {}  # sha256 -> pose, from annotate to publish
        self._places: dict[str, CameraPose] = {}  # sha256 -> pose, from annotate to photo_geo
        self._link_fresh: bool | None = None  # telemetry fresh at the last grab (None: no grab yet)
        self._link_lock = threading.Lock()  # video readers run in their own threads

    @property
    def thumbs_dir(self) -> Path:
        return self.state_dir / "thumbs"

    def annotate(self, item: Item, image: np.ndarray, dets: Detections) -> Detections:
        """Thumbnails and ground coordinates into one photo's detections (worker thread).

        A photo without a usable pose keeps its pixel results; the reason is logged (once per
        distinct reason as a warning, then at debug level: a video source would repeat it per frame).
        """
        if not self.georeference:
            return dets
        import cv2

        if len(dets):
            self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        thumbs = []
        for i, box in enumerate(record_boxes(dets.xyxy)):
            name = f"{item.sha256[:16]}_{i:03d}.jpg"
            if not cv2.imwrite(
                str(self.thumbs_dir / name), crop_thumbnail(image, box), [cv2.IMWRITE_JPEG_QUALITY, 90]
            ):
                raise OSError(f"cannot write the thumbnail {self.thumbs_dir / name}")
            thumbs.append(f"thumbs/{name}")
        dets = dets.with_data({"thumbnail": thumbs})
        try:
            if item.source == "video":
                pose = self.frame_pose(item, image.shape[1], image.shape[0])
            else:
                pose = pose_from_photo(item.path, self.config.overrides)
        except PoseError as exc:
            reason = str(exc)
            seen = self._warned.get(reason, 0)
            self._warned[reason] = seen + 1
            (log.debug if seen else log.warning)(
                "%s: no ground coordinates: %s%s",
                item.name,
                reason,
                "" if seen else " (said once; later photos at debug level)",
            )
            return dets
        dets = georeference(dets, pose, self.config.errors)
        self._places[item.sha256] = pose
        if self.mavlink is not None:
            self._poses[item.sha256] = pose
        return dets

    def photo_geo(self, item: Item) -> dict | None:
        """The pose annotate found, the photo's footprint on the ground and its GSD (worker thread)."""
        pose = self._places.pop(item.sha256, None)
        if pose is None:
            return None
        import numpy as np

        gsd = centre_gsd_m(pose)
        centre = locate_pixels(pose, np.asarray([[pose.cx, pose.cy]], np.float64), self.config.errors)[0]
        return {
            "pose": pose.to_dict(),
            "footprint": photo_footprint(pose),
            "gsd_cm": None if gsd is None else round(gsd * 100, 3),
            "taken_at": photo_time(item.path, item.name),
            "error_m": None if centre is None else centre.to_dict()["error_m"],
        }

    def locate_box(self, pose: dict | None, bbox: list[float]) -> dict | None:
        """An operator's box on the ground with the photo's stored pose and the daemon's error model."""
        if pose is None or not self.georeference:
            return None
        import numpy as np

        fix = locate_boxes(CameraPose.from_dict(pose), np.asarray([bbox], np.float64), self.config.errors)[0]
        if fix is None:
            return None
        d = fix.to_dict()
        return {"lat": d["lat"], "lon": d["lon"], "error_m": d["error_m"]}

    def review(self, detection: dict) -> None:
        """A confirmed or flagged find as a MAVLink STATUSTEXT to the ground station (--mavlink-out)."""
        if self.mavlink is not None:
            self.mavlink.send_text(review_text(detection))

    @property
    def frame_telemetry(self) -> Callable[[], dict] | None:
        return None if self.telemetry is None else self._frame_telemetry

    def _frame_telemetry(self) -> dict:
        """What to record with a video frame grabbed now (video reader threads).

        Returns:
            The vehicle's telemetry (FrameTelemetry.to_dict()), or {"problem": one line} when it is
            missing or older than max_age_s. Losing and regaining fresh telemetry is logged once each.
        """
        try:
            snap = self.telemetry.snapshot(self.max_age_s)
        except PoseError as exc:
            with self._link_lock:
                was, self._link_fresh = self._link_fresh, False
            if was is not False:
                log.warning("%s; video frames get no ground coordinates until it is fresh again", exc)
            return {"problem": f"{NO_TELEMETRY}: {exc}"}
        self._fresh(snap)
        return snap.to_dict()

    def _fresh(self, snap) -> None:
        with self._link_lock:
            was, self._link_fresh = self._link_fresh, True
        if not was:
            log.info(
                "MAVLink %s: position and attitude are fresh; video frames get ground coordinates "
                "(camera attitude: %s)",
                self.telemetry.url,
                snap.attitude_source,
            )

    def wait_for_telemetry(self, stop: threading.Event, timeout_s: float = TELEMETRY_GRACE_S) -> bool:
        """Before a video source is opened: wait until the telemetry is fresh, for at most timeout_s.

        The autopilot's link may come up a moment after the daemon; frames read before it would all
        lack coordinates. Live sources lose at most timeout_s of frames at start, a file nothing.

        Returns:
            True when fresh telemetry arrived or none is read; False after timeout_s or when stopped
            (logged).
        """
        if self.telemetry is None:
            return True
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            try:
                snap = self.telemetry.snapshot(self.max_age_s)
            except PoseError as exc:
                if time.monotonic() >= deadline:
                    log.warning(
                        "%s after waiting %.0f s; reading video anyway (frames get no ground coordinates "
                        "until it is fresh)",
                        exc,
                        timeout_s,
                    )
                    return False
                stop.wait(0.05)
                continue
            self._fresh(snap)
            return True
        return False

    def frame_pose(self, item: Item, width: int, height: int) -> CameraPose:
        """The pose of a video frame from the telemetry recorded when it was grabbed.

        Raises:
            PoseError: Nothing fresh was recorded (the reason then), or no focal length.
        """
        from ..links.mavlink import FrameTelemetry

        record = item.telemetry
        if record is None:
            raise PoseError(
                "a video frame has no EXIF pose and none was recorded when it was grabbed: pass "
                "--mavlink-in URL to record the vehicle's"
            )
        if "problem" in record:
            raise PoseError(str(record["problem"]))
        try:
            snap = FrameTelemetry.from_dict(record)
        except (ValueError, TypeError) as exc:
            raise PoseError(f"the telemetry recorded with the frame is unreadable: {exc}") from None
        return snap.pose(width, height, self.config.overrides)

    def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Send the detections of committed outcomes to MAVLink (worker thread).

        MQTT is not sent from here: the daemon's outbox (:mod:`.outbox`) publishes what was committed
        with the results, through ``publisher``.
        """
        for o in outcomes:
            pose = self._poses.pop(o.item.sha256, None)
            if not o.ok:
                continue
            for d in o.detections or []:
                if self.mavlink is not None:
                    self.mavlink.send_detection(
                        d, image_index=o.item.item_id, camera=pose, file_url=d.get("thumbnail", "")
                    )

    def routes(self, queue: Callable[[], PhotoQueue]) -> APIRouter:
        """With --geo: GeoJSON/KML/CSV of the results, tracks and thumbnails (see :mod:`.geo_routes`)."""
        if not self.georeference:
            return super().routes(queue)
        from .geo_routes import geo_router

        return geo_router(queue, self.thumbs_dir, self.config.track_radius_m, self.config.appearance_min)

    def close(self) -> None:
        for link in (self.publisher, self.mavlink, self.telemetry):
            if link is not None:
                link.close()


def review_text(detection: dict) -> str:
    """The STATUSTEXT of an operator's find, at most 50 ASCII characters.

    "edgetile: FLAGGED person at LAT,LON (IMAGE)" when it fits; else the words around the facts go
    first ("FLAGGED person LAT,LON IMAGE"), then the end of the image's name.
    """
    where = (
        "no position"
        if detection.get("lat") is None
        else f"{detection['lat']:.5f},{detection['lon']:.5f}"  # 1 m
    )
    image = Path(str(detection.get("image", ""))).name
    status, what = str(detection["status"]).upper(), detection.get("class_name") or "object"
    text = f"edgetile: {status} {what} at {where} ({image})"
    if len(text) > 50:
        text = f"{status} {what} {where} {image}"
    return text.encode("ascii", "replace").decode()[:50]


def open_result_hooks(config: ServeGeoConfig, state_dir: Path) -> ResultHooks:
    """The hooks the configuration asks for: GeoHooks with its links opened, else the do-nothing ResultHooks.

    Raises:
        ValueError: A missing package (named, with the install command), or a link that cannot be
            opened (in one line).
    """
    if not config.enabled:
        return ResultHooks()
    if config.georeference and missing_geo_packages():
        raise ValueError(f"--geo needs {', '.join(missing_geo_packages())}: pip install 'edgetile[geo]'")
    publisher = None
    if config.mqtt_host is not None:
        from ..links.mqtt import MqttPublisher

        try:
            publisher = MqttPublisher(
                config.mqtt_host,
                config.mqtt_port,
                topic_prefix=config.mqtt_topic,
                max_buffer=config.mqtt_buffer,
                drone_id=config.drone_id,
                api=config.advertise_url,
                username=config.mqtt_user,
                password=config.mqtt_password,
            )
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    mavlink = None
    if config.mavlink_out is not None:
        from ..links.mavlink import MavlinkSender

        try:
            mavlink = MavlinkSender(config.mavlink_out, lacmus=config.mavlink_lacmus)
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        except OSError as exc:
            raise ValueError(f"--mavlink-out {config.mavlink_out}: cannot open the link: {exc}") from None
    telemetry = None
    if config.mavlink_in is not None:
        try:
            telemetry = _open_telemetry(config, config.mavlink_in)
        except ValueError:
            for link in (publisher, mavlink):  # opened above; the daemon will not start
                if link is not None:
                    link.close()
            raise
    return GeoHooks(
        config.geo,
        Path(state_dir),
        georeference=config.georeference,
        publisher=publisher,
        mavlink=mavlink,
        telemetry=telemetry,
        max_age_s=config.mavlink_max_age_s,
    )


def _open_telemetry(config: ServeGeoConfig, url: str):
    """The MavlinkTelemetry of --mavlink-in (url); ValueError in one line when it cannot be opened."""
    from ..links.mavlink import MavlinkTelemetry

    overrides = config.geo.overrides
    given = [
        f"--{n}"
        for n, v in (("yaw", overrides.yaw), ("pitch", overrides.pitch), ("roll", overrides.roll))
        if v is not None
    ]
    if given:
        log.warning(
            "%s apply to photos; video frames take the camera's attitude from MAVLink (a gimbal's "
            "GIMBAL_DEVICE_ATTITUDE_STATUS, else ATTITUDE and --camera-mount)",
            ", ".join(given),
        )
    try:
        return MavlinkTelemetry(url, mount_ypr=config.camera_mount)
    except ImportError as exc:
        if exc.name == "serial":  # pymavlink opens anything that is not a network URL as a serial port
            raise ValueError(
                f"--mavlink-in {url}: a serial port needs pyserial (pip install "
                "pyserial); for the network give e.g. udpin:0.0.0.0:14550"
            ) from None
        raise ValueError(str(exc)) from None
    except OSError as exc:
        raise ValueError(f"--mavlink-in {url}: cannot open the link: {exc}") from None
    except ValueError as exc:
        raise ValueError(
            f"--mavlink-in: expected a pymavlink connection string such as "
            f"udpin:0.0.0.0:14550, tcp:HOST:PORT or /dev/ttyTHS1,921600, found "
            f"{url!r} ({exc})"
        ) from None
