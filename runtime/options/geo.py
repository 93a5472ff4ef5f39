"""Command-line options for georeferencing and the links, turned into config objects.

``edgetile detect`` takes the georeferencing options (output formats, pose overrides, error model,
tracks) and gets a GeoConfig; ``edgetile serve`` takes them without --format, plus --geo, MQTT and
MAVLink, and gets a ServeGeoConfig. Past this module nothing reads an argparse namespace: the
library (``edgetile.runtime.geo``, ``edgetile.runtime.links``, the daemon's hooks) takes the config
objects.
"""

from __future__ import annotations

import argparse
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..argtypes import number_in, positive_number
from ..geo.ground import ErrorModel
from ..geo.pose import PoseOverrides
from ..geo.profiles import profile_names
from ..geo.writers import GEO_FORMATS, GeoConfig, GeoWriter, missing_geo_packages, parse_formats
from ..links.mqtt import DRONE_ID, parse_host_port, read_password_file


def _formats(s: str) -> tuple[str, ...]:
    try:
        return parse_formats(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--format: ", "")) from None


def camera_mount(s: str) -> tuple[float, float, float]:
    """--camera-mount: YAW,PITCH,ROLL in degrees, each within its range."""
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


def add_geo_options(p: argparse.ArgumentParser, with_format: bool = True) -> None:
    """Georeferencing options: output formats, pose overrides, error model, tracks."""
    g = p.add_argument_group(
        "georeferencing",
        "Ground coordinates of each detection from the photo's GPS and DJI XMP (camera pose), "
        "flat ground under the camera, and WGS84. RelativeAltitude is the height above the TAKE-OFF "
        "point: over hills pass --ground-alt or --ground-above-takeoff. See docs/geo.md.",
    )
    if with_format:
        g.add_argument(
            "--format",
            type=_formats,
            default=(),
            metavar="LIST",
            help=f"geographic outputs to add to detections.json/.csv, comma-separated from "
            f"{','.join(GEO_FORMATS)}: DIR/detections.geojson (+ tracks.geojson), "
            f"DIR/detections.kml, DIR/detections_geo.csv, with a crop thumbnail per detection in "
            f"DIR/thumbs/ (default: none, pixel results only)",
        )
    alt = g.add_mutually_exclusive_group()
    alt.add_argument(
        "--ground-alt",
        type=number_in("--ground-alt", -500, 9000),
        metavar="M",
        help="ground elevation in metres above sea level (from a map); height above ground = "
        "the photo's absolute altitude - M (default: use RelativeAltitude)",
    )
    alt.add_argument(
        "--height-above-ground",
        type=positive_number("--height-above-ground"),
        metavar="M",
        help="camera height above the ground in metres, for every photo (e.g. from a laser "
        "rangefinder); replaces the photo's altitudes",
    )
    alt.add_argument(
        "--ground-above-takeoff",
        type=number_in("--ground-above-takeoff", -5000, 5000),
        default=0.0,
        metavar="M",
        help="how far the searched ground lies above the take-off point in metres (negative: "
        "below, e.g. a valley); height above ground = RelativeAltitude - M (default: 0)",
    )
    g.add_argument(
        "--camera",
        choices=profile_names(),
        default=None,
        help="bundled camera profile for the focal length, when photos lack "
        "drone-dji:CalibratedFocalLength (default: chosen from the EXIF Model)",
    )
    g.add_argument(
        "--focal-px",
        type=positive_number("--focal-px"),
        metavar="F",
        help="focal length in pixels (overrides the photo and --camera)",
    )
    g.add_argument(
        "--yaw",
        type=number_in("--yaw", -360, 360),
        metavar="DEG",
        help="camera heading, degrees clockwise from true north (default: the gimbal's, from XMP)",
    )
    g.add_argument(
        "--pitch",
        type=number_in("--pitch", -90, 90),
        metavar="DEG",
        help="camera pitch in degrees, -90 straight down (default: the gimbal's, from XMP)",
    )
    g.add_argument(
        "--roll",
        type=number_in("--roll", -180, 180),
        metavar="DEG",
        help="camera roll in degrees (default: the gimbal's, from XMP, else 0)",
    )
    g.add_argument(
        "--alt-sigma",
        type=number_in("--alt-sigma", 0, 1000),
        default=2.0,
        metavar="M",
        help="one-sigma uncertainty of the height above ground, for error_m (default: 2)",
    )
    g.add_argument(
        "--angle-sigma",
        type=number_in("--angle-sigma", 0, 30),
        default=1.0,
        metavar="DEG",
        help="one-sigma uncertainty of the camera's heading and tilts, for error_m (default: 1)",
    )
    g.add_argument(
        "--gps-sigma",
        type=number_in("--gps-sigma", 0, 1000),
        default=2.0,
        metavar="M",
        help="one-sigma horizontal uncertainty of the camera's GPS, for error_m (default: 2; RTK: 0.1)",
    )
    g.add_argument(
        "--track-radius",
        type=positive_number("--track-radius"),
        default=5.0,
        metavar="M",
        help="sightings in different photos closer than this on the ground join one track (default: 5)",
    )
    g.add_argument(
        "--appearance-min",
        type=number_in("--appearance-min", -1.0, 1.0),
        default=None,
        metavar="COS",
        help="when detections carry an appearance embedding (an embedding model ran), a sighting joins a "
        "track only if the cosine similarity of its embedding with the track's appearance is at least "
        "this, besides --track-radius, so two people standing close together stay two tracks; "
        "sightings without an embedding are placed by position alone (default: the embedding model's "
        "own threshold when one is given, else position alone)",
    )


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
        help="topic prefix: detections go to PREFIX/detections, photos to PREFIX/photos, the retained "
        "status to PREFIX/status/DRONE_ID (default: edgetile)",
    )
    g.add_argument(
        "--mqtt-user",
        metavar="NAME",
        help="this daemon's user name on the broker, for a broker with 'allow_anonymous false' and a "
        "password file (mosquitto_passwd): then only the broker's accounts can publish detections "
        "(default: anonymous)",
    )
    g.add_argument(
        "--mqtt-password-file",
        metavar="FILE",
        help="file whose first line is the password of --mqtt-user, e.g. a systemd credential; never "
        "on the command line, where it would show in the process list (default: no password)",
    )
    g.add_argument(
        "--drone-id",
        metavar="NAME",
        default=None,
        help="this drone's name in every MQTT message and its status topic, so that a ground station "
        "(edgetile station) tells several drones apart: letters, digits, '_', '.', '-', at most 32 "
        "(default: the host name)",
    )
    g.add_argument(
        "--advertise-url",
        metavar="URL",
        default=None,
        help="where a ground station reaches this daemon's HTTP API to fetch crops and photos, sent in "
        "every MQTT message, e.g. http://192.168.1.21:8765 (default: http://HOST:PORT with --host, or "
        "this machine's first non-loopback address when --host is 0.0.0.0 or ::)",
    )
    g.add_argument(
        "--mqtt-buffer",
        metavar="N",
        type=number_in("--mqtt-buffer", 1, 10_000_000),
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
        type=positive_number("--mavlink-max-age", 60),
        default=1.0,
        help="a frame grabbed when the latest position or attitude is older than this gets no coordinates "
        "(pixels and a warning instead); keep it above the autopilot's slowest stream period "
        "(default: 1)",
    )
    g.add_argument(
        "--camera-mount",
        metavar="YAW,PITCH,ROLL",
        type=camera_mount,
        default=(0.0, -90.0, 0.0),
        help="with --mavlink-in, the camera's fixed mounting on the vehicle in degrees, used when no gimbal "
        "reports GIMBAL_DEVICE_ATTITUDE_STATUS: 0,-90,0 looks straight down with the frame's top "
        "towards the nose; 0,-30,0 ahead and 30 degrees down (default: 0,-90,0)",
    )
    add_geo_options(p, with_format=False)


def geo_config_from_args(
    a: argparse.Namespace, formats: tuple[str, ...] = (), model_threshold: float | None = None
) -> GeoConfig:
    """The GeoConfig the georeferencing options describe.

    Args:
        a: Parsed options of :func:`add_geo_options`.
        formats: The geographic files to write (detect's --format; the daemon writes none).
        model_threshold: The embedding model's own similarity threshold when one runs: the tracks'
            appearance_min unless --appearance-min says otherwise.
    """
    overrides = PoseOverrides(
        height_above_ground=a.height_above_ground,
        ground_alt=a.ground_alt,
        ground_above_takeoff=a.ground_above_takeoff,
        camera=a.camera,
        focal_px=a.focal_px,
        yaw=a.yaw,
        pitch=a.pitch,
        roll=a.roll,
    )
    errors = ErrorModel(alt_sigma_m=a.alt_sigma, angle_sigma_deg=a.angle_sigma, gps_sigma_m=a.gps_sigma)
    return GeoConfig(
        formats=tuple(formats),
        overrides=overrides,
        errors=errors,
        track_radius_m=a.track_radius,
        appearance_min=appearance_min_for(getattr(a, "appearance_min", None), model_threshold),
    )


def appearance_min_for(given: float | None, model_threshold: float | None) -> float | None:
    """The tracks' least appearance similarity: --appearance-min when given, else the embedding model's
    own threshold (the one it was validated at), else None (position alone)."""
    return given if given is not None else model_threshold


def embedder_threshold(detector: object) -> float | None:
    """The same-person threshold stored in a detector's appearance embedding model (``detector.embedder``,
    from --embed), or None when it runs none or the model stores none."""
    threshold = getattr(getattr(detector, "embedder", None), "threshold", None)
    return None if threshold is None else float(threshold)


def open_geo_writer(
    config: GeoConfig, out_dir: str | Path, names: Mapping[int, str] | None = None
) -> GeoWriter | None:
    """The GeoWriter for ``edgetile detect --format``, or None when no format is asked for.

    Raises:
        ValueError: A package of the ``geo`` extra is missing (named, with the install command).
    """
    if not config.formats:
        return None
    missing = missing_geo_packages()
    if missing:
        raise ValueError(
            f"--format {','.join(config.formats)} needs {', '.join(missing)}: pip install 'edgetile[geo]'"
        )
    return GeoWriter(out_dir, config, names=names)


@dataclass(frozen=True)
class ServeGeoConfig:
    """What the daemon does with detections beyond the pixels: coordinates, MQTT, MAVLink.

    Attributes:
        geo: Pose overrides, error model, track radius.
        georeference: Add coordinates and thumbnails to each detection (--geo).
        mqtt_host: The MQTT broker's host (--mqtt), or None for no MQTT.
        mqtt_port: The MQTT broker's port.
        mqtt_topic: Topic prefix: detections go to PREFIX/detections.
        mqtt_buffer: Messages kept in the queue database until the broker acknowledges them.
        mqtt_user: The daemon's user name on the broker (--mqtt-user), or None (anonymous).
        mqtt_password: Its password (the first line of --mqtt-password-file), or None.
        mavlink_out: pymavlink connection string of the ground station (--mavlink-out), or None.
        mavlink_lacmus: Also send the Lacmus dialect's LACMUS_OBJECT_DETECTED.
        mavlink_in: pymavlink connection string of the vehicle's telemetry (--mavlink-in), or None.
        mavlink_max_age_s: Telemetry older than this at a frame's grab gives the frame no pose.
        camera_mount: The camera's fixed mounting on the vehicle (yaw, pitch, roll in degrees).
        drone_id: This drone's name in MQTT messages and topics (None: the host name).
        advertise_url: Where a ground station reaches the HTTP API (None: from --host and the port).
    """

    geo: GeoConfig = field(default_factory=GeoConfig)
    georeference: bool = False
    mqtt_host: str | None = None
    mqtt_port: int = 1883
    mqtt_topic: str = "edgetile"
    mqtt_buffer: int = 100_000
    mqtt_user: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mavlink_out: str | None = None
    mavlink_lacmus: bool = False
    mavlink_in: str | None = None
    mavlink_max_age_s: float = 1.0
    camera_mount: tuple[float, float, float] = (0.0, -90.0, 0.0)
    drone_id: str | None = None
    advertise_url: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether the daemon has anything to do beyond the pixels (--geo, --mqtt or --mavlink-out)."""
        return self.georeference or self.mqtt_host is not None or self.mavlink_out is not None


def serve_geo_config_from_args(a: argparse.Namespace, model_threshold: float | None = None) -> ServeGeoConfig:
    """The ServeGeoConfig the daemon's options describe (after the config file is merged).

    Args:
        a: The daemon's parsed options.
        model_threshold: The embedding model's own threshold when the detector runs one: the tracks'
            appearance_min unless --appearance-min says otherwise.

    Raises:
        ValueError: Options that do not fit together (named), or a bad --mqtt address.
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
    host, port = parse_host_port(a.mqtt) if a.mqtt else (None, 1883)
    user, password_file = getattr(a, "mqtt_user", None), getattr(a, "mqtt_password_file", None)
    if (user is not None or password_file) and not a.mqtt:
        raise ValueError(
            f"{'--mqtt-user' if user is not None else '--mqtt-password-file'}: expected --mqtt HOST[:PORT] "
            "as well, found none"
        )
    if user is not None and not user:
        raise ValueError("--mqtt-user: expected a user name, found an empty one")
    if password_file and not user:
        raise ValueError(
            "--mqtt-password-file: expected --mqtt-user NAME as well (MQTT sends no password alone), found none"
        )
    password = read_password_file(str(password_file)) if password_file else None
    drone_id = getattr(a, "drone_id", None)
    if drone_id is not None and not DRONE_ID.match(drone_id):
        raise ValueError(
            f"--drone-id: expected a name of letters, digits, '_', '.', '-' (at most 32, starting with a "
            f"letter or digit), found {drone_id!r}"
        )
    advertise = getattr(a, "advertise_url", None)
    if advertise is not None:
        parsed = urllib.parse.urlsplit(advertise)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError(
                f"--advertise-url: expected http://HOST:PORT or https://HOST:PORT, found {advertise!r}"
            )
        advertise = advertise.rstrip("/")
    return ServeGeoConfig(
        geo=geo_config_from_args(a, model_threshold=model_threshold),
        georeference=bool(a.geo),
        mqtt_host=host,
        mqtt_port=port,
        mqtt_topic=a.mqtt_topic,
        mqtt_buffer=int(a.mqtt_buffer),
        mqtt_user=user,
        mqtt_password=password,
        mavlink_out=a.mavlink_out or None,
        mavlink_lacmus=bool(a.mavlink_lacmus),
        mavlink_in=a.mavlink_in or None,
        mavlink_max_age_s=float(a.mavlink_max_age),
        camera_mount=tuple(a.camera_mount),
        drone_id=drone_id,
        advertise_url=advertise,
    )
