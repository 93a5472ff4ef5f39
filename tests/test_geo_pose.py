"""Camera pose from real JPEG files: EXIF GPS written by Pillow, DJI XMP spliced in as APP1."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geo_photos import dji_values, write_photo

from edgetile.runtime.geo import (
    CAMERA_PROFILES,
    PoseError,
    PoseOverrides,
    locate_boxes,
    pose_from_photo,
    read_photo_metadata,
)
from edgetile.runtime.geo.profiles import profile_by_name, profile_for_model

LAT, LON = 55.7512345, 37.6212345
IMG = np.full((300, 400, 3), (60, 110, 70), np.uint8)


def photo(tmp_path, name="p.jpg", **kw):
    kw.setdefault("lat", LAT)
    kw.setdefault("lon", LON)
    kw.setdefault(
        "xmp",
        dji_values(
            rel_alt=80.0, abs_alt=250.0, yaw=30.0, pitch=-60.0, roll=1.5, focal_px=350.0, cx=201.5, cy=148.25
        ),
    )
    return write_photo(tmp_path / name, IMG, **kw)


def test_full_dji_photo(tmp_path):
    p = pose_from_photo(photo(tmp_path))
    assert (p.lat, p.lon) == pytest.approx((LAT, LON), abs=1e-7)  # EXIF rationals, 1e-7 deg = 1 cm
    assert p.agl_m == 80.0 and p.abs_alt_m == 250.0
    assert p.ypr == pytest.approx((30.0, -60.0, 1.5))
    assert (p.focal_px, p.cx, p.cy, p.width, p.height) == (350.0, 201.5, 148.25, 400, 300)
    assert p.sources["position"] == "EXIF GPS"
    assert "assumed" in p.sources["height"]  # ground at take-off height is an assumption, and says so
    assert p.sources["intrinsics"] == "XMP drone-dji:CalibratedFocalLength"


def test_xmp_as_elements(tmp_path):
    p = pose_from_photo(photo(tmp_path, xmp_as_elements=True))
    assert p.agl_m == 80.0 and p.ypr == pytest.approx((30.0, -60.0, 1.5)) and p.focal_px == 350.0


def test_south_west_and_below_sea_level(tmp_path):
    meta = read_photo_metadata(photo(tmp_path, lat=-33.5, lon=-70.25, gps_alt=-12.5))
    assert meta.gps == pytest.approx((-33.5, -70.25), abs=1e-9)
    assert meta.gps_alt == -12.5


def test_position_from_xmp_when_exif_has_none_even_misspelled(tmp_path):
    xmp = {**dji_values(), "GpsLatitude": "+10.5", "GpsLongtitude": "-20.25"}  # older DJI firmware's spelling
    p = pose_from_photo(photo(tmp_path, lat=None, lon=None, xmp=xmp), PoseOverrides(focal_px=300.0))
    assert (p.lat, p.lon) == (10.5, -20.25)
    assert p.sources["position"] == "XMP drone-dji:GpsLatitude/GpsLongtitude"


# (what the photo lacks or has wrong, overrides, the part of the one-line message that tells the user what to do)
MISSING = [
    ({"lat": None, "lon": None}, {}, "no GPS position"),
    ({"lat": 0.0, "lon": 0.0}, {}, "no satellite fix"),
    (
        {"xmp": {k: v for k, v in dji_values().items() if k != "RelativeAltitude"}},
        {"focal_px": 300.0},
        "pass --height-above-ground",
    ),
    (
        {"xmp": {k: v for k, v in dji_values().items() if k != "GimbalPitchDegree"}},
        {"focal_px": 300.0},
        r"pass --pitch \(-90 = straight down\)",
    ),
    ({"xmp": {k: v for k, v in dji_values().items() if "Yaw" not in k}}, {"focal_px": 300.0}, "pass --yaw"),
    ({"xmp": dji_values(), "model": "XT2"}, {}, "pass --focal-px or --camera"),
    ({"xmp": dji_values(), "model": None}, {}, r"no known EXIF Model \(none\)"),
    (
        {"xmp": {**dji_values(), "RelativeAltitude": "fifty"}},
        {"focal_px": 300.0},
        "drone-dji:RelativeAltitude: expected a number, found 'fifty'",
    ),
    (
        {"xmp": dji_values(rel_alt=10.0)},
        {"focal_px": 300.0, "ground_above_takeoff": 12.0},
        r"height above ground: expected a positive number of metres, found -2.00",
    ),
    ({"xmp": dji_values()}, {"focal_px": 300.0, "ground_alt": 100.0}, "needs the camera's absolute altitude"),
    (
        {"xmp": None, "raw_xmp": b"<x:xmpmeta><broken"},
        {"focal_px": 300.0},
        "XMP packet is not well-formed XML",
    ),
]


@pytest.mark.parametrize("photo_kw,overrides,message", MISSING)
def test_missing_or_bad_pose_is_one_line_naming_the_fix(tmp_path, photo_kw, overrides, message):
    with pytest.raises(PoseError, match=message) as info:
        pose_from_photo(photo(tmp_path, **photo_kw), PoseOverrides(**overrides))
    assert "\n" not in str(info.value)


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    with pytest.raises(PoseError, match="cannot read the photo's metadata"):
        pose_from_photo(bad)


# (overrides, expected height above ground) for a photo at RelativeAltitude 80, AbsoluteAltitude 250
HEIGHT_RULES = [
    ({}, 80.0),  # ground at the take-off height
    ({"ground_above_takeoff": 15.0}, 65.0),  # searching a hill 15 m above the take-off point
    ({"ground_above_takeoff": -20.0}, 100.0),  # a valley
    ({"ground_alt": 190.0}, 60.0),  # ground elevation from a map: 250 - 190
    ({"height_above_ground": 42.0}, 42.0),  # a rangefinder
]


@pytest.mark.parametrize("overrides,agl", HEIGHT_RULES)
def test_height_above_ground_rules(tmp_path, overrides, agl):
    assert pose_from_photo(photo(tmp_path), PoseOverrides(**overrides)).agl_m == pytest.approx(agl)


def test_ground_alt_uses_exif_altitude_without_xmp_absolute(tmp_path):
    xmp = dji_values(rel_alt=80.0, focal_px=350.0)  # no AbsoluteAltitude
    p = pose_from_photo(photo(tmp_path, xmp=xmp, gps_alt=231.5), PoseOverrides(ground_alt=200.0))
    assert p.agl_m == pytest.approx(31.5)
    assert p.sources["height"].startswith("EXIF GPSAltitude")


def test_flags_override_the_photo(tmp_path):
    p = pose_from_photo(photo(tmp_path), PoseOverrides(yaw=-90.0, pitch=-90.0, roll=0.0, focal_px=500.0))
    assert p.ypr[0] == pytest.approx(-90.0) and p.ypr[1] == pytest.approx(-90.0)
    assert p.focal_px == 500.0
    assert (p.cx, p.cy) == (200.0, 150.0)  # --focal-px comes without the photo's principal point
    p = pose_from_photo(photo(tmp_path), PoseOverrides(camera="phantom-4-pro"))
    assert p.focal_px == pytest.approx(profile_by_name("phantom-4-pro").focal_px(400))


def test_yaw_falls_back_to_flight_yaw_and_roll_to_zero(tmp_path):
    xmp = {
        "RelativeAltitude": "+50.00",
        "GimbalPitchDegree": "-90.00",
        "FlightYawDegree": "+45.00",
        "CalibratedFocalLength": "300",
    }
    p = pose_from_photo(photo(tmp_path, xmp=xmp))
    assert "FlightYawDegree" in p.sources["attitude"] and "roll assumed 0" in p.sources["attitude"]
    # nadir, heading 45: the top-centre of the photo lies north-east of the camera
    fix = locate_boxes(p, np.array([[190.0, 0.0, 210.0, 50.0]]))[0]
    assert fix.north_m == pytest.approx(fix.east_m) and fix.north_m > 0


def test_intrinsics_from_the_bundled_profile_of_the_exif_model(tmp_path):
    xmp = {k: v for k, v in dji_values().items() if not k.startswith("Calibrated")}
    p = pose_from_photo(photo(tmp_path, xmp=xmp, model="FC220"))
    # Mavic Pro: 26 mm equivalent on a 4000x3000 photo: 26 / 43.27 * 5000 px, scaled to our 400 px width
    assert p.focal_px == pytest.approx(26 / 43.2666 * 5000 / 10, rel=1e-6)
    assert "mavic-pro" in p.sources["intrinsics"]


def test_intrinsics_from_exif_35mm_equivalent(tmp_path):
    xmp = {k: v for k, v in dji_values().items() if not k.startswith("Calibrated")}
    p = pose_from_photo(photo(tmp_path, xmp=xmp, model="ZenmuseX", focal_35mm=24))
    assert p.focal_px == pytest.approx(24 / 43.2666 * math.hypot(400, 300))


def test_profiles_are_sane():
    for prof in CAMERA_PROFILES:
        f = prof.focal_px(prof.width)
        hfov = 2 * math.degrees(math.atan(prof.width / 2 / f))
        assert 55 < hfov < 90, prof.name  # drone cameras are wide, not fisheye
        for m in prof.models:
            assert profile_for_model(m) is prof
    assert profile_for_model("  FC6310S\x00") is profile_by_name("phantom-4-pro")
    with pytest.raises(ValueError, match="camera: expected one of mavic-pro"):
        profile_by_name("gopro")


def test_override_validation():
    with pytest.raises(ValueError, match="expected at most one, found both"):
        PoseOverrides(height_above_ground=50.0, ground_alt=100.0)
    with pytest.raises(ValueError, match="focal_px: expected a positive number"):
        PoseOverrides(focal_px=0.0)
