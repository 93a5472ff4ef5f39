"""From a pixel to a place on the ground: pinhole ray, flat ground (or an elevation model), WGS84.

A pixel (u, v) is the ray (forward, right, down) = (1, (u - cx) / f, (v - cy) / f) in the camera
frame, rotated into north-east-down by the pose and followed until it has dropped the camera's
height above ground. "Flat ground" is the surface of constant height on the WGS84 ellipsoid (so a
point 2 km away is not placed on a tangent plane 30 cm above the real ground); an elevation model
(a DEM) can replace it. Geodesy through pymap3d. A detection's place is the ray through its box's
bottom-centre: for a standing person, the feet.

The error estimate propagates one-sigma uncertainties of the height above ground, of the camera's
heading, of the two tilts of its optical axis and of the GPS position to the ground point, by
central differences; it grows with height and steeply as the ray approaches the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable  # collections.abc.Callable is not subscriptable at run time on Python 3.8

import numpy as np

from .pose import CameraPose, rotation_ypr

ElevationFn = Callable[[float, float], float]
"""A ground elevation model: (lat, lon) in degrees -> elevation in metres, in the datum of the
camera's absolute altitude. A digital elevation model plugs in here."""

MIN_DOWN = 1e-9  # rays with less downward component never meet flat ground


@dataclass(frozen=True)
class ErrorModel:
    """One-sigma uncertainties that become each ground point's error estimate.

    Attributes:
        alt_sigma_m: Of the camera's height above the ground (barometer drift, terrain), metres.
        angle_sigma_deg: Of the camera's heading and of each tilt of its optical axis, degrees.
        gps_sigma_m: Of the camera's horizontal position, metres (consumer GNSS: 1.5-3 m).
    """

    alt_sigma_m: float = 2.0
    angle_sigma_deg: float = 1.0
    gps_sigma_m: float = 2.0

    def __post_init__(self) -> None:
        for name in ("alt_sigma_m", "angle_sigma_deg", "gps_sigma_m"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a number >= 0, found {v}")


@dataclass(frozen=True)
class GroundFix:
    """Where one pixel's ray meets the ground.

    Attributes:
        lat: Latitude in degrees (WGS84).
        lon: Longitude in degrees (WGS84).
        north_m: Offset north of the camera in metres.
        east_m: Offset east of the camera in metres.
        range_m: Horizontal distance from the camera in metres.
        agl_m: Camera height above this ground point, metres.
        ground_alt_m: Ground altitude in the datum of the camera's absolute altitude, when known.
        error_m: One-sigma horizontal error estimate in metres; None when an uncertainty of one
            sigma would lift the ray above the horizon (the position is then unbounded).
    """

    lat: float
    lon: float
    north_m: float
    east_m: float
    range_m: float
    agl_m: float
    ground_alt_m: float | None
    error_m: float | None

    def to_dict(self) -> dict:
        """JSON-ready fields for the outputs."""
        return {
            "lat": round(self.lat, 8),
            "lon": round(self.lon, 8),
            "ground_alt_m": None if self.ground_alt_m is None else round(self.ground_alt_m, 2),
            "error_m": None if self.error_m is None else round(self.error_m, 2),
            "distance_m": round(self.range_m, 2),
        }


def box_feet(xyxy: np.ndarray) -> np.ndarray:
    """Bottom-centre of each box, where a standing person touches the ground.

    Args:
        xyxy: (N, 4) boxes x1, y1, x2, y2 in pixels.

    Returns:
        (N, 2) float64 pixel coordinates (u, v).
    """
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2.0, b[:, 3]], axis=1)


def pixel_rays(pose: CameraPose, uv: np.ndarray, rotation: np.ndarray | None = None) -> np.ndarray:
    """Directions of the rays through pixels, in north-east-down.

    Args:
        pose: The camera.
        uv: (N, 2) pixel coordinates.
        rotation: (3, 3) camera-to-NED rotation replacing the pose's (for perturbations).

    Returns:
        (N, 3) float64 ray directions (not normalised; the camera-frame forward component is 1).
    """
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    cam = np.stack(
        [np.ones(len(uv)), (uv[:, 0] - pose.cx) / pose.focal_px, (uv[:, 1] - pose.cy) / pose.focal_px], axis=1
    )
    r = pose.rotation if rotation is None else rotation
    return cam @ r.T


def _reference_alt(pose: CameraPose) -> float:
    # Heights only need a consistent datum here: the horizontal result does not depend on it.
    return pose.abs_alt_m if pose.abs_alt_m is not None else pose.agl_m


@dataclass
class _Solution:
    north_east: np.ndarray  # (N, 2) metres, NaN where no fix
    lat: np.ndarray  # (N,)
    lon: np.ndarray  # (N,)
    ground_alt: np.ndarray  # (N,) ground height in the reference datum
    ok: np.ndarray  # (N,) bool


def _solve(
    pose: CameraPose,
    uv: np.ndarray,
    elevation: ElevationFn | None,
    rotation: np.ndarray | None = None,
    alt_shift: float = 0.0,
    max_iter: int = 30,
) -> _Solution:
    """Intersect pixel rays with the ground surface.

    Flat ground is the surface of constant height (reference altitude - agl) on the WGS84 ellipsoid,
    not the tangent plane, so that far points and the inverse projection agree; an elevation model
    replaces the constant. Starting on the tangent plane, each step moves along the ray by the
    height still left between the point and the ground below it.
    """
    import pymap3d

    rays = pixel_rays(pose, uv, rotation)
    h_cam = _reference_alt(pose) + alt_shift
    flat_ground = _reference_alt(pose) - pose.agl_m
    n = len(rays)
    ok = rays[:, 2] > MIN_DOWN
    depth = np.where(ok, pose.agl_m + alt_shift, np.nan)
    ok &= depth > 0
    lat = np.full(n, np.nan)
    lon = np.full(n, np.nan)
    ground = np.full(n, flat_ground)
    ne = np.full((n, 2), np.nan)
    tol = 1e-4 if elevation is None else 5e-3
    todo = ok.copy()
    for _ in range(max_iter):
        idx = np.flatnonzero(todo)
        if len(idx) == 0:
            break
        ne[idx] = rays[idx, :2] * (depth[idx] / rays[idx, 2])[:, None]
        la, lo, h = pymap3d.ned2geodetic(
            ne[idx, 0], ne[idx, 1], depth[idx], pose.lat, pose.lon, h_cam, deg=True
        )
        la, lo, h = np.atleast_1d(la), np.atleast_1d(lo), np.atleast_1d(h)
        lat[idx], lon[idx] = la, lo
        if elevation is not None:
            ground[idx] = [float(elevation(float(a), float(b))) for a, b in zip(la, lo)]
        left = h - ground[idx]  # > 0: still above the ground
        depth[idx] += left
        done = np.abs(left) < tol
        todo[idx[done]] = False
        lost = idx[depth[idx] <= 0]
        ok[lost] = todo[lost] = False
    ok &= ~todo  # no convergence (a ray grazing a slope of the elevation model)
    ne[~ok] = np.nan
    return _Solution(ne, lat, lon, ground, ok)


def locate_pixels(
    pose: CameraPose, uv: np.ndarray, errors: ErrorModel | None = None, elevation: ElevationFn | None = None
) -> list[GroundFix | None]:
    """Ground positions of pixels, with error estimates.

    Args:
        pose: The camera.
        uv: (N, 2) pixel coordinates.
        errors: Uncertainties for the error estimate (default ErrorModel()).
        elevation: Ground elevation model; None means flat ground pose.agl_m below the camera. With
            a model the camera's absolute altitude is needed.

    Returns:
        One GroundFix per pixel, or None where the ray does not meet the ground (at or above the
        horizon, or, with an elevation model, no convergence).

    Raises:
        ValueError: An elevation model without the camera's absolute altitude.
    """
    errors = errors or ErrorModel()
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    if elevation is not None and pose.abs_alt_m is None:
        raise ValueError(
            "elevation: an elevation model needs the camera's absolute altitude, and the pose has none"
        )
    if len(uv) == 0:
        return []
    base = _solve(pose, uv, elevation)

    # One-sigma displacement of each ground point per uncertainty (central differences).
    d = errors.angle_sigma_deg
    r = pose.rotation
    perturbed = []
    if d > 0:
        perturbed += [
            (rotation_ypr(d, 0, 0) @ r, rotation_ypr(-d, 0, 0) @ r, 0.0),  # heading, about the vertical
            (r @ rotation_ypr(0, d, 0), r @ rotation_ypr(0, -d, 0), 0.0),  # tilt of the optical axis up/down
            (
                r @ rotation_ypr(d, 0, 0),
                r @ rotation_ypr(-d, 0, 0),
                0.0,
            ),  # swing of the optical axis sideways
        ]
    if errors.alt_sigma_m > 0:
        perturbed.append((None, None, errors.alt_sigma_m))  # height above ground
    unbounded = np.zeros(len(uv), bool)
    spreads = [np.zeros(len(uv))]
    for r_plus, r_minus, dh in perturbed:
        plus = _solve(pose, uv, elevation, r_plus, +dh)
        if r_plus is None and dh >= pose.agl_m:
            minus, half = base, 1.0  # the camera cannot sink below the ground: one-sided difference
        else:
            minus, half = _solve(pose, uv, elevation, r_minus, -dh), 2.0
        unbounded |= base.ok & ~(plus.ok & minus.ok)
        spreads.append(np.linalg.norm(np.nan_to_num(plus.north_east - minus.north_east), axis=1) / half)
    err = np.sqrt(np.sum(np.square(spreads), axis=0) + errors.gps_sigma_m**2)

    h_cam = _reference_alt(pose)
    out: list[GroundFix | None] = []
    for i in range(len(uv)):
        if not base.ok[i]:
            out.append(None)
            continue
        north, east = (float(v) for v in base.north_east[i])
        out.append(
            GroundFix(
                lat=float(base.lat[i]),
                lon=float(base.lon[i]),
                north_m=north,
                east_m=east,
                range_m=math.hypot(north, east),
                agl_m=float(h_cam - base.ground_alt[i]),
                ground_alt_m=None if pose.abs_alt_m is None else float(base.ground_alt[i]),
                error_m=None if unbounded[i] else float(err[i]),
            )
        )
    return out


def locate_boxes(
    pose: CameraPose, xyxy: np.ndarray, errors: ErrorModel | None = None, elevation: ElevationFn | None = None
) -> list[GroundFix | None]:
    """Ground positions of detections: the ray through each box's bottom-centre (see locate_pixels).

    Args:
        xyxy: (N, 4) boxes x1, y1, x2, y2 in pixels.
    """
    return locate_pixels(pose, box_feet(xyxy), errors, elevation)


def ground_to_pixel(
    pose: CameraPose,
    lat: Sequence[float] | float,
    lon: Sequence[float] | float,
    ground_alt_m: Sequence[float] | float | None = None,
) -> np.ndarray:
    """Project ground points into the photo: the inverse of locate_pixels.

    Args:
        lat: Latitudes in degrees.
        lon: Longitudes in degrees.
        ground_alt_m: Ground altitudes in the datum of the pose's absolute altitude; None means
            flat ground pose.agl_m below the camera.

    Returns:
        (N, 2) pixel coordinates (u, v); NaN for points behind the camera.
    """
    import pymap3d

    lat_a = np.atleast_1d(np.asarray(lat, np.float64))
    lon_a = np.atleast_1d(np.asarray(lon, np.float64))
    h0 = _reference_alt(pose)
    if ground_alt_m is None:
        h = np.full(lat_a.shape, h0 - pose.agl_m)
    else:
        h = np.broadcast_to(np.asarray(ground_alt_m, np.float64), lat_a.shape)
    n, e, d = pymap3d.geodetic2ned(lat_a, lon_a, h, pose.lat, pose.lon, h0, deg=True)
    ned = np.stack([np.atleast_1d(n), np.atleast_1d(e), np.atleast_1d(d)], axis=1)
    cam = ned @ pose.rotation  # = (R^T ned^T)^T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(cam[:, 0] > 0, pose.cx + pose.focal_px * cam[:, 1] / cam[:, 0], np.nan)
        v = np.where(cam[:, 0] > 0, pose.cy + pose.focal_px * cam[:, 2] / cam[:, 0], np.nan)
    return np.stack([u, v], axis=1)


def photo_footprint(pose: CameraPose) -> list[list[float]] | None:
    """The photo's four corners on flat ground: [[lat, lon]] for top-left, top-right, bottom-right, bottom-left.

    Returns:
        The corners (degrees, 8 decimals), or None when a corner's ray does not reach the ground
        (an oblique photo showing the horizon has no bounded footprint).
    """
    corners = np.array([[0, 0], [pose.width, 0], [pose.width, pose.height], [0, pose.height]], np.float64)
    fixes = locate_pixels(pose, corners, ErrorModel(0.0, 0.0, 0.0))
    on_ground = [f for f in fixes if f is not None]
    if len(on_ground) < len(fixes):
        return None
    return [[round(f.lat, 8), round(f.lon, 8)] for f in on_ground]


def centre_gsd_m(pose: CameraPose) -> float | None:
    """Ground sampling distance at the photo's principal point, metres per pixel.

    The slant range to the ground along the optical axis over the focal length in pixels: the
    nadir value h / f for a photo straight down, larger for an oblique one. None when the axis does
    not reach the ground.
    """
    fix = locate_pixels(pose, np.array([[pose.cx, pose.cy]]), ErrorModel(0.0, 0.0, 0.0))[0]
    if fix is None:
        return None
    return math.hypot(fix.range_m, fix.agl_m) / pose.focal_px
