"""Test photos as DJI drones write them: EXIF through Pillow, drone-dji XMP spliced in as APP1 (standard
or extended) or stored in EXIF tag 700, and the maker notes of older DJI firmware."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXT_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"


def dji_xmp(values: dict, as_elements: bool = False, extended_guid: str | None = None) -> bytes:
    """An XMP packet as DJI writes it: drone-dji values as attributes of rdf:Description (or as elements).

    extended_guid: name an extended XMP packet (xmpNote:HasExtendedXMP), as a standard packet does.
    """
    note = (
        ""
        if extended_guid is None
        else f' xmlns:xmpNote="http://ns.adobe.com/xmp/note/" xmpNote:HasExtendedXMP="{extended_guid}"'
    )
    if as_elements:
        body = "".join(f"<drone-dji:{k}>{v}</drone-dji:{k}>" for k, v in values.items())
        desc = f'<rdf:Description rdf:about="DJI Meta Data"{note} xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/">{body}</rdf:Description>'
    else:
        attrs = "\n   ".join(f'drone-dji:{k}="{v}"' for k, v in values.items())
        desc = (
            f'<rdf:Description rdf:about="DJI Meta Data"{note} xmlns:tiff="http://ns.adobe.com/tiff/1.0/"\n'
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


def extended_xmp_segments(packet: bytes, guid: str, chunk: int) -> list[bytes]:
    """APP1 payloads of an extended XMP packet: header, GUID, full length and offset, then up to `chunk` bytes."""
    return [
        XMP_EXT_HEADER
        + guid.encode("ascii")
        + struct.pack(">II", len(packet), off)
        + packet[off : off + chunk]
        for off in range(0, len(packet), chunk)
    ]


def dji_maker_note(values: dict, byte_order: str = "<", extra: bool = True) -> bytes:
    """A DJI maker note as Phantom 3 era firmware writes it: an IFD without TIFF header.

    values: exiftool's tag names (Pitch, Yaw, Roll, CameraPitch, CameraYaw, CameraRoll, SpeedX/Y/Z) ->
    numbers, stored as inline float32; `extra` adds tag 0x01 Make "DJI" and 0x02 (four bytes), as DJI does.
    """
    tags = {"SpeedX": 3, "SpeedY": 4, "SpeedZ": 5, "Pitch": 6, "Yaw": 7, "Roll": 8}
    tags.update({"CameraPitch": 9, "CameraYaw": 10, "CameraRoll": 11})
    entries = []
    if extra:
        entries.append(struct.pack(byte_order + "HHI", 1, 2, 4) + b"DJI\x00")  # ASCII, inline
        entries.append(struct.pack(byte_order + "HHI", 2, 1, 4) + bytes([1, 1, 0, 0]))  # BYTE[4]
    for name, v in sorted(values.items(), key=lambda kv: tags[kv[0]]):
        entries.append(struct.pack(byte_order + "HHIf", tags[name], 11, 1, v))
    return struct.pack(byte_order + "H", len(entries)) + b"".join(entries) + struct.pack(byte_order + "I", 0)


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
    make: str = "DJI",
    ifd0_xmp: bytes | None = None,
    exif_ifd_xmp: bytes | None = None,
    extended_xmp: list[bytes] | None = None,
    maker_note: bytes | None = None,
    focal_mm: float | None = None,
    focal_plane_x_res: float | None = None,
    focal_plane_unit: int | None = None,
):
    """Write a JPEG with EXIF (Make, Model, GPS, focal lengths, MakerNote, XMLPacket) and drone-dji XMP.

    xmp / raw_xmp go into a standard APP1 XMP segment, extended_xmp (payloads from
    extended_xmp_segments) into APP1 segments after it, ifd0_xmp / exif_ifd_xmp into EXIF tag 700.
    """
    im = Image.fromarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    if model is not None:
        exif[0x010F] = make
        exif[0x0110] = model
    if ifd0_xmp is not None:
        exif[0x02BC] = ifd0_xmp
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
    sub: dict = {}
    if focal_35mm is not None:
        sub[0xA405] = int(focal_35mm)
    if focal_mm is not None:
        f = Fraction(focal_mm).limit_denominator(1000)
        sub[0x920A] = TiffImagePlugin.IFDRational(f.numerator, f.denominator)
    if focal_plane_x_res is not None:
        f = Fraction(focal_plane_x_res).limit_denominator(10**6)
        sub[0xA20E] = TiffImagePlugin.IFDRational(f.numerator, f.denominator)
    if focal_plane_unit is not None:
        sub[0xA210] = focal_plane_unit
    if maker_note is not None:
        sub[0x927C] = maker_note
    if exif_ifd_xmp is not None:
        sub[0x02BC] = exif_ifd_xmp
    if sub:
        exif[0x8769] = sub
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    data = buf.getvalue()
    if raw_xmp is not None or xmp is not None:
        packet = raw_xmp if raw_xmp is not None else dji_xmp(xmp, xmp_as_elements)
        data = splice_app1(data, XMP_HEADER + packet)
    for seg in extended_xmp or ():
        data = splice_app1(data, seg)
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
