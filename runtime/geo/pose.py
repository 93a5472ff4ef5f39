"""Where the camera was and where it looked: the pose of one photo.

The pose comes from the photo itself (EXIF GPS and focal lengths, DJI's ``drone-dji:`` XMP wherever
the photo keeps it, and the DJI maker notes of older firmware, read with Pillow), from a bundled
camera profile for the intrinsics a photo lacks, and from flags, which override everything. Angles
follow DJI and MAVLink: north-east-down (NED), yaw-pitch-roll applied as Rz(yaw) * Ry(pitch) *
Rx(roll) to the camera frame (forward, right, down), where "forward" is the optical axis, "right" the
image's +x and "down" the image's +y. Pitch -90 looks straight down with the photo's top towards the
heading.

Height above ground: DJI's RelativeAltitude is the height above the take-off point, not above the
ground under the camera. Unless told otherwise the ground is taken to be at the take-off height;
--ground-above-takeoff, --ground-alt (ground elevation, compared with the absolute altitude) and
--height-above-ground say better.
"""

from __future__ import annotations

import math
import os
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .profiles import FULL_FRAME_DIAGONAL_MM, profile_by_name, profile_for_model

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXT_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
EXIF_GPS_IFD = 0x8825
EXIF_IFD = 0x8769
TAG_MAKE, TAG_MODEL = 0x010F, 0x0110
TAG_XMP = 0x02BC  # XMLPacket, in IFD0 (TIFF) or the Exif sub-IFD
TAG_FOCAL_35MM = 0xA405
TAG_FOCAL_LENGTH = 0x920A
TAG_FOCAL_PLANE_X_RES, TAG_FOCAL_PLANE_UNIT = 0xA20E, 0xA210
TAG_MAKER_NOTE = 0x927C

# Where a photo may carry XMP, in the order of precedence when two places disagree: the APP1
# segment is where the XMP specification (part 3) puts XMP in a JPEG and what editing tools
# rewrite; its extended part continues it; other formats keep one packet of their own; tag 700 is
# the TIFF place (also found in JPEG EXIF, e.g. DJI's XT2), read for the values the others lack.
XMP_APP1 = "APP1 XMP"
XMP_APP1_EXTENDED = "APP1 extended XMP"
XMP_IFD0 = "EXIF IFD0 XMLPacket (tag 700)"
XMP_EXIF_IFD = "EXIF Exif-IFD XMLPacket (tag 700)"
XMP_FILE = "XMP packet of the file"  # formats other than JPEG and TIFF (PNG iTXt, WebP XMP chunk)
XMP_PLACES = (XMP_APP1, XMP_APP1_EXTENDED, XMP_FILE, XMP_IFD0, XMP_EXIF_IFD)

# DJI maker notes (older firmware, e.g. Phantom 3 / Inspire 1): an IFD without a TIFF header, tags as
# in exiftool's Image::ExifTool::DJI::Main table; every value read here is one inline float32.
DJI_MAKER_NOTE_TAGS = {
    0x03: "SpeedX",
    0x04: "SpeedY",
    0x05: "SpeedZ",
    0x06: "Pitch",
    0x07: "Yaw",
    0x08: "Roll",
    0x09: "CameraPitch",
    0x0A: "CameraYaw",
    0x0B: "CameraRoll",
}
# FocalPlaneResolutionUnit: 2 inch (the EXIF default), 3 cm; 4 mm and 5 um are DNG's additions.
FOCAL_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}


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
        focal_mm: EXIF FocalLength in millimetres, or None.
        focal_plane_px_per_mm: EXIF FocalPlaneXResolution in pixels per millimetre, or None.
        dji_places: Where each drone-dji value was read (one of XMP_PLACES), by name.
        xmp_places: The places whose XMP carries drone-dji values, in the order of XMP_PLACES.
        xmp_conflicts: One line per drone-dji value that two places give differently, naming the
            one used.
        maker_note: DJI maker-note values (degrees, m/s) by exiftool's tag name, e.g. "Yaw".
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
    focal_mm: float | None = None
    focal_plane_px_per_mm: float | None = None
    dji_places: Mapping[str, str] = field(default_factory=dict)
    xmp_conflicts: tuple[str, ...] = ()
    xmp_places: tuple[str, ...] = ()
    maker_note: Mapping[str, float] = field(default_factory=dict)


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


def _rational(v: Any) -> float:
    f = float(v)  # IFDRational, int or float
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, found {v!r}")
    return f


def _dms(value: Any, ref: object, positive: str, name: str) -> float:
    try:
        d, m, s = (_rational(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"EXIF {name}: expected (degrees, minutes, seconds), found {value!r}") from exc
    deg = d + m / 60.0 + s / 3600.0
    ref_s = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref or positive)
    ref_s = ref_s.strip("\x00 ").upper() or positive
    return -deg if ref_s != positive else deg


def _as_bytes(value: object) -> bytes | None:
    """A tag value Pillow returns for an XMLPacket or MakerNote: bytes, text or a tuple of byte values."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        return bytes(value)
    return None


def _extended_xmp(segments: list[bytes], wanted_guid: str | None, problems: list[str]) -> bytes | None:
    """Reassemble extended XMP: each APP1 chunk is GUID (32) + full length (4) + offset (4) + data.

    The standard packet names its extension's GUID (xmpNote:HasExtendedXMP); chunks of another GUID
    are left out. Without that name, a single complete extension is used.
    """
    chunks: dict[str, list[tuple[int, int, bytes]]] = {}
    for seg in segments:
        body = seg[len(XMP_EXT_HEADER) :]
        if len(body) < 40:
            problems.append(f"extended XMP: expected a 40-byte chunk header, found {len(body)} bytes")
            continue
        guid = body[:32].decode("ascii", "replace")
        total, offset = struct.unpack(">II", body[32:40])
        chunks.setdefault(guid, []).append((offset, total, body[40:]))
    if not chunks:
        return None
    if wanted_guid is not None:
        if wanted_guid not in chunks:
            problems.append(f"extended XMP: expected chunks of GUID {wanted_guid}, found {', '.join(chunks)}")
            return None
        guid = wanted_guid
    elif len(chunks) == 1:
        guid = next(iter(chunks))
    else:
        problems.append(f"extended XMP: expected one GUID, found {len(chunks)} and no xmpNote:HasExtendedXMP")
        return None
    parts = sorted(chunks[guid])
    total = parts[0][1]
    data = bytearray()
    for offset, t, chunk in parts:
        if t != total or offset != len(data):
            problems.append(
                f"extended XMP {guid}: expected a chunk at offset {len(data)} of {total} bytes, "
                f"found one at {offset} of {t}"
            )
            return None
        data += chunk
    if len(data) != total:
        problems.append(f"extended XMP {guid}: expected {total} bytes, found {len(data)}")
        return None
    return bytes(data)


def _has_extended_guid(packet: bytes) -> str | None:
    m = re.search(
        rb'HasExtendedXMP\s*=\s*["\']([0-9A-Fa-f]{32})["\']|HasExtendedXMP>\s*([0-9A-Fa-f]{32})', packet
    )
    return None if m is None else (m.group(1) or m.group(2)).decode("ascii")


def _xmp_packets(
    im: object, exif: Mapping, exif_ifd: Mapping, problems: list[str]
) -> list[tuple[str, bytes]]:
    """Every XMP packet of the photo as (place, packet), in the order of XMP_PLACES."""
    applist = [data for marker, data in getattr(im, "applist", []) if marker == "APP1"]
    standard = [data[len(XMP_HEADER) :] for data in applist if data.startswith(XMP_HEADER)]
    out = [(XMP_APP1, seg) for seg in standard]
    info_xmp = getattr(im, "info", {}).get("xmp")
    # PNG and WebP keep their packet in info; a TIFF's is its IFD0 tag 700, read below
    if not applist and getattr(im, "format", None) != "TIFF" and isinstance(info_xmp, (bytes, bytearray)):
        out.append((XMP_FILE, bytes(info_xmp)))
    guid = next((g for g in map(_has_extended_guid, standard) if g is not None), None)
    ext = _extended_xmp([d for d in applist if d.startswith(XMP_EXT_HEADER)], guid, problems)
    if ext is not None:
        out.append((XMP_APP1_EXTENDED, ext))
    for place, ifd in ((XMP_IFD0, exif), (XMP_EXIF_IFD, exif_ifd)):
        if TAG_XMP in ifd:
            packet = _as_bytes(ifd[TAG_XMP])
            if packet is None:
                problems.append(f"{place}: expected bytes, found {type(ifd[TAG_XMP]).__name__}")
            else:
                out.append((place, packet))
    return out


def _same_value(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def _merge_dji(
    packets: list[tuple[str, bytes]], problems: list[str]
) -> tuple[dict[str, str], dict[str, str], list[str], set[str]]:
    """drone-dji values of all packets, the first place in XMP_PLACES order winning each name."""
    dji: dict[str, str] = {}
    places: dict[str, str] = {}
    conflicts: list[str] = []
    carrying: set[str] = set()
    broken: list[str] = []
    for place, packet in packets:
        try:
            values = parse_dji_xmp(packet)
        except ValueError as exc:
            broken.append(f"{place}: {exc}")
            continue
        if values:
            carrying.add(place)
        for name, value in values.items():
            if name not in dji:
                dji[name], places[name] = value, place
            elif not _same_value(dji[name], value):
                conflicts.append(
                    f"drone-dji:{name} {dji[name]!r} from {places[name]} used over {value!r} from {place}"
                )
    if broken:  # said once, counted: a photo may carry hundreds of broken packets
        problems.append(
            broken[0] if len(broken) == 1 else f"{broken[0]} (the first of {len(broken)} broken XMP packets)"
        )
    return dji, places, conflicts, carrying


def parse_dji_maker_note(data: bytes, byte_order: str = "<") -> dict[str, float]:
    """The attitude and speed values of a DJI maker note: a TIFF IFD without header.

    The byte order is the EXIF's own when the entry count is plausible that way, else the other
    (exiftool guesses it the same way). Every angle and speed is one inline float32; a known tag
    stored otherwise, or not finite, is NaN, so that it is reported as unusable rather than missing.

    Raises:
        ValueError: The bytes are not an IFD in either byte order.
    """
    for order in (byte_order, ">" if byte_order == "<" else "<"):
        if len(data) < 2:
            break
        (n,) = struct.unpack(order + "H", data[:2])
        if not 0 < n <= 256 or len(data) < 2 + 12 * n:
            continue
        entries = [struct.unpack(order + "HHI4s", data[2 + 12 * i : 14 + 12 * i]) for i in range(n)]
        if not all(1 <= typ <= 13 for _, typ, _, _ in entries):
            continue
        out: dict[str, float] = {}
        for tag, typ, count, raw in entries:
            name = DJI_MAKER_NOTE_TAGS.get(tag)
            if name is not None:
                is_float = typ == 11 and count == 1  # FLOAT
                out[name] = float(struct.unpack(order + "f", raw)[0]) if is_float else math.nan
        return out
    raise ValueError(
        f"DJI MakerNote: expected an IFD (entry count, 12-byte entries), found {data[:16].hex()}"
    )


def _exif_number(ifd: Mapping, tag: int, name: str, problems: list[str]) -> float | None:
    if tag not in ifd:
        return None
    try:
        v = _rational(ifd[tag])
    except (TypeError, ValueError, ZeroDivisionError):
        problems.append(f"EXIF {name}: expected a number, found {ifd[tag]!r}")
        return None
    return v


def read_photo_metadata(path: str | os.PathLike) -> PhotoMetadata:
    """Read a photo's EXIF, DJI XMP (every place it may be) and DJI maker notes with Pillow, without decoding its pixels.

    Raises:
        PoseError: The file cannot be opened as an image by Pillow.
    """
    from PIL import Image, UnidentifiedImageError

    problems: list[str] = []
    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        # Pillow refuses to open a photo of more than twice its MAX_IMAGE_PIXELS even for its
        # metadata; that is this photo's missing pose, never the end of the run or of its detections
        raise PoseError(f"cannot read the photo's metadata with Pillow: {str(exc).splitlines()[0]}") from exc
    with im:
        width, height = im.size
        exif = im.getexif()
        exif_ifd = exif.get_ifd(EXIF_IFD)
        make = str(exif.get(TAG_MAKE) or "").strip("\x00 ") or None
        model = str(exif.get(TAG_MODEL) or "").strip("\x00 ") or None
        gps = gps_alt = None
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
        focal_35mm = _exif_number(exif_ifd, TAG_FOCAL_35MM, "FocalLengthIn35mmFilm", problems)
        focal_mm = _exif_number(exif_ifd, TAG_FOCAL_LENGTH, "FocalLength", problems)
        px_per_mm = None
        res = _exif_number(exif_ifd, TAG_FOCAL_PLANE_X_RES, "FocalPlaneXResolution", problems)
        if res is not None and res > 0:
            unit = exif_ifd.get(TAG_FOCAL_PLANE_UNIT, 2)
            if unit in FOCAL_PLANE_UNIT_MM:
                px_per_mm = res / FOCAL_PLANE_UNIT_MM[unit]
            else:
                problems.append(f"EXIF FocalPlaneResolutionUnit: expected 2, 3, 4 or 5, found {unit!r}")
        dji, places, conflicts, xmp_places = _merge_dji(_xmp_packets(im, exif, exif_ifd, problems), problems)
        maker_note: dict[str, float] = {}
        note = _as_bytes(exif_ifd.get(TAG_MAKER_NOTE))
        # exiftool's condition for DJI's IFD-style notes; "[ae_dbg_info:" and "DJI..." notes are other formats
        if (
            make == "DJI"
            and note
            and not note.startswith((b"[ae_dbg_info:", b"DJI"))
            and note[3:8] != b"@AMBA"
        ):
            exif_raw = getattr(im, "info", {}).get("exif", b"")
            order = ">" if exif_raw[:8] == b"Exif\x00\x00MM" or exif_raw[:2] == b"MM" else "<"
            try:
                maker_note = parse_dji_maker_note(note, order)
            except ValueError as exc:
                problems.append(str(exc))
    return PhotoMetadata(
        width,
        height,
        make,
        model,
        gps,
        gps_alt,
        focal_35mm or None,
        dji,
        tuple(problems),
        focal_mm or None,
        px_per_mm,
        places,
        tuple(conflicts),
        tuple(pl for pl in XMP_PLACES if pl in xmp_places),
        maker_note,
    )


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


def _missing(meta: PhotoMetadata, what: str) -> str:
    """`what` (e.g. "drone-dji:RelativeAltitude") is in none of the photo's readable metadata; with
    unreadable parts (meta.problems, added to the message) the photo may still hold it there."""
    if meta.problems:
        return f"the photo's readable metadata has no {what}"
    return f"the photo has no {what}"


def _gps_alt_ambiguous(meta: PhotoMetadata) -> bool:
    """DJI firmware without drone-dji XMP (Phantom 3 / Inspire 1 era) writes the height above take-off
    into GPSAltitude, newer firmware the altitude above sea level: without XMP it cannot be told which."""
    return meta.make == "DJI" and not meta.dji and meta.gps_alt is not None


def _maker_note(meta: PhotoMetadata, name: str) -> tuple[float, str] | None:
    """A DJI maker-note value as (value, source), None when the note lacks it.

    Raises:
        PoseError: The note has the tag, but not as one finite float32 (parse_dji_maker_note gives NaN).
    """
    if name not in meta.maker_note:
        return None
    v = meta.maker_note[name]
    if not math.isfinite(v):
        raise PoseError(f"DJI MakerNote {name}: expected one finite float32, found an unusable value")
    return v, f"DJI MakerNote {name}"


def focal_px_from_35mm(focal_35mm: float, width: int, height: int) -> tuple[float, str]:
    """Focal length in pixels from a 35 mm-equivalent focal length, and the frame it was taken over.

    The equivalent scales the sensor's diagonal to the 43.27 mm of a 36 x 24 mm frame. DJI writes
    the equivalent of the whole 4:3 sensor in 16:9 photos too, which are that sensor cropped at the
    same width: a photo wider than 3:2 is taken as the 4:3 frame of its width. A 4:3 or 3:2 photo
    is its sensor's whole frame, so its own diagonal is used.
    """
    long_side, short_side = max(width, height), min(width, height)
    if long_side > 1.51 * short_side:
        diag = math.hypot(long_side, long_side * 0.75)
        frame = f"the 4:3 sensor frame of the photo's width ({long_side}x{round(long_side * 0.75)})"
    else:
        diag = math.hypot(width, height)
        frame = "the photo's diagonal"
    return focal_35mm / FULL_FRAME_DIAGONAL_MM * diag, frame


def pose_from_metadata(meta: PhotoMetadata, overrides: PoseOverrides | None = None) -> CameraPose:  # noqa: C901 - each pose quantity is taken from the first of its sources that has it, with that source named
    """Combine what the photo says with the flags into one pose.

    Order, first found wins: position EXIF GPS, then drone-dji:GpsLatitude/GpsLongitude; height
    above ground --height-above-ground, then absolute altitude (drone-dji:AbsoluteAltitude, then
    EXIF GPSAltitude) minus --ground-alt, then RelativeAltitude minus --ground-above-takeoff;
    attitude --yaw/--pitch/--roll, then the gimbal's angles (yaw falls back to FlightYawDegree),
    then DJI maker notes (the aircraft's Yaw, CameraPitch, CameraRoll), roll to 0 when a pitch is
    known; focal length --focal-px, then --camera, then the photo's CalibratedFocalLength, then EXIF
    FocalLength x FocalPlaneXResolution, then the profile of its EXIF Model, then EXIF
    FocalLengthIn35mmFilm (see focal_px_from_35mm). drone-dji values come from the first place in
    XMP_PLACES that has them; sources["xmp"] names the places and any value they disagree on.

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
                    "no GPS position: the photo has neither EXIF GPSLatitude/GPSLongitude nor drone-dji:"
                    "GpsLatitude/GpsLongitude" + (" in its readable metadata" if meta.problems else ""),
                )
            )
        lat, lon = la[0], lo[0]
        sources["position"] = f"XMP drone-dji:{la[1]}/{lo[1]}"
    if lat == 0.0 and lon == 0.0:
        raise PoseError("GPS position is 0, 0: the aircraft had no satellite fix when the photo was taken")

    ambiguous = _gps_alt_ambiguous(meta)
    abs_alt = _dji_number(meta, "AbsoluteAltitude")
    abs_alt_m, abs_src = (
        (abs_alt[0], "drone-dji:AbsoluteAltitude") if abs_alt else (meta.gps_alt, "EXIF GPSAltitude")
    )
    if o.height_above_ground is not None:
        agl = o.height_above_ground
        sources["height"] = "--height-above-ground"
        if ambiguous:
            abs_alt_m = None  # above take-off or above sea level: not reported as an altitude
    elif o.ground_alt is not None:
        if abs_alt_m is None:
            raise PoseError(
                "--ground-alt needs the camera's absolute altitude, and the photo has neither "
                "drone-dji:AbsoluteAltitude nor EXIF GPSAltitude; pass --height-above-ground"
            )
        agl = abs_alt_m - o.ground_alt
        sources["height"] = f"{abs_src} {abs_alt_m:.2f} m - --ground-alt {o.ground_alt:.2f} m" + (
            " (GPSAltitude taken as above sea level, as --ground-alt says)" if ambiguous else ""
        )
    else:
        rel = _dji_number(meta, "RelativeAltitude")
        if rel is None:
            if ambiguous:
                raise PoseError(
                    _with_problems(
                        meta,
                        "no height above ground: the photo has no drone-dji XMP and its EXIF GPSAltitude "
                        f"({meta.gps_alt:.2f} m) is ambiguous: DJI firmware without XMP writes the height "
                        "above the take-off point there, newer firmware the altitude above sea level; "
                        "pass --height-above-ground, or --ground-alt if GPSAltitude is above sea level",
                    )
                )
            raise PoseError(
                _with_problems(
                    meta,
                    "no height above ground: "
                    + _missing(meta, "drone-dji:RelativeAltitude")
                    + "; pass --height-above-ground, or --ground-alt",
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
        # the aircraft's heading, not CameraYaw: on the firmwares that write maker notes the photo's
        # top followed the aircraft's Yaw
        y = _dji_number(meta, "GimbalYawDegree", "FlightYawDegree") or _maker_note(meta, "Yaw")
        if y is None:
            raise PoseError(
                _with_problems(
                    meta,
                    "no camera heading: "
                    + _missing(meta, "drone-dji:GimbalYawDegree, FlightYawDegree or DJI MakerNote Yaw")
                    + "; pass --yaw (degrees clockwise from north)",
                )
            )
        yaw = y[0]
        attitude.append(f"yaw {y[1]}")
    if o.pitch is not None:
        pitch = o.pitch
        attitude.append("pitch --pitch")
    else:
        p = _dji_number(meta, "GimbalPitchDegree") or _maker_note(meta, "CameraPitch")
        if p is None:
            raise PoseError(
                _with_problems(
                    meta,
                    "no camera pitch: "
                    + _missing(meta, "drone-dji:GimbalPitchDegree or DJI MakerNote CameraPitch")
                    + "; pass --pitch (-90 = straight down)",
                )
            )
        pitch = p[0]
        attitude.append(f"pitch {p[1]}")
    if o.roll is not None:
        roll = o.roll
        attitude.append("roll --roll")
    else:
        r = _dji_number(meta, "GimbalRollDegree") or _maker_note(meta, "CameraRoll")
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
    elif meta.focal_mm is not None and meta.focal_plane_px_per_mm is not None:
        focal = meta.focal_mm * meta.focal_plane_px_per_mm
        sources["intrinsics"] = (
            f"EXIF FocalLength {meta.focal_mm:g} mm x FocalPlaneXResolution {meta.focal_plane_px_per_mm:.2f} px/mm"
        )
    elif (model_prof := profile_for_model(meta.model)) is not None:
        focal = model_prof.focal_px(w)
        sources["intrinsics"] = f"camera profile {model_prof.name} for EXIF Model {meta.model} (nominal)"
    elif meta.focal_35mm:
        focal, frame = focal_px_from_35mm(meta.focal_35mm, w, h)
        sources["intrinsics"] = f"EXIF FocalLengthIn35mmFilm {meta.focal_35mm:g} mm over {frame}"
    else:
        raise PoseError(
            f"no focal length: the photo has no drone-dji:CalibratedFocalLength, no EXIF FocalLength with "
            f"FocalPlaneXResolution, no known EXIF Model ({meta.model or 'none'}) and no "
            f"FocalLengthIn35mmFilm; pass --focal-px or --camera"
        )

    if meta.xmp_places:
        sources["xmp"] = (
            "drone-dji from "
            + ", ".join(meta.xmp_places)
            + ("; " + "; ".join(meta.xmp_conflicts) if meta.xmp_conflicts else "")
        )
    return CameraPose(lat, lon, agl, rotation_ypr(yaw, pitch, roll), focal, cx, cy, w, h, abs_alt_m, sources)


def pose_from_photo(path: str | os.PathLike, overrides: PoseOverrides | None = None) -> CameraPose:
    """The pose of one photo file (see pose_from_metadata for the rules).

    Raises:
        PoseError: The photo has no usable pose; the message is one line.
    """
    return pose_from_metadata(read_photo_metadata(Path(path)), overrides)


_EXIF_TIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
_FRAME_TIME = re.compile(r"#t=(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)Z$")


def photo_time(path: str | os.PathLike, name: str = "") -> float | None:
    """When the photo was taken, as unix seconds, or None when it does not say in a way that places it.

    The GPS date and time (UTC) first; else DateTimeOriginal with its OffsetTimeOriginal (a local time
    without its offset could be any of 26 hours: None); a live video frame named ``SRC#t=ISO-UTC``
    by the daemon has its grab time in its name.
    """
    from datetime import datetime, timedelta, timezone

    m = _FRAME_TIME.search(name)
    if m:
        return datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            gps = exif.get_ifd(EXIF_GPS_IFD)
            sub = exif.get_ifd(EXIF_IFD)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return None
    try:
        if 29 in gps and 7 in gps:  # GPSDateStamp "YYYY:MM:DD", GPSTimeStamp (h, m, s) rationals, UTC
            y, mo, d = (int(v) for v in str(gps[29]).strip("\x00 ").split(":"))
            h, mi, s = (float(v) for v in gps[7])
            return (
                datetime(y, mo, d, tzinfo=timezone.utc) + timedelta(hours=h, minutes=mi, seconds=s)
            ).timestamp()
        when = _EXIF_TIME.match(str(sub.get(0x9003, "")).strip("\x00 "))  # DateTimeOriginal
        offset = _EXIF_OFFSET.match(str(sub.get(0x9011, "")).strip("\x00 "))  # OffsetTimeOriginal
        if when and offset:
            sign = 1 if offset.group(1) == "+" else -1
            tz = timezone(sign * timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3))))
            y, mo, d, h, mi, sec = (int(v) for v in when.groups())
            return datetime(y, mo, d, h, mi, sec, tzinfo=tz).timestamp()
    except (ValueError, TypeError, ZeroDivisionError):
        return None
    return None
