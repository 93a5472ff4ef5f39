"""Ground coordinates, thumbnails, MQTT and MAVLink in the daemon (`edgetile serve --geo --mqtt HOST:PORT`).

With --geo the worker adds lat, lon, error_m, ground_alt_m, distance_m and a thumbnail to each
detection record before the record is committed, so GET /detections serves them; the HTTP API also
serves every georeferenced detection as /detections.geojson, /detections.kml, /detections_geo.csv,
the tracks as /tracks.geojson, and the thumbnails as /thumbs/NAME. Tracks are built at request time
from all committed results in commit order, so they are the same after a restart.

With --mqtt each detection of a committed photo is published (see geo.mqtt) as JSON with the photo's
name and SHA-256, from the daemon's outbox (serve.outbox): the messages are committed with the
result and forgotten only once the broker acknowledged them, so what subscribers hear is what the
daemon keeps, at least once, across broker outages and restarts. With --mavlink-out each is also
sent to a ground station (see geo.mavlink) after the commit.

With --mavlink-in the vehicle's telemetry is read (geo.mavlink.MavlinkTelemetry), and each video
frame gets the pose of the moment it was grabbed, recorded with it in the queue (a frame has no
EXIF, and it may wait in the queue, across a restart, while the vehicle moves on). Photos keep
using their own EXIF/XMP pose: when a photo reaches a watched folder says nothing about when it was
taken.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .options import _number, add_geo_options, geo_config_from_args, missing_geo_packages
from .pose import PoseError, pose_from_photo
from .writers import GeoConfig, GeoDocuments, crop_thumbnail, georeference_detections

log = logging.getLogger("edgetile.serve")
THUMB_NAME = re.compile(r"^[0-9a-f]{16}_[0-9]{3}\.jpg$")
NO_TELEMETRY = "no fresh MAVLink telemetry when the frame was grabbed"
TELEMETRY_GRACE_S = 5.0  # at start, how long video sources wait for the vehicle's first position and attitude


def _mount(s: str) -> tuple[float, float, float]:
    parts = s.replace(" ", "").split(",")
    try:
        yaw, pitch, roll = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YAW,PITCH,ROLL in degrees for --camera-mount, e.g. 0,-90,0, found {s!r}"
        ) from None
    for name, v, lim in (("yaw", yaw, 360.0), ("pitch", pitch, 90.0), ("roll", roll, 180.0)):
        if not (math.isfinite(v) and -lim <= v <= lim):
            raise argparse.ArgumentTypeError(
                f"expected a {name} in [-{lim:g}, {lim:g}] for --camera-mount, found {v:g}"
            )
    return yaw, pitch, roll


def add_serve_geo_options(p: argparse.ArgumentParser) -> None:
    """The daemon's options for ground coordinates and MQTT (plus detect's pose overrides)."""
    g = p.add_argument_group("ground coordinates and MQTT")
    g.add_argument(
        "--geo",
        action="store_true",
        help="add ground coordinates (lat, lon, error_m) and a thumbnail to every detection from the "
        "photo's GPS and DJI XMP; also serves /detections.geojson, /detections.kml, "
        "/detections_geo.csv, /tracks.geojson and /thumbs/NAME",
    )
    g.add_argument(
        "--mqtt",
        metavar="HOST[:PORT]",
        help="publish every detection as JSON to this MQTT broker (QoS 1; retained status on "
        "PREFIX/status; kept in the queue database until the broker acknowledges them, across "
        "outages and restarts) (default: no MQTT)",
    )
    g.add_argument(
        "--mqtt-topic",
        metavar="PREFIX",
        default="edgetile",
        help="topic prefix: detections go to PREFIX/detections (default: edgetile)",
    )
    g.add_argument(
        "--mqtt-buffer",
        metavar="N",
        type=_number("--mqtt-buffer", 1, 10_000_000),
        default=100_000,
        help="messages kept in the state folder's queue database, across restarts, until the broker "
        "acknowledges them; beyond it the oldest are dropped and counted "
        "(edgetile_mqtt_dropped_total); a waiting message takes a few dozen bytes of the "
        "database (default: 100000)",
    )
    g.add_argument(
        "--mavlink-out",
        metavar="URL",
        help="send every detection to a ground station over MAVLink: a STATUSTEXT alert and, with "
        "--geo, a CAMERA_TRACKING_GEO_STATUS with its position; URL as pymavlink takes it, e.g. "
        "udpout:192.168.1.10:14550 or /dev/ttyUSB0,57600 (default: no MAVLink)",
    )
    g.add_argument(
        "--mavlink-lacmus",
        action="store_true",
        help="with --mavlink-out, also send the Lacmus dialect's LACMUS_OBJECT_DETECTED (id 7000) "
        "with the person's position",
    )
    g.add_argument(
        "--mavlink-in",
        metavar="URL",
        help="with --geo and --video, read the vehicle's telemetry (GLOBAL_POSITION_INT, ATTITUDE, "
        "GIMBAL_DEVICE_ATTITUDE_STATUS) and georeference each video frame from the pose when it was "
        "grabbed (needs --focal-px or --camera: frames have no EXIF); URL as pymavlink takes it, "
        "e.g. udpin:0.0.0.0:14550 or /dev/ttyTHS1,921600 (default: video frames get no coordinates)",
    )
    g.add_argument(
        "--mavlink-max-age",
        metavar="SECONDS",
        type=_number("--mavlink-max-age", 0, 60, positive=True),
        default=1.0,
        help="a frame grabbed when the latest position or attitude is older than this gets no coordinates "
        "(pixels and a warning instead); keep it above the autopilot's slowest stream period "
        "(default: 1)",
    )
    g.add_argument(
        "--camera-mount",
        metavar="YAW,PITCH,ROLL",
        type=_mount,
        default=(0.0, -90.0, 0.0),
        help="with --mavlink-in, the camera's fixed mounting on the vehicle in degrees, used when no gimbal "
        "reports GIMBAL_DEVICE_ATTITUDE_STATUS: 0,-90,0 looks straight down with the frame's top "
        "towards the nose; 0,-30,0 ahead and 30 degrees down (default: 0,-90,0)",
    )
    add_geo_options(p, with_format=False)


@dataclass
class DaemonGeo:
    """What the daemon's worker does with each photo's detections beyond the pixels.

    Args:
        config: Pose overrides, error model, track radius.
        state_dir: The daemon's state folder; thumbnails go to STATE/thumbs.
        georeference: Add coordinates and thumbnails (--geo).
        publisher: An MqttPublisher, or None.
        mavlink: A MavlinkSender, or None.
        telemetry: A MavlinkTelemetry (--mavlink-in), or None.
        max_age_s: Telemetry older than this at a frame's grab gives the frame no pose.
    """

    config: GeoConfig
    state_dir: Path
    georeference: bool = True
    publisher: object | None = None
    mavlink: object | None = None
    telemetry: object | None = None
    max_age_s: float = 1.0
    _warned: dict[str, int] = field(default_factory=dict)
    _poses: dict[str, object] = field(default_factory=dict)  # sha256 -> pose, from annotate to publish
    _link_fresh: bool | None = None  # telemetry fresh at the last grab (None: no grab yet)
    _link_lock: threading.Lock = field(
        default_factory=threading.Lock
    )  # video readers run in their own threads

    @property
    def thumbs_dir(self) -> Path:
        return self.state_dir / "thumbs"

    def annotate(self, item, image, records: list[dict]) -> None:
        """Thumbnails and ground coordinates into one photo's records, in place (worker thread).

        A photo without a usable pose keeps its pixel results; the reason is logged (once per
        distinct reason as a warning, then at debug level: a video source would repeat it per frame).
        """
        if not self.georeference:
            return
        import cv2

        if records:
            self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        for i, d in enumerate(records):
            name = f"{item.sha256[:16]}_{i:03d}.jpg"
            if not cv2.imwrite(
                str(self.thumbs_dir / name), crop_thumbnail(image, d["bbox"]), [cv2.IMWRITE_JPEG_QUALITY, 90]
            ):
                raise OSError(f"cannot write the thumbnail {self.thumbs_dir / name}")
            d["thumbnail"] = f"thumbs/{name}"
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
            return
        georeference_detections(records, pose, self.config.errors)
        if self.mavlink is not None:
            self._poses[item.sha256] = pose

    def frame_telemetry(self) -> dict:
        """What to record with a video frame grabbed now (video reader threads).

        Returns:
            The vehicle's telemetry (FrameTelemetry.to_dict()), or {"problem": one line} when it is
            missing or older than max_age_s. Losing and regaining fresh telemetry is logged once each.
        """
        from .mavlink import FrameTelemetry

        try:
            snap: FrameTelemetry = self.telemetry.snapshot(self.max_age_s)
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
            True when fresh telemetry arrived; False after timeout_s or when stopped (logged).
        """
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

    def frame_pose(self, item, width: int, height: int):
        """The pose of a video frame from the telemetry recorded when it was grabbed.

        Raises:
            PoseError: Nothing fresh was recorded (the reason then), or no focal length.
        """
        from .mavlink import FrameTelemetry

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

    def publish(self, outcomes) -> None:
        """Send the detections of committed outcomes to MAVLink (worker thread).

        MQTT is not sent from here: the daemon's outbox (serve.outbox) publishes what was committed
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

    def documents(self, queue_factory) -> GeoDocuments:
        """GeoJSON/KML/CSV of every committed result, tracks built in commit order."""
        photos = []
        since = 0
        with queue_factory() as q:
            while True:
                items, nxt = q.detections(since, 1000)
                if not items:
                    break
                photos += [(it["image"], it["detections"]) for it in items]
                since = nxt
        return GeoDocuments(photos, track_radius_m=self.config.track_radius_m)

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.mavlink is not None:
            self.mavlink.close()
        if self.telemetry is not None:
            self.telemetry.close()


def daemon_geo_from_args(a: argparse.Namespace, state_dir: Path) -> DaemonGeo | None:
    """The DaemonGeo the options ask for, or None without --geo, --mqtt and --mavlink-out.

    Raises:
        ValueError: A bad --mqtt address or --mavlink-out URL, or a missing package (named, with the
            install command).
    """
    if a.mavlink_lacmus and not a.mavlink_out:
        raise ValueError("--mavlink-lacmus: expected --mavlink-out URL as well, found none")
    if a.mavlink_in:
        if not a.geo:
            raise ValueError(
                "--mavlink-in: expected --geo as well (the vehicle's pose is used to georeference video "
                "frames), found none"
            )
        if not a.video:
            raise ValueError(
                "--mavlink-in: expected a --video source as well (photos use their own EXIF/XMP pose), "
                "found none"
            )
        if a.focal_px is None and a.camera is None:
            raise ValueError(
                "--mavlink-in: video frames have no EXIF focal length: expected --focal-px F or "
                "--camera NAME, found neither"
            )
    if not a.geo and not a.mqtt and not a.mavlink_out:
        return None
    config = geo_config_from_args(a)
    if a.geo and missing_geo_packages():
        raise ValueError(f"--geo needs {', '.join(missing_geo_packages())}: pip install 'edgetile[geo]'")
    publisher = None
    if a.mqtt:
        from .mqtt import MqttPublisher, parse_host_port

        host, port = parse_host_port(a.mqtt)
        try:
            publisher = MqttPublisher(host, port, topic_prefix=a.mqtt_topic, max_buffer=int(a.mqtt_buffer))
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    mavlink = None
    if a.mavlink_out:
        from .mavlink import MavlinkSender

        try:
            mavlink = MavlinkSender(a.mavlink_out, lacmus=bool(a.mavlink_lacmus))
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        except OSError as exc:
            raise ValueError(f"--mavlink-out {a.mavlink_out}: cannot open the link: {exc}") from None
    telemetry = None
    if a.mavlink_in:
        from .mavlink import MavlinkTelemetry

        given = [f"--{n}" for n in ("yaw", "pitch", "roll") if getattr(a, n) is not None]
        if given:
            log.warning(
                "%s apply to photos; video frames take the camera's attitude from MAVLink (a gimbal's "
                "GIMBAL_DEVICE_ATTITUDE_STATUS, else ATTITUDE and --camera-mount)",
                ", ".join(given),
            )
        try:
            try:
                telemetry = MavlinkTelemetry(a.mavlink_in, mount_ypr=tuple(a.camera_mount))
            except ImportError as exc:
                if (
                    exc.name == "serial"
                ):  # pymavlink opens anything that is not a network URL as a serial port
                    raise ValueError(
                        f"--mavlink-in {a.mavlink_in}: a serial port needs pyserial (pip install "
                        "pyserial); for the network give e.g. udpin:0.0.0.0:14550"
                    ) from None
                raise ValueError(str(exc)) from None
            except OSError as exc:
                raise ValueError(f"--mavlink-in {a.mavlink_in}: cannot open the link: {exc}") from None
            except ValueError as exc:
                raise ValueError(
                    f"--mavlink-in: expected a pymavlink connection string such as "
                    f"udpin:0.0.0.0:14550, tcp:HOST:PORT or /dev/ttyTHS1,921600, found "
                    f"{a.mavlink_in!r} ({exc})"
                ) from None
        except ValueError:
            for link in (publisher, mavlink):  # opened above; the daemon will not start
                if link is not None:
                    link.close()
            raise
    return DaemonGeo(
        config,
        Path(state_dir),
        georeference=bool(a.geo),
        publisher=publisher,
        mavlink=mavlink,
        telemetry=telemetry,
        max_age_s=float(a.mavlink_max_age),
    )


def geo_router(geo: DaemonGeo, queue_factory):
    """FastAPI routes for the geographic views of the results and the thumbnails."""
    from fastapi import APIRouter, HTTPException, Response
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse

    r = APIRouter()

    async def docs() -> GeoDocuments:
        return await run_in_threadpool(geo.documents, queue_factory)

    @r.get("/detections.geojson")
    async def detections_geojson() -> JSONResponse:
        return JSONResponse((await docs()).geojson(), media_type="application/geo+json")

    @r.get("/tracks.geojson")
    async def tracks_geojson() -> JSONResponse:
        return JSONResponse((await docs()).tracks_geojson(), media_type="application/geo+json")

    @r.get("/detections.kml")
    async def detections_kml() -> Response:
        return Response((await docs()).kml(), media_type="application/vnd.google-earth.kml+xml")

    @r.get("/detections_geo.csv")
    async def detections_csv() -> Response:
        return Response((await docs()).csv_text(), media_type="text/csv; charset=utf-8")

    @r.get("/thumbs/{name}")
    def thumbnail(name: str) -> FileResponse:
        if not THUMB_NAME.match(name):
            raise HTTPException(
                422, f"expected a thumbnail name like 0123456789abcdef_000.jpg, found {name[:80]!r}"
            )
        path = geo.thumbs_dir / name
        if not path.is_file():
            raise HTTPException(404, f"no thumbnail {name}")
        return FileResponse(path, media_type="image/jpeg")

    return r
