"""Ground coordinates, thumbnails, MQTT and MAVLink in the daemon (`edgetile serve --geo --mqtt HOST:PORT`).

With --geo the worker adds lat, lon, error_m, ground_alt_m, distance_m and a thumbnail to each
detection record before the record is committed, so GET /detections serves them; the HTTP API also
serves every georeferenced detection as /detections.geojson, /detections.kml, /detections_geo.csv,
the tracks as /tracks.geojson, and the thumbnails as /thumbs/NAME. Tracks are built at request time
from all committed results in commit order, so they are the same after a restart.

With --mqtt each detection of a committed photo is published (see geo.mqtt) as JSON with the photo's
name and SHA-256, after the commit: what subscribers hear is what the daemon keeps. With
--mavlink-out each is also sent to a ground station (see geo.mavlink).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .options import _number, add_geo_options, geo_config_from_args, missing_geo_packages
from .pose import PoseError, pose_from_photo
from .writers import GeoConfig, GeoDocuments, crop_thumbnail, georeference_detections

log = logging.getLogger("edgetile.serve")
THUMB_NAME = re.compile(r"^[0-9a-f]{16}_[0-9]{3}\.jpg$")


def add_serve_geo_options(p: argparse.ArgumentParser) -> None:
    """The daemon's options for ground coordinates and MQTT (plus detect's pose overrides)."""
    g = p.add_argument_group("ground coordinates and MQTT")
    g.add_argument("--geo", action="store_true",
                   help="add ground coordinates (lat, lon, error_m) and a thumbnail to every detection from the "
                        "photo's GPS and DJI XMP; also serves /detections.geojson, /detections.kml, "
                        "/detections_geo.csv, /tracks.geojson and /thumbs/NAME")
    g.add_argument("--mqtt", metavar="HOST[:PORT]",
                   help="publish every detection as JSON to this MQTT broker (QoS 1; retained status on "
                        "PREFIX/status; buffered while the broker is away) (default: no MQTT)")
    g.add_argument("--mqtt-topic", metavar="PREFIX", default="edgetile",
                   help="topic prefix: detections go to PREFIX/detections (default: edgetile)")
    g.add_argument("--mqtt-buffer", metavar="N", type=_number("--mqtt-buffer", 1, 10_000_000), default=100_000,
                   help="messages kept while the broker is unreachable; beyond it new ones are dropped and "
                        "counted (default: 100000)")
    g.add_argument("--mavlink-out", metavar="URL",
                   help="send every detection to a ground station over MAVLink: a STATUSTEXT alert and, with "
                        "--geo, a CAMERA_TRACKING_GEO_STATUS with its position; URL as pymavlink takes it, e.g. "
                        "udpout:192.168.1.10:14550 or /dev/ttyUSB0,57600 (default: no MAVLink)")
    g.add_argument("--mavlink-lacmus", action="store_true",
                   help="with --mavlink-out, also send the Lacmus dialect's LACMUS_OBJECT_DETECTED (id 7000) "
                        "with the person's position")
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
    """

    config: GeoConfig
    state_dir: Path
    georeference: bool = True
    publisher: object | None = None
    mavlink: object | None = None
    _warned: dict[str, int] = field(default_factory=dict)
    _poses: dict[str, object] = field(default_factory=dict)  # sha256 -> pose, from annotate to publish

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
            if not cv2.imwrite(str(self.thumbs_dir / name), crop_thumbnail(image, d["bbox"]),
                               [cv2.IMWRITE_JPEG_QUALITY, 90]):
                raise OSError(f"cannot write the thumbnail {self.thumbs_dir / name}")
            d["thumbnail"] = f"thumbs/{name}"
        try:
            pose = pose_from_photo(item.path, self.config.overrides)
        except PoseError as exc:
            reason = str(exc)
            seen = self._warned.get(reason, 0)
            self._warned[reason] = seen + 1
            (log.debug if seen else log.warning)("%s: no ground coordinates: %s%s", item.name, reason,
                                                 "" if seen else " (said once; later photos at debug level)")
            return
        georeference_detections(records, pose, self.config.errors)
        if self.mavlink is not None:
            self._poses[item.sha256] = pose

    def publish(self, outcomes) -> None:
        """Publish the detections of committed outcomes to MQTT and MAVLink (worker thread)."""
        for o in outcomes:
            pose = self._poses.pop(o.item.sha256, None)
            if not o.ok:
                continue
            for d in o.detections or []:
                if self.publisher is not None:
                    self.publisher.publish_detection(d, image=o.item.name, sha256=o.item.sha256)
                if self.mavlink is not None:
                    self.mavlink.send_detection(d, image_index=o.item.item_id, camera=pose,
                                                file_url=d.get("thumbnail", ""))

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


def daemon_geo_from_args(a: argparse.Namespace, state_dir: Path) -> DaemonGeo | None:
    """The DaemonGeo the options ask for, or None without --geo, --mqtt and --mavlink-out.

    Raises:
        ValueError: A bad --mqtt address or --mavlink-out URL, or a missing package (named, with the
            install command).
    """
    if a.mavlink_lacmus and not a.mavlink_out:
        raise ValueError("--mavlink-lacmus: expected --mavlink-out URL as well, found none")
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
    return DaemonGeo(config, Path(state_dir), georeference=bool(a.geo), publisher=publisher, mavlink=mavlink)


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
            raise HTTPException(422, f"expected a thumbnail name like 0123456789abcdef_000.jpg, found {name[:80]!r}")
        path = geo.thumbs_dir / name
        if not path.is_file():
            raise HTTPException(404, f"no thumbnail {name}")
        return FileResponse(path, media_type="image/jpeg")

    return r
