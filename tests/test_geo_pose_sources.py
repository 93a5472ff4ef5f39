"""The pose read wherever a photo writes it: XMP in APP1 (standard and extended) and in EXIF tag 700,
focal lengths from the best source a photo has, and the maker notes of older DJI firmware."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from geo_photos import dji_maker_note, dji_values, dji_xmp, extended_xmp_segments, write_photo

from edgetile.runtime.geo import PoseError, PoseOverrides, pose_from_photo, read_photo_metadata
from edgetile.runtime.geo.pose import focal_px_from_35mm, parse_dji_maker_note
from edgetile.runtime.geo.profiles import profile_by_name

LAT, LON = 46.5012345, 7.9812345
THERMAL = np.full((512, 640, 3), 90, np.uint8)  # a Zenmuse XT2 thermal frame
VALUES = dji_values(rel_alt=80.0, abs_alt=250.0, yaw=30.0, pitch=-60.0, roll=1.5)
GUID = "0123456789ABCDEF0123456789ABCDEF"


def xt2(tmp_path, name="xt2.jpg", **kw):
    kw.setdefault("lat", LAT)
    kw.setdefault("lon", LON)
    kw.setdefault("model", "XT2")
    return write_photo(tmp_path / name, THERMAL, **kw)


XT2_FOCAL = PoseOverrides(focal_px=1000.0)  # no CalibratedFocalLength and no profile for the XT2


@pytest.mark.parametrize(
    "where,place", [("exif_ifd_xmp", "EXIF Exif-IFD XMLPacket"), ("ifd0_xmp", "EXIF IFD0 XMLPacket")]
)
def test_xmp_in_exif_tag_700(tmp_path, where, place):
    path = xt2(tmp_path, **{where: dji_xmp(VALUES)})
    meta = read_photo_metadata(path)
    assert meta.dji["RelativeAltitude"] == "+80.00" and meta.dji_places["RelativeAltitude"].startswith(place)
    p = pose_from_photo(path, XT2_FOCAL)
    assert p.agl_m == 80.0 and p.ypr == pytest.approx((30.0, -60.0, 1.5))
    assert p.sources["xmp"] == f"drone-dji from {place} (tag 700)"


def test_extended_xmp_reassembled_from_several_app1_segments(tmp_path):
    ext = dji_xmp(VALUES)
    segs = extended_xmp_segments(ext, GUID, chunk=len(ext) // 3 + 1)
    assert len(segs) == 3
    stray = extended_xmp_segments(dji_xmp({"RelativeAltitude": "+5.00"}), "F" * 32, chunk=10_000)
    path = xt2(
        tmp_path,
        raw_xmp=dji_xmp({"RtkFlag": "0"}, extended_guid=GUID),
        extended_xmp=[segs[2], segs[0], *stray, segs[1]],  # chunks out of order; another GUID's left out
    )
    p = pose_from_photo(path, XT2_FOCAL)
    assert p.agl_m == 80.0 and p.ypr == pytest.approx((30.0, -60.0, 1.5))
    assert p.sources["xmp"] == "drone-dji from APP1 XMP, APP1 extended XMP"


def test_incomplete_extended_xmp_is_a_problem_not_a_missing_tag(tmp_path):
    ext = dji_xmp(VALUES)
    segs = extended_xmp_segments(ext, GUID, chunk=len(ext) // 3 + 1)
    path = xt2(tmp_path, raw_xmp=dji_xmp({"RtkFlag": "0"}, extended_guid=GUID), extended_xmp=segs[:2])
    with pytest.raises(PoseError, match="readable metadata has no drone-dji:RelativeAltitude") as info:
        pose_from_photo(path, XT2_FOCAL)
    assert f"extended XMP {GUID}: expected {len(ext)} bytes" in str(info.value)


def test_conflicting_places_say_which_value_is_used(tmp_path):
    other = dji_xmp({**VALUES, "RelativeAltitude": "+75.00", "GimbalYawDegree": "+30.0"})
    p = pose_from_photo(xt2(tmp_path, xmp=VALUES, exif_ifd_xmp=other), XT2_FOCAL)
    assert p.agl_m == 80.0  # APP1 first
    assert p.sources["xmp"] == (
        "drone-dji from APP1 XMP, EXIF Exif-IFD XMLPacket (tag 700); drone-dji:RelativeAltitude '+80.00' "
        "from APP1 XMP used over '+75.00' from EXIF Exif-IFD XMLPacket (tag 700)"
    )  # +30.00 and +30.0 are the same number: no conflict
    # a value only the later place has is read from there
    p = pose_from_photo(
        xt2(tmp_path, xmp={k: v for k, v in VALUES.items() if k != "GimbalPitchDegree"}, exif_ifd_xmp=other),
        XT2_FOCAL,
    )
    assert p.ypr[1] == pytest.approx(-60.0)


def test_a_present_but_unusable_tag_is_never_called_missing(tmp_path):
    bad = dji_xmp({**VALUES, "RelativeAltitude": "n/a"})
    with pytest.raises(
        PoseError, match=r"drone-dji:RelativeAltitude: expected a number, found 'n/a'"
    ) as info:
        pose_from_photo(xt2(tmp_path, exif_ifd_xmp=bad), XT2_FOCAL)
    assert "has no" not in str(info.value)
    # a broken packet may hold the tag: the reason says only the readable metadata lacks it, and why
    with pytest.raises(PoseError) as info:
        pose_from_photo(
            xt2(tmp_path, raw_xmp=b"<x:xmpmeta><broken", exif_ifd_xmp=dji_xmp({"GimbalPitchDegree": "-90"})),
            XT2_FOCAL,
        )
    message = str(info.value)
    assert "the photo's readable metadata has no drone-dji:RelativeAltitude" in message
    assert "APP1 XMP: XMP packet is not well-formed XML" in message


# --- focal length ------------------------------------------------------------------------------------

WIDE = np.full((2250, 4000, 3), 128, np.uint8)  # a 16:9 photo from the 4:3 sensor of a DJI Phantom 3
SENSOR_WIDTH_MM = 6.17  # 1/2.3in
EXPECTED_PX = 3.61 * 4000 / SENSOR_WIDTH_MM  # 2340.4


def phantom3(tmp_path, model="FC300S", **kw):
    kw.setdefault("xmp", dji_values(rel_alt=50.0))
    return write_photo(tmp_path / "fc300s.jpg", WIDE, lat=LAT, lon=LON, model=model, focal_35mm=20, **kw)


@pytest.mark.parametrize(
    "res,unit",
    [(4000 / SENSOR_WIDTH_MM, 4), (40000 / SENSOR_WIDTH_MM, 3), (4000 / SENSOR_WIDTH_MM * 25.4, None)],
)
def test_focal_from_exif_focal_length_and_focal_plane_resolution(tmp_path, res, unit):
    p = pose_from_photo(phantom3(tmp_path, focal_mm=3.61, focal_plane_x_res=res, focal_plane_unit=unit))
    assert p.focal_px == pytest.approx(EXPECTED_PX, rel=1e-4)
    assert p.sources["intrinsics"].startswith("EXIF FocalLength 3.61 mm x FocalPlaneXResolution 648.30 px/mm")


def test_35mm_equivalent_of_a_16_9_photo_refers_to_the_4_3_sensor(tmp_path):
    p = pose_from_photo(phantom3(tmp_path, model="FC300Z"))  # a model without a profile
    naive = 20 / 43.2666 * math.hypot(4000, 2250)  # 2121 px over the 16:9 photo's own diagonal
    assert p.focal_px == pytest.approx(20 / 43.2666 * 5000)  # 2311 px
    assert p.focal_px == pytest.approx(EXPECTED_PX, rel=0.015) and abs(p.focal_px - naive) > 150
    assert p.sources["intrinsics"] == (
        "EXIF FocalLengthIn35mmFilm 20 mm over the 4:3 sensor frame of the photo's width (4000x3000)"
    )
    # the profile path and the 35 mm path agree for the same camera
    assert pose_from_photo(phantom3(tmp_path)).focal_px == pytest.approx(p.focal_px)
    assert profile_by_name("phantom-3").focal_px(4000) == pytest.approx(p.focal_px)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((4000, 3000), 5000.0),  # 4:3: the whole frame
        ((5472, 3648), math.hypot(5472, 3648)),  # 3:2, a 1in sensor's whole frame
        ((4000, 2250), 5000.0),  # 16:9 from the 4:3 sensor at the same width
        ((2250, 4000), 5000.0),  # the same photo turned upright
        ((1920, 1080), 2400.0),  # a scaled 16:9 photo keeps the rule
    ],
)
def test_35mm_rule(size, expected):
    f, _ = focal_px_from_35mm(24.0, *size)
    assert f == pytest.approx(24.0 / 43.2666 * expected)


def test_focal_source_order(tmp_path):
    """CalibratedFocalLength, then EXIF FocalLength x FocalPlaneXResolution, then a profile, then 35 mm."""
    res = 4000 / SENSOR_WIDTH_MM
    p = pose_from_photo(
        phantom3(
            tmp_path,
            xmp=dji_values(rel_alt=50.0, focal_px=2355.0),
            focal_mm=3.61,
            focal_plane_x_res=res,
            focal_plane_unit=4,
        )
    )
    assert p.focal_px == 2355.0 and p.sources["intrinsics"] == "XMP drone-dji:CalibratedFocalLength"
    p = pose_from_photo(phantom3(tmp_path, focal_mm=3.61, focal_plane_x_res=res, focal_plane_unit=4))
    assert p.focal_px == pytest.approx(EXPECTED_PX, rel=1e-4)  # over the FC300S profile
    p = pose_from_photo(phantom3(tmp_path, focal_mm=3.61))  # FocalLength alone gives no pixels
    assert p.sources["intrinsics"].startswith("camera profile phantom-3 for EXIF Model FC300S")
    p = pose_from_photo(
        phantom3(tmp_path, focal_mm=3.61, focal_plane_x_res=res, focal_plane_unit=4),
        PoseOverrides(focal_px=2000.0),
    )
    assert p.focal_px == 2000.0  # the flag over everything


# --- DJI maker notes (older firmware, no XMP) -------------------------------------------------------

ATTITUDE = {
    "SpeedX": 0.5,
    "SpeedY": -0.25,
    "SpeedZ": 0.0,
    "Pitch": -2.5,
    "Yaw": 123.4,
    "Roll": 1.25,
    "CameraPitch": -80.0,
    "CameraYaw": 40.0,  # the gimbal's yaw on these firmwares did not follow the photo's top
    "CameraRoll": 0.5,
}
OLD = np.full((300, 400, 3), 100, np.uint8)


def fc300x(tmp_path, name="old.jpg", byte_order="<", **kw):
    kw.setdefault("maker_note", dji_maker_note(ATTITUDE, byte_order))
    return write_photo(
        tmp_path / name, OLD, lat=LAT, lon=LON, gps_alt=52.3, model="FC300X", focal_35mm=20, **kw
    )


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_maker_note_parser_reads_the_published_tags(byte_order):
    got = parse_dji_maker_note(dji_maker_note(ATTITUDE, byte_order), "<")
    assert got == pytest.approx(ATTITUDE)  # float32: exact for these values


def test_maker_note_that_is_no_ifd_is_a_problem():
    with pytest.raises(ValueError, match="DJI MakerNote: expected an IFD"):
        parse_dji_maker_note(b"\xff\xff garbage")


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_attitude_from_maker_notes_with_a_ground_reference(tmp_path, byte_order):
    p = pose_from_photo(fc300x(tmp_path, byte_order=byte_order), PoseOverrides(height_above_ground=52.3))
    assert p.ypr == pytest.approx((123.4, -80.0, 0.5), abs=1e-4)  # the aircraft's Yaw, the camera's tilt
    assert (
        p.sources["attitude"]
        == "yaw DJI MakerNote Yaw, pitch DJI MakerNote CameraPitch, roll DJI MakerNote CameraRoll"
    )
    assert p.sources["intrinsics"].startswith("camera profile phantom-3")
    assert p.abs_alt_m is None  # GPSAltitude may be above take-off: not reported as an altitude
    assert "xmp" not in p.sources


def test_maker_note_photo_without_ground_reference_is_refused_saying_why(tmp_path):
    with pytest.raises(PoseError) as info:
        pose_from_photo(fc300x(tmp_path))
    message = str(info.value)
    assert "EXIF GPSAltitude (52.30 m) is ambiguous" in message
    assert "pass --height-above-ground, or --ground-alt if GPSAltitude is above sea level" in message
    p = pose_from_photo(fc300x(tmp_path), PoseOverrides(ground_alt=2.3))
    assert p.agl_m == pytest.approx(50.0) and "taken as above sea level" in p.sources["height"]


def test_xmp_angles_win_over_maker_notes_and_other_makes_are_not_read(tmp_path):
    xmp = dji_values(rel_alt=60.0, yaw=10.0, pitch=-90.0, roll=0.0)
    p = pose_from_photo(fc300x(tmp_path, xmp=xmp))
    assert p.sources["attitude"] == "yaw GimbalYawDegree, pitch GimbalPitchDegree, roll GimbalRollDegree"
    assert p.agl_m == 60.0 and p.abs_alt_m == 52.3  # with XMP, GPSAltitude is taken as the firmware writes it
    meta = read_photo_metadata(fc300x(tmp_path, name="other.jpg", make="Acme"))
    assert meta.maker_note == {}


@pytest.mark.parametrize(
    "entry",
    [struct.pack("<HHIHH", 7, 3, 1, 123, 0), struct.pack("<HHIf", 7, 11, 1, math.nan)],
    ids=["yaw-as-short", "yaw-nan"],
)
def test_a_maker_note_tag_present_but_unusable_is_never_called_missing(tmp_path, entry):
    note = struct.pack("<H", 2) + struct.pack("<HHIf", 9, 11, 1, -90.0) + entry + struct.pack("<I", 0)
    with pytest.raises(PoseError, match="DJI MakerNote Yaw: expected one finite float32") as info:
        pose_from_photo(fc300x(tmp_path, maker_note=note), PoseOverrides(height_above_ground=50.0))
    assert "has no" not in str(info.value)
