"""Where the camera was and where it looked: the pose of one photo.

The pose comes from the photo itself (EXIF GPS and DJI's ``drone-dji:`` XMP, read with Pillow), from
a bundled camera profile for the intrinsics a photo lacks, and from flags, which override
everything. Angles follow DJI and MAVLink: north-east-down (NED), yaw-pitch-roll applied as
Rz(yaw) * Ry(pitch) * Rx(roll) to the camera frame (forward, right, down), where "forward" is the
optical axis, "right" the image's +x and "down" the image's +y. Pitch -90 looks straight down with
the photo's top towards the heading.

Height above ground: DJI's RelativeAltitude is the height above the take-off point, not above the
ground under the camera. Unless told otherwise the ground is taken to be at the take-off height;
--ground-above-takeoff, --ground-alt (ground elevation, compared with the absolute altitude) and
--height-above-ground say better.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .profiles import profile_by_name, profile_for_model

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_GPS_IFD = 0x8825
EXIF_IFD = 0x8769
TAG_MAKE, TAG_MODEL = 0x010F, 0x0110
TAG_FOCAL_35MM = 0xA405


class PoseError(ValueError):
    """A photo whose pose cannot be known; the message is one line naming what is missing and the flag that supplies it."""


def rotation_ypr(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rz(yaw) * Ry(pitch) * Rx(roll): camera (forward, right, down) -> north-east-down.

    Returns:
        (3, 3) float64 rotation matrix.
    """
    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def rotation_from_quaternion(w: float, x: float, y: float, z: float) -> np.ndarray:
    """The rotation of a unit quaternion (w, x, y, z), e.g. MAVLink's camera orientation in NED.

    Returns:
        (3, 3) float64 rotation matrix.

    Raises:
        ValueError: The quaternion has zero length (MAVLink's "orientation unknown").
    """
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if not n > 1e-9 or not math.isfinite(n):
        raise ValueError(f"q: expected a non-zero quaternion (w, x, y, z), found {(w, x, y, z)}")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def ypr_from_rotation(r: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees (ZYX) of a rotation; at pitch +-90 roll is folded into yaw."""
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -float(r[2, 0])))))
    if abs(abs(pitch) - 90.0) < 1e-6:
        yaw = math.degrees(math.atan2(-float(r[0, 1]), float(r[1, 1])))
        return yaw, pitch, 0.0
    yaw = math.degrees(math.atan2(float(r[1, 0]), float(r[0, 0])))
    roll = math.degrees(math.atan2(float(r[2, 1]), float(r[2, 2])))
    return yaw, pitch, roll


@dataclass(frozen=True, eq=False)
class CameraPose:
    """The camera of one photo or frame: position, height above the ground, attitude, intrinsics.

    Attributes:
        lat: Camera latitude, degrees (WGS84).
        lon: Camera longitude, degrees (WGS84).
        agl_m: Camera height above the ground under it, metres.
        rotation: (3, 3) rotation from the camera frame (forward, right, down) to north-east-down.
        focal_px: Focal length in pixels.
        cx: Principal point x in pixels (continuous coordinates: the image spans [0, width]).
        cy: Principal point y in pixels.
        width: Image width in pixels.
        height: Image height in pixels.
        abs_alt_m: Camera altitude above sea level in metres, when known.
        sources: Where each part came from ("position", "height", "attitude", "intrinsics"), for
            the outputs, so that a reader can judge the fix.
    """

    lat: float
    lon: float
    agl_m: float
    rotation: np.ndarray
    focal_px: float
    cx: float
    cy: float
    width: int
    height: int
    abs_alt_m: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
            raise PoseError(f"lat: expected degrees in [-90, 90], found {self.lat}")
        if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
            raise PoseError(f"lon: expected degrees in [-180, 180], found {self.lon}")
        if not (math.isfinite(self.agl_m) and self.agl_m > 0):
            raise PoseError(
                f"height above ground: expected a positive number of metres, found {self.agl_m:.2f}"
                f" ({self.sources.get('height', 'given')})"
            )
        if not (math.isfinite(self.focal_px) and self.focal_px > 0):
            raise PoseError(f"focal length: expected a positive number of pixels, found {self.focal_px}")
        r = np.asarray(self.rotation, np.float64)
        if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6):
            raise PoseError(f"rotation: expected a (3, 3) rotation matrix, found shape {r.shape}")
        object.__setattr__(self, "rotation", r)

    @classmethod
    def from_angles(
        cls,
        lat: float,
        lon: float,
        agl_m: float,
        yaw: float,
        pitch: float,
        roll: float,
        focal_px: float,
        width: int,
        height: int,
        cx: float | None = None,
        cy: float | None = None,
        abs_alt_m: float | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> CameraPose:
        """A pose from NED yaw, pitch, roll in degrees; the principal point defaults to the image centre."""
        return cls(
            lat,
            lon,
            agl_m,
            rotation_ypr(yaw, pitch, roll),
            focal_px,
            width / 2.0 if cx is None else cx,
            height / 2.0 if cy is None else cy,
            width,
            height,
            abs_alt_m,
            dict(sources or {}),
        )

    @property
    def ypr(self) -> tuple[float, float, float]:
        """Yaw, pitch, roll in degrees."""
        return ypr_from_rotation(self.rotation)

    @property
    def gsd_m(self) -> float:
        """Ground sampling distance straight below the camera, metres per pixel (h / f)."""
        return self.agl_m / self.focal_px

    def to_dict(self) -> dict:
        """Everything needed to rebuild the pose (:meth:`from_dict`), JSON-ready."""
        return {
            "lat": self.lat,
            "lon": self.lon,
            "agl_m": self.agl_m,
            "rotation": [[float(v) for v in row] for row in self.rotation],
            "focal_px": self.focal_px,
            "cx": self.cx,
            "cy": self.cy,
            "width": int(self.width),
            "height": int(self.height),
            "abs_alt_m": self.abs_alt_m,
            "sources": dict(self.sources),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> CameraPose:
        """The pose :meth:`to_dict` wrote.

        Raises:
            PoseError: A field missing or out of range.
        """
        try:
            return cls(
                float(d["lat"]),
                float(d["lon"]),
                float(d["agl_m"]),
                np.asarray(d["rotation"], np.float64),
                float(d["focal_px"]),
                float(d["cx"]),
                float(d["cy"]),
                int(d["width"]),
                int(d["height"]),
                None if d.get("abs_alt_m") is None else float(d["abs_alt_m"]),
                dict(d.get("sources") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PoseError):
                raise
            raise PoseError(
                f"a stored pose: expected the fields of CameraPose.to_dict(), found {exc!r}"
            ) from None

    def summary(self) -> dict:
        """JSON-ready description of the pose, for the outputs."""
        yaw, pitch, roll = self.ypr
        return {
            "lat": round(self.lat, 8),
            "lon": round(self.lon, 8),
            "abs_alt_m": None if self.abs_alt_m is None else round(self.abs_alt_m, 2),
            "agl_m": round(self.agl_m, 2),
            "yaw": round(yaw, 2),
            "pitch": round(pitch, 2),
            "roll": round(roll, 2),
            "focal_px": round(self.focal_px, 2),
            "sources": dict(self.sources),
        }


@dataclass(frozen=True)
class PoseOverrides:
    """What the flags say; each given value overrides the photo.

    Attributes:
        height_above_ground: Camera height above the ground in metres (replaces every altitude rule).
        ground_alt: Ground elevation in metres, in the datum of the photo's absolute altitude (sea
            level for DJI): height above ground = absolute altitude - ground_alt.
        ground_above_takeoff: How far the ground under the photos lies above the take-off point, in
            metres (negative below): height above ground = RelativeAltitude - this. Default 0.
        camera: Name of a bundled camera profile, for the focal length.
        focal_px: Focal length in pixels.
        yaw: Camera yaw in degrees clockwise from true north.
        pitch: Camera pitch in degrees (-90 straight down, 0 at the horizon).
        roll: Camera roll in degrees.
    """

    height_above_ground: float | None = None
    ground_alt: float | None = None
    ground_above_takeoff: float = 0.0
    camera: str | None = None
    focal_px: float | None = None
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None

    def __post_init__(self) -> None:
        if self.height_above_ground is not None and self.ground_alt is not None:
            raise ValueError("height_above_ground and ground_alt: expected at most one, found both")
        if self.camera is not None:
            profile_by_name(self.camera)
        for name in ("height_above_ground", "focal_px"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive number, found {v}")


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo says about its camera, before any rule is applied.

    Attributes:
        width: Photo width in pixels.
        height: Photo height in pixels.
        make: EXIF Make.
        model: EXIF Model (DJI's camera name, e.g. FC220).
        gps: (lat, lon) from EXIF, or None.
        gps_alt: EXIF GPSAltitude in metres (negative below sea level), or None.
        focal_35mm: EXIF FocalLengthIn35mmFilm, or None.
        dji: drone-dji XMP values as text, by name (e.g. "RelativeAltitude": "+50.20").
        problems: One line per metadata part that was present but unreadable.
    """

    width: int
    height: int
    make: str | None = None
    model: str | None = None
    gps: tuple[float, float] | None = None
    gps_alt: float | None = None
    focal_35mm: float | None = None
    dji: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def parse_dji_xmp(xmp: bytes) -> dict[str, str]:
    """The drone-dji values of an XMP packet, written as attributes or as elements.

    Raises:
        ValueError: The packet is not well-formed XML.
    """
    text = xmp.strip(b"\x00 \t\r\n")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"XMP packet is not well-formed XML ({exc})") from exc
    out: dict[str, str] = {}
    for el in root.iter():
        for key, value in el.attrib.items():
            ns, local = _split_tag(key)
            if "dji" in ns.lower():
                out[local] = value.strip()
        ns, local = _split_tag(el.tag) if isinstance(el.tag, str) else ("", "")
        if "dji" in ns.lower() and el.text and el.text.strip():
            out[local] = el.text.strip()
    return out


def _rational(v: object) -> float:
    f = float(v)  # IFDRational, int or float
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, found {v!r}")
    return f


def _dms(value: object, ref: object, positive: str, name: str) -> float:
    try:
        d, m, s = (_rational(x) for x in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"EXIF {name}: expected (degrees, minutes, seconds), found {value!r}") from exc
    deg = d + m / 60.0 + s / 3600.0
    ref_s = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref or positive)
    ref_s = ref_s.strip("\x00 ").upper() or positive
    return -deg if ref_s != positive else deg


def _xmp_segments(im: object) -> list[bytes]:
    segs = [
        data[len(XMP_HEADER) :]
        for marker, data in getattr(im, "applist", [])
        if marker == "APP1" and data.startswith(XMP_HEADER)
    ]
    if not segs:
        info_xmp = getattr(im, "info", {}).get("xmp")
        if isinstance(info_xmp, (bytes, bytearray)):
            segs = [bytes(info_xmp)]
    return segs


def read_photo_metadata(path: str | os.PathLike) -> PhotoMetadata:
    """Read a photo's EXIF GPS, camera model and DJI XMP with Pillow, without decoding its pixels.

    Raises:
        PoseError: The file cannot be opened as an image by Pillow.
    """
    from PIL import Image, UnidentifiedImageError

    problems: list[str] = []
    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise PoseError(f"cannot read the photo's metadata with Pillow: {str(exc).splitlines()[0]}") from exc
    with im:
        width, height = im.size
        exif = im.getexif()
        make = str(exif.get(TAG_MAKE) or "").strip("\x00 ") or None
        model = str(exif.get(TAG_MODEL) or "").strip("\x00 ") or None
        gps = gps_alt = focal_35mm = None
        gps_ifd = exif.get_ifd(EXIF_GPS_IFD)
        if 2 in gps_ifd and 4 in gps_ifd:
            try:
                gps = (
                    _dms(gps_ifd[2], gps_ifd.get(1), "N", "GPSLatitude"),
                    _dms(gps_ifd[4], gps_ifd.get(3), "E", "GPSLongitude"),
                )
            except ValueError as exc:
                problems.append(str(exc))
        if 6 in gps_ifd:
            try:
                gps_alt = _rational(gps_ifd[6])
                ref = gps_ifd.get(5, 0)
                below = ref in (1, b"\x01") or (isinstance(ref, bytes) and ref[:1] == b"\x01")
                gps_alt = -gps_alt if below else gps_alt
            except (TypeError, ValueError, ZeroDivisionError):
                problems.append(f"EXIF GPSAltitude: expected a number, found {gps_ifd[6]!r}")
        f35 = exif.get_ifd(EXIF_IFD).get(TAG_FOCAL_35MM)
        if f35:
            try:
                focal_35mm = _rational(f35)
            except (TypeError, ValueError, ZeroDivisionError):
                problems.append(f"EXIF FocalLengthIn35mmFilm: expected a number, found {f35!r}")
        dji: dict[str, str] = {}
        for seg in _xmp_segments(im):
            try:
                dji.update(parse_dji_xmp(seg))
            except ValueError as exc:
                problems.append(str(exc))
    return PhotoMetadata(width, height, make, model, gps, gps_alt, focal_35mm or None, dji, tuple(problems))


def _dji_number(meta: PhotoMetadata, *names: str) -> tuple[float, str] | None:
    """The first of `names` present in the photo's drone-dji XMP, as (value, name)."""
    for name in names:
        if name in meta.dji:
            text = meta.dji[name]
            try:
                v = float(text)
            except ValueError:
                raise PoseError(f"drone-dji:{name}: expected a number, found {text!r}") from None
            if not math.isfinite(v):
                raise PoseError(f"drone-dji:{name}: expected a finite number, found {text!r}")
            return v, name
    return None


def _with_problems(meta: PhotoMetadata, message: str) -> str:
    return message + (f" ({'; '.join(meta.problems)})" if meta.problems else "")


def pose_from_metadata(meta: PhotoMetadata, overrides: PoseOverrides | None = None) -> CameraPose:
    """Combine what the photo says with the flags into one pose.

    Order, first found wins: position EXIF GPS, then drone-dji:GpsLatitude/GpsLongitude; height
    above ground --height-above-ground, then absolute altitude (drone-dji:AbsoluteAltitude, then
    EXIF GPSAltitude) minus --ground-alt, then RelativeAltitude minus --ground-above-takeoff;
    attitude --yaw/--pitch/--roll, then the gimbal's angles (yaw falls back to FlightYawDegree, roll
    to 0 when a pitch is known); focal length --focal-px, then --camera, then the photo's
    CalibratedFocalLength, then the profile of its EXIF Model, then EXIF FocalLengthIn35mmFilm.

    Raises:
        PoseError: Something needed is missing or unreadable; the message names the flag to pass.
    """
    o = overrides or PoseOverrides()
    sources: dict[str, str] = {}

    if meta.gps is not None:
        lat, lon = meta.gps
        sources["position"] = "EXIF GPS"
    else:
        la = _dji_number(meta, "GpsLatitude", "Latitude")
        lo = _dji_number(meta, "GpsLongitude", "GpsLongtitude", "Longitude")  # older firmware misspells it
        if la is None or lo is None:
            raise PoseError(
                _with_problems(
                    meta,
                    "no GPS position: the photo has neither EXIF GPSLatitude/"
                    "GPSLongitude nor drone-dji:GpsLatitude/GpsLongitude",
                )
            )
        lat, lon = la[0], lo[0]
        sources["position"] = f"XMP drone-dji:{la[1]}/{lo[1]}"
    if lat == 0.0 and lon == 0.0:
        raise PoseError("GPS position is 0, 0: the aircraft had no satellite fix when the photo was taken")

    abs_alt = _dji_number(meta, "AbsoluteAltitude")
    abs_alt_m, abs_src = (
        (abs_alt[0], "drone-dji:AbsoluteAltitude") if abs_alt else (meta.gps_alt, "EXIF GPSAltitude")
    )
    if o.height_above_ground is not None:
        agl = o.height_above_ground
        sources["height"] = "--height-above-ground"
    elif o.ground_alt is not None:
        if abs_alt_m is None:
            raise PoseError(
                "--ground-alt needs the camera's absolute altitude, and the photo has neither "
                "drone-dji:AbsoluteAltitude nor EXIF GPSAltitude; pass --height-above-ground"
            )
        agl = abs_alt_m - o.ground_alt
        sources["height"] = f"{abs_src} {abs_alt_m:.2f} m - --ground-alt {o.ground_alt:.2f} m"
    else:
        rel = _dji_number(meta, "RelativeAltitude")
        if rel is None:
            raise PoseError(
                _with_problems(
                    meta,
                    "no height above ground: the photo has no drone-dji:RelativeAltitude;"
                    " pass --height-above-ground, or --ground-alt",
                )
            )
        agl = rel[0] - o.ground_above_takeoff
        sources["height"] = (
            f"RelativeAltitude {rel[0]:.2f} m - ground {o.ground_above_takeoff:.2f} m above take-off"
            + (
                " (assumed: pass --ground-above-takeoff or --ground-alt)"
                if o.ground_above_takeoff == 0.0
                else ""
            )
        )

    attitude = []
    if o.yaw is not None:
        yaw = o.yaw
        attitude.append("yaw --yaw")
    else:
        y = _dji_number(meta, "GimbalYawDegree", "FlightYawDegree")
        if y is None:
            raise PoseError(
                _with_problems(
                    meta,
                    "no camera heading: the photo has no drone-dji:GimbalYawDegree or "
                    "FlightYawDegree; pass --yaw (degrees clockwise from north)",
                )
            )
        yaw = y[0]
        attitude.append(f"yaw {y[1]}")
    if o.pitch is not None:
        pitch = o.pitch
        attitude.append("pitch --pitch")
    else:
        p = _dji_number(meta, "GimbalPitchDegree")
        if p is None:
            raise PoseError(
                _with_problems(
                    meta,
                    "no camera pitch: the photo has no drone-dji:GimbalPitchDegree; "
                    "pass --pitch (-90 = straight down)",
                )
            )
        pitch = p[0]
        attitude.append(f"pitch {p[1]}")
    if o.roll is not None:
        roll = o.roll
        attitude.append("roll --roll")
    else:
        r = _dji_number(meta, "GimbalRollDegree")
        roll = r[0] if r else 0.0
        attitude.append(f"roll {r[1]}" if r else "roll assumed 0 (stabilised gimbal)")
    sources["attitude"] = ", ".join(attitude)

    w, h = meta.width, meta.height
    cx, cy = w / 2.0, h / 2.0
    cal = _dji_number(meta, "CalibratedFocalLength")
    if o.focal_px is not None:
        focal = o.focal_px
        sources["intrinsics"] = "--focal-px"
    elif o.camera is not None:
        prof = profile_by_name(o.camera)
        focal = prof.focal_px(w)
        sources["intrinsics"] = f"--camera {prof.name} (nominal)"
    elif cal is not None:
        focal = cal[0]
        ox, oy = _dji_number(meta, "CalibratedOpticalCenterX"), _dji_number(meta, "CalibratedOpticalCenterY")
        if ox is not None and oy is not None:
            cx, cy = ox[0], oy[0]
        sources["intrinsics"] = "XMP drone-dji:CalibratedFocalLength"
    elif profile_for_model(meta.model) is not None:
        prof = profile_for_model(meta.model)
        focal = prof.focal_px(w)
        sources["intrinsics"] = f"camera profile {prof.name} for EXIF Model {meta.model} (nominal)"
    elif meta.focal_35mm:
        focal = meta.focal_35mm / 43.2666 * math.hypot(w, h)
        sources["intrinsics"] = f"EXIF FocalLengthIn35mmFilm {meta.focal_35mm:g} mm"
    else:
        raise PoseError(
            f"no focal length: the photo has no drone-dji:CalibratedFocalLength, no known EXIF Model "
            f"({meta.model or 'none'}) and no FocalLengthIn35mmFilm; pass --focal-px or --camera"
        )

    return CameraPose(lat, lon, agl, rotation_ypr(yaw, pitch, roll), focal, cx, cy, w, h, abs_alt_m, sources)


def pose_from_photo(path: str | os.PathLike, overrides: PoseOverrides | None = None) -> CameraPose:
    """The pose of one photo file (see pose_from_metadata for the rules).

    Raises:
        PoseError: The photo has no usable pose; the message is one line.
    """
    return pose_from_metadata(read_photo_metadata(Path(path)), overrides)
