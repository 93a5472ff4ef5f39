"""Command-line options for georeferencing, shared by `edgetile detect` and the daemon."""

from __future__ import annotations

import argparse
import importlib.util
import math

from .ground import ErrorModel
from .pose import PoseOverrides
from .profiles import profile_names
from .writers import GEO_FORMATS, GeoConfig, parse_formats


def _formats(s: str) -> tuple[str, ...]:
    try:
        return parse_formats(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--format: ", "")) from None


def _number(name: str, lo: float = -math.inf, hi: float = math.inf, positive: bool = False):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number for {name}, found {s!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi or (positive and not v > 0):
            what = "a positive number" if positive else f"a number in [{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"expected {what} for {name}, found {s}")
        return v

    return parse


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
        type=_number("--ground-alt", -500, 9000),
        metavar="M",
        help="ground elevation in metres above sea level (from a map); height above ground = "
        "the photo's absolute altitude - M (default: use RelativeAltitude)",
    )
    alt.add_argument(
        "--height-above-ground",
        type=_number("--height-above-ground", positive=True),
        metavar="M",
        help="camera height above the ground in metres, for every photo (e.g. from a laser "
        "rangefinder); replaces the photo's altitudes",
    )
    alt.add_argument(
        "--ground-above-takeoff",
        type=_number("--ground-above-takeoff", -5000, 5000),
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
        type=_number("--focal-px", positive=True),
        metavar="F",
        help="focal length in pixels (overrides the photo and --camera)",
    )
    g.add_argument(
        "--yaw",
        type=_number("--yaw", -360, 360),
        metavar="DEG",
        help="camera heading, degrees clockwise from true north (default: the gimbal's, from XMP)",
    )
    g.add_argument(
        "--pitch",
        type=_number("--pitch", -90, 90),
        metavar="DEG",
        help="camera pitch in degrees, -90 straight down (default: the gimbal's, from XMP)",
    )
    g.add_argument(
        "--roll",
        type=_number("--roll", -180, 180),
        metavar="DEG",
        help="camera roll in degrees (default: the gimbal's, from XMP, else 0)",
    )
    g.add_argument(
        "--alt-sigma",
        type=_number("--alt-sigma", 0, 1000),
        default=2.0,
        metavar="M",
        help="one-sigma uncertainty of the height above ground, for error_m (default: 2)",
    )
    g.add_argument(
        "--angle-sigma",
        type=_number("--angle-sigma", 0, 30),
        default=1.0,
        metavar="DEG",
        help="one-sigma uncertainty of the camera's heading and tilts, for error_m (default: 1)",
    )
    g.add_argument(
        "--gps-sigma",
        type=_number("--gps-sigma", 0, 1000),
        default=2.0,
        metavar="M",
        help="one-sigma horizontal uncertainty of the camera's GPS, for error_m (default: 2; RTK: 0.1)",
    )
    g.add_argument(
        "--track-radius",
        type=_number("--track-radius", positive=True),
        default=5.0,
        metavar="M",
        help="sightings in different photos closer than this on the ground join one track (default: 5)",
    )


def geo_config_from_args(a: argparse.Namespace) -> GeoConfig:
    """The GeoConfig the options describe."""
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
        formats=tuple(getattr(a, "format", ()) or ()),
        overrides=overrides,
        errors=errors,
        track_radius_m=a.track_radius,
    )


def missing_geo_packages() -> list[str]:
    """Packages of the ``geo`` extra that are not installed (pymap3d, Pillow)."""
    return [
        pkg
        for mod, pkg in (("pymap3d", "pymap3d"), ("PIL", "pillow"))
        if importlib.util.find_spec(mod) is None
    ]


def open_geo_writer(a: argparse.Namespace, out_dir):
    """The GeoWriter the options ask for, or None without --format.

    Raises:
        ValueError: A package of the ``geo`` extra is missing (named, with the install command).
    """
    config = geo_config_from_args(a)
    if not config.formats:
        return None
    missing = missing_geo_packages()
    if missing:
        raise ValueError(
            f"--format {','.join(config.formats)} needs {', '.join(missing)}: pip install 'edgetile[geo]'"
        )
    from .writers import GeoWriter

    return GeoWriter(out_dir, config)
