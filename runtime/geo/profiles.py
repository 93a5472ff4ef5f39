"""Nominal intrinsics of common DJI cameras, for photos that carry no CalibratedFocalLength.

A profile gives the 35 mm-equivalent focal length DJI publishes and the native photo size; the
focal length in pixels follows from the native frame's diagonal (f_px = f35 / 43.27 mm *
diagonal_px). DJI publishes the equivalent of the whole sensor, also for the 16:9 photos cropped
from it, so the native (4:3 or 3:2) frame decides, never a 16:9 photo's own diagonal. These are
nominal values: the calibrated focal length a photo carries in its XMP is better, and a flag
(--focal-px) is best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FULL_FRAME_DIAGONAL_MM = 43.2666  # 36 x 24 mm


@dataclass(frozen=True)
class CameraProfile:
    """One camera's nominal geometry.

    Attributes:
        name: Short name used by --camera.
        models: EXIF Model strings the camera writes.
        description: The aircraft and camera, for listings.
        focal_35mm: 35 mm-equivalent focal length in millimetres.
        width: Native photo width in pixels.
        height: Native photo height in pixels.
    """

    name: str
    models: tuple[str, ...]
    description: str
    focal_35mm: float
    width: int
    height: int

    def focal_px(self, width: int) -> float:
        """Focal length in pixels for a photo `width` pixels wide from this camera.

        16:9 photos are crops of the 4:3 sensor at the same width, and resized photos scale with
        their width, so the width alone decides.
        """
        native = self.focal_35mm / FULL_FRAME_DIAGONAL_MM * math.hypot(self.width, self.height)
        return native * width / self.width


CAMERA_PROFILES: tuple[CameraProfile, ...] = (
    CameraProfile("mavic-pro", ("FC220",), "DJI Mavic Pro (FC220, 1/2.3in)", 26.0, 4000, 3000),
    CameraProfile(
        "phantom-3", ("FC300S", "FC300X", "FC300C"), "DJI Phantom 3 (FC300S/X/C, 1/2.3in)", 20.0, 4000, 3000
    ),
    CameraProfile("inspire-1", ("FC350",), "DJI Inspire 1 (Zenmuse X3, FC350, 1/2.3in)", 20.0, 4000, 3000),
    CameraProfile("phantom-4", ("FC330",), "DJI Phantom 4 (FC330, 1/2.3in)", 20.0, 4000, 3000),
    CameraProfile(
        "phantom-4-pro",
        ("FC6310", "FC6310S", "FC6310R"),
        "DJI Phantom 4 Pro / Pro V2.0 / RTK (FC6310, 1in)",
        24.0,
        5472,
        3648,
    ),
    CameraProfile("mavic-2-pro", ("L1D-20c",), "DJI Mavic 2 Pro (Hasselblad L1D-20c, 1in)", 28.0, 5472, 3648),
    CameraProfile(
        "mavic-air-2", ("FC3170",), "DJI Mavic Air 2 (FC3170, 1/2in, 12 MP mode)", 24.0, 4000, 3000
    ),
    CameraProfile("mini-2", ("FC7303",), "DJI Mini 2 (FC7303, 1/2.3in)", 24.0, 4000, 3000),
    CameraProfile("mavic-3", ("L2D-20c",), "DJI Mavic 3 (Hasselblad L2D-20c, 4/3in)", 24.0, 5280, 3956),
)


def profile_names() -> list[str]:
    """The names --camera accepts."""
    return [p.name for p in CAMERA_PROFILES]


def profile_by_name(name: str) -> CameraProfile:
    """The bundled profile called `name`; ValueError naming the choices otherwise."""
    for p in CAMERA_PROFILES:
        if p.name == name:
            return p
    raise ValueError(f"camera: expected one of {', '.join(profile_names())}, found {name!r}")


def profile_for_model(model: str | None) -> CameraProfile | None:
    """The bundled profile whose EXIF Model matches `model` exactly (after trimming), or None."""
    if not model:
        return None
    model = model.strip().strip("\x00").strip()
    for p in CAMERA_PROFILES:
        if model in p.models:
            return p
    return None
