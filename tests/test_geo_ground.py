"""Pixel -> ground -> WGS84 against hand-computed cases, an independent rotation (SciPy) and round trips."""

from __future__ import annotations

import math

import numpy as np
import pymap3d
import pytest
from scipy.optimize import brentq
from scipy.spatial.transform import Rotation

from edgetile.runtime.geo import (
    CameraPose,
    ErrorModel,
    PoseError,
    box_feet,
    ground_to_pixel,
    locate_boxes,
    locate_pixels,
    rotation_ypr,
)
from edgetile.runtime.geo.pose import rotation_from_quaternion, ypr_from_rotation

LAT0, LON0 = 55.75, 37.62  # Moscow, where much of LADD was flown
W, H, F = 4000, 3000, 1000.0
CX, CY = W / 2, H / 2
T15 = math.tan(math.radians(15))
S45 = math.sin(math.radians(45))


def wgs84_offset(lat, lon, north, east):
    """Hand formula: metres north/east -> degrees, with the WGS84 radii of curvature at lat."""
    a, e2 = 6378137.0, 6.69437999014e-3
    phi = math.radians(lat)
    m = a * (1 - e2) / (1 - e2 * math.sin(phi) ** 2) ** 1.5
    n = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    return lat + math.degrees(north / m), lon + math.degrees(east / (n * math.cos(phi)))


def metres_between(lat1, lon1, lat2, lon2):
    n, e, _ = pymap3d.geodetic2ned(lat2, lon2, 0.0, lat1, lon1, 0.0)
    return math.hypot(n, e)


def pose(yaw=0.0, pitch=-90.0, roll=0.0, agl=100.0, abs_alt=None, cx=None, cy=None):
    return CameraPose.from_angles(LAT0, LON0, agl, yaw, pitch, roll, F, W, H, cx=cx, cy=cy, abs_alt_m=abs_alt)


# (yaw, pitch, roll, height, pixel u, pixel v, expected north m, expected east m), each worked by hand
HAND_CASES = [
    # nadir, heading north: image right = east, image up = north; offsets are h * pixel offset / f
    (0, -90, 0, 100, CX, CY, 0.0, 0.0),
    (0, -90, 0, 100, CX + 500, CY - 500, 50.0, 50.0),
    (0, -90, 0, 100, CX - 250, CY + 1000, -100.0, -25.0),
    (0, -90, 0, 60, CX + 1000, CY, 0.0, 60.0),  # GSD h/f = 0.06 m/px
    # nadir, heading east: the photo's top points east, its right points south
    (90, -90, 0, 100, CX + 500, CY - 500, -50.0, 50.0),
    # nadir, heading south-west (-135): straight up in the photo is 50 m along the heading
    (-135, -90, 0, 100, CX, CY - 500, 50 * math.cos(math.radians(-135)), 50 * math.sin(math.radians(-135))),
    # oblique 45 deg down, heading north: the centre ray lands h / tan(45) = 100 m ahead
    (0, -45, 0, 100, CX, CY, 100.0, 0.0),
    # 15 deg below the centre ray: 60 deg below the horizon, 100 / tan(60) ahead
    (0, -45, 0, 100, CX, CY + F * T15, 100 / math.tan(math.radians(60)), 0.0),
    # 0.2 f to the right: ray (cos45, 0.2, sin45) scaled to drop 100 m -> east 0.2 * 100 / sin45
    (0, -45, 0, 100, CX + 0.2 * F, CY, 100.0, 0.2 * 100 / S45),
    # oblique 30 deg down, heading east: 100 / tan(30) east
    (90, -30, 0, 100, CX, CY, 0.0, 100 / math.tan(math.radians(30))),
    # oblique with roll 10: ray (1, 0, 0.2) -> Rx(10) (1, -0.2 sin10, 0.2 cos10) -> Ry(-45)
    (
        0,
        -45,
        10,
        100,
        CX,
        CY + 0.2 * F,
        100 * S45 * (1 - 0.2 * math.cos(math.radians(10))) / (S45 * (1 + 0.2 * math.cos(math.radians(10)))),
        100 * -0.2 * math.sin(math.radians(10)) / (S45 * (1 + 0.2 * math.cos(math.radians(10)))),
    ),
]


@pytest.mark.parametrize("yaw,pitch,roll,h,u,v,north,east", HAND_CASES)
def test_hand_computed_ground_points_to_the_centimetre(yaw, pitch, roll, h, u, v, north, east):
    fix = locate_pixels(pose(yaw, pitch, roll, agl=h), np.array([[u, v]]))[0]
    assert fix is not None
    assert fix.north_m == pytest.approx(north, abs=0.01)
    assert fix.east_m == pytest.approx(east, abs=0.01)
    assert fix.range_m == pytest.approx(math.hypot(north, east), abs=0.01)
    lat, lon = wgs84_offset(LAT0, LON0, north, east)
    assert metres_between(fix.lat, fix.lon, lat, lon) < 0.01


def test_rotation_matches_scipy_intrinsic_zyx():
    rng = np.random.default_rng(0)
    for yaw, pitch, roll in rng.uniform([-180, -90, -45], [180, 0, 45], (50, 3)):
        ours = rotation_ypr(yaw, pitch, roll)
        ref = Rotation.from_euler("ZYX", [yaw, pitch, roll], degrees=True).as_matrix()
        np.testing.assert_allclose(ours, ref, atol=1e-12)
        # and back to angles (away from the nadir singularity)
        if pitch > -89:
            np.testing.assert_allclose(ypr_from_rotation(ours), (yaw, pitch, roll), atol=1e-9)


def test_quaternion_matches_scipy():
    rng = np.random.default_rng(1)
    for q in rng.normal(size=(20, 4)):
        w, x, y, z = q / np.linalg.norm(q)
        np.testing.assert_allclose(
            rotation_from_quaternion(w, x, y, z), Rotation.from_quat([x, y, z, w]).as_matrix(), atol=1e-12
        )
    with pytest.raises(ValueError, match="non-zero quaternion"):
        rotation_from_quaternion(0, 0, 0, 0)  # MAVLink's "unknown orientation"


def reference_fix(yaw, pitch, roll, h, u, v):
    """Independent oracle: SciPy's rotation, then root-finding along the ray for the point whose
    WGS84 height is the ground's (h below the camera), through pymap3d."""
    ray = Rotation.from_euler("ZYX", [yaw, pitch, roll], degrees=True).apply(
        [1.0, (u - CX) / F, (v - CY) / F]
    )
    if ray[2] <= 0:
        return None

    def height_above_ground(t):
        return pymap3d.ned2geodetic(*(t * ray), LAT0, LON0, h)[2]

    t = brentq(height_above_ground, 0.0, 2 * h / ray[2], xtol=1e-9)
    return pymap3d.ned2geodetic(*(t * ray), LAT0, LON0, h)[:2]


def test_random_poses_agree_with_an_independent_scipy_pipeline():
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(30):
        yaw, pitch, roll = rng.uniform(-180, 180), rng.uniform(-90, -35), rng.uniform(-10, 10)
        h = rng.uniform(30, 150)
        uv = rng.uniform([0, 0], [W, H], (5, 2))
        fixes = locate_pixels(pose(yaw, pitch, roll, agl=h), uv)
        for (u, v), fix in zip(uv, fixes):
            ref = reference_fix(yaw, pitch, roll, h, u, v)
            if ref is None:
                assert fix is None
                continue
            assert fix is not None
            assert metres_between(fix.lat, fix.lon, *ref) < 0.01
            checked += 1
    assert checked > 100


def test_round_trip_pixel_ground_pixel():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = pose(
            rng.uniform(-180, 180),
            rng.uniform(-90, -40),
            rng.uniform(-5, 5),
            agl=rng.uniform(40, 120),
            abs_alt=rng.uniform(100, 400),
        )
        uv = rng.uniform([0, 0], [W, H], (10, 2))
        fixes = locate_pixels(p, uv)
        keep = [i for i, f in enumerate(fixes) if f is not None]
        back = ground_to_pixel(
            p,
            [fixes[i].lat for i in keep],
            [fixes[i].lon for i in keep],
            [fixes[i].ground_alt_m for i in keep],
        )
        np.testing.assert_allclose(back, uv[keep], atol=0.01)  # a hundredth of a pixel


def test_round_trip_through_pymap3d_back_to_local_offsets():
    p = pose(37.0, -60.0, 2.0, agl=80.0, abs_alt=250.0)
    uv = np.array([[100, 200], [3900, 2900], [2000, 1500], [1234, 567]])
    for f in locate_pixels(p, uv):
        n, e, d = pymap3d.geodetic2ned(f.lat, f.lon, f.ground_alt_m, LAT0, LON0, 250.0)
        assert (n, e) == pytest.approx((f.north_m, f.east_m), abs=0.01)
        # flat ground follows the ellipsoid: it lies r^2 / 2R below the camera's tangent plane
        assert d == pytest.approx(80.0 + (n * n + e * e) / (2 * 6371e3), abs=0.01)
        assert f.ground_alt_m == pytest.approx(170.0)


def test_gsd_is_height_over_focal():
    p = pose(agl=120.0)
    assert p.gsd_m == pytest.approx(0.12)
    a, b = locate_pixels(p, np.array([[CX, CY], [CX + 100, CY]]))
    assert b.east_m - a.east_m == pytest.approx(100 * 0.12, abs=1e-9)


def test_box_feet_is_the_bottom_centre():
    np.testing.assert_array_equal(box_feet(np.array([[10, 20, 30, 60], [0, 0, 1, 1]])), [[20, 60], [0.5, 1]])
    fix_box = locate_boxes(pose(), np.array([[CX - 20, CY - 90, CX + 20, CY - 50]]))[0]
    fix_px = locate_pixels(pose(), np.array([[CX, CY - 50]]))[0]
    assert (fix_box.lat, fix_box.lon) == (fix_px.lat, fix_px.lon)


def test_principal_point_off_centre():
    fix = locate_pixels(pose(cx=2100.0, cy=1400.0), np.array([[2100.0, 1400.0]]))[0]
    assert (fix.north_m, fix.east_m) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_error_estimate_at_nadir_centre_by_hand():
    # At the nadir centre the height and heading move nothing; each tilt moves the point h tan(sigma).
    e = ErrorModel(alt_sigma_m=3.0, angle_sigma_deg=1.5, gps_sigma_m=2.0)
    fix = locate_pixels(pose(agl=100.0), np.array([[CX, CY]]), e)[0]
    tilt = 100 * math.tan(math.radians(1.5))
    assert fix.error_m == pytest.approx(math.sqrt(2 * tilt**2 + 2.0**2), abs=0.01)


def test_error_estimate_at_nadir_corner_by_hand():
    # Only the height matters here: a point r metres out moves r * sigma_h / h.
    e = ErrorModel(alt_sigma_m=5.0, angle_sigma_deg=0.0, gps_sigma_m=0.0)
    fix = locate_pixels(pose(agl=100.0), np.array([[CX + 600, CY + 800]]), e)[0]
    assert fix.range_m == pytest.approx(100.0, abs=0.01)
    assert fix.error_m == pytest.approx(100.0 * 5.0 / 100.0, abs=0.01)


def test_error_grows_with_height_and_obliquity():
    uv = np.array([[CX, CY]])
    low, high = (locate_pixels(pose(agl=h), uv)[0].error_m for h in (40.0, 120.0))
    assert high > low
    steep, shallow = (locate_pixels(pose(pitch=p), uv)[0].error_m for p in (-80.0, -20.0))
    assert shallow > 2 * steep


def test_near_horizon_error_is_unbounded_and_above_horizon_has_no_fix():
    p = pose(pitch=0.0)  # looking at the horizon
    below = locate_pixels(
        p, np.array([[CX, CY + F * math.tan(math.radians(0.5))]]), ErrorModel(angle_sigma_deg=1.0)
    )[0]
    assert below is not None and below.error_m is None  # one sigma lifts the ray above the horizon
    # the Earth curves away: 13 km, not the 11.5 km of a flat plane
    ref = reference_fix(0.0, 0.0, 0.0, 100.0, CX, CY + F * math.tan(math.radians(0.5)))
    assert metres_between(below.lat, below.lon, *ref) < 0.05
    assert below.range_m > 1.1 * 100 / math.tan(math.radians(0.5))
    assert locate_pixels(p, np.array([[CX, CY], [CX, CY - 100]])) == [None, None]
    # 0.2 deg down from 100 m passes over the curve of the Earth (the horizon dips 0.32 deg)
    assert locate_pixels(p, np.array([[CX, CY + F * math.tan(math.radians(0.2))]])) == [None]


def test_elevation_model_on_a_slope_by_hand():
    # Camera 300 m above sea level over ground at 200 m that rises 0.1 m per metre northwards,
    # looking 45 deg down to the north: the ray drops N metres in N metres, and the ground there is
    # 100 - 0.1 N metres below the camera, so N = 100 / 1.1.
    def elevation(lat, lon):
        n, _e, _d = pymap3d.geodetic2ned(lat, lon, 0.0, LAT0, LON0, 0.0)
        return 200.0 + 0.1 * n

    p = pose(pitch=-45.0, agl=100.0, abs_alt=300.0)
    fix = locate_pixels(p, np.array([[CX, CY]]), elevation=elevation)[0]
    assert fix.north_m == pytest.approx(100 / 1.1, abs=0.01)
    assert fix.ground_alt_m == pytest.approx(200 + 0.1 * 100 / 1.1, abs=0.01)
    with pytest.raises(ValueError, match="absolute altitude"):
        locate_pixels(pose(), np.array([[CX, CY]]), elevation=elevation)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"agl": 0.0}, "height above ground"),  # the camera on the ground
        ({"agl": -5.0}, "height above ground"),
        ({"agl": float("nan")}, "height above ground"),
    ],
)
def test_bad_poses_are_refused(kwargs, message):
    with pytest.raises(PoseError, match=message):
        pose(**kwargs)
    with pytest.raises(PoseError, match=r"lat: expected degrees in \[-90, 90\], found 91"):
        CameraPose.from_angles(91.0, 0.0, 10.0, 0, -90, 0, F, W, H)
    with pytest.raises(ValueError, match="alt_sigma_m: expected a number >= 0"):
        ErrorModel(alt_sigma_m=-1.0)
