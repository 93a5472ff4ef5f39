"""Test photos as a DJI drone writes them: EXIF GPS through Pillow, drone-dji XMP spliced in as APP1."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def dji_xmp(values: dict, as_elements: bool = False) -> bytes:
    """An XMP packet as DJI writes it: drone-dji values as attributes of rdf:Description (or as elements)."""
    if as_elements:
        body = "".join(f"<drone-dji:{k}>{v}</drone-dji:{k}>" for k, v in values.items())
        desc = f'<rdf:Description rdf:about="DJI Meta Data" xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/">{body}</rdf:Description>'
    else:
        attrs = "\n   ".join(f'drone-dji:{k}="{v}"' for k, v in values.items())
        desc = (
            f'<rdf:Description rdf:about="DJI Meta Data" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"\n'
            f'   xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"\n   {attrs}>\n  </rdf:Description>'
        )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  {desc}\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


def _dms(deg: float) -> tuple:
    deg = abs(deg)
    d = int(deg)
    m = int((deg - d) * 60)
    s = Fraction((deg - d - m / 60) * 3600).limit_denominator(10**7)
    R = TiffImagePlugin.IFDRational
    return (R(d), R(m), R(s.numerator, s.denominator))


def splice_app1(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment after SOI and any APP0/APP1 segments already there."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("expected a JPEG (SOI marker)")
    pos = 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] in (0xE0, 0xE1):
        pos += 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
    return jpeg[:pos] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[pos:]


def write_photo(
    path,
    image_bgr: np.ndarray,
    lat: float | None = None,
    lon: float | None = None,
    gps_alt: float | None = None,
    model: str | None = "FC220",
    focal_35mm: float | None = None,
    xmp: dict | None = None,
    xmp_as_elements: bool = False,
    raw_xmp: bytes | None = None,
):
    """Write a JPEG with EXIF (Make, Model, GPS, FocalLengthIn35mmFilm) and a drone-dji XMP packet."""
    im = Image.fromarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    if model is not None:
        exif[0x010F] = "DJI"
        exif[0x0110] = model
    gps: dict = {}
    if lat is not None and lon is not None:
        gps.update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W", 4: _dms(lon)})
    if gps_alt is not None:
        f = Fraction(abs(gps_alt)).limit_denominator(1000)
        gps.update(
            {
                5: b"\x01" if gps_alt < 0 else b"\x00",
                6: TiffImagePlugin.IFDRational(f.numerator, f.denominator),
            }
        )
    if gps:
        exif[0x8825] = gps
    if focal_35mm is not None:
        exif[0x8769] = {0xA405: int(focal_35mm)}
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    data = buf.getvalue()
    if raw_xmp is not None or xmp is not None:
        packet = raw_xmp if raw_xmp is not None else dji_xmp(xmp, xmp_as_elements)
        data = splice_app1(data, XMP_HEADER + packet)
    with open(path, "wb") as f:
        f.write(data)
    return path


def dji_values(
    rel_alt: float = 100.0,
    abs_alt: float | None = None,
    yaw: float = 0.0,
    pitch: float = -90.0,
    roll: float = 0.0,
    focal_px: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
) -> dict:
    """drone-dji values formatted the way DJI writes them ("+100.00")."""
    v = {
        "RelativeAltitude": f"{rel_alt:+.2f}",
        "GimbalRollDegree": f"{roll:+.2f}",
        "GimbalYawDegree": f"{yaw:+.2f}",
        "GimbalPitchDegree": f"{pitch:+.2f}",
        "FlightYawDegree": f"{yaw + 3:+.2f}",
    }
    if abs_alt is not None:
        v["AbsoluteAltitude"] = f"{abs_alt:+.2f}"
    if focal_px is not None:
        v["CalibratedFocalLength"] = f"{focal_px:.3f}"
    if cx is not None and cy is not None:
        v["CalibratedOpticalCenterX"] = f"{cx:.3f}"
        v["CalibratedOpticalCenterY"] = f"{cy:.3f}"
    return v
