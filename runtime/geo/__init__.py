"""edgetile.runtime.geo: where a detected person is, and how to tell the ground station.

- pose: the camera of a photo from EXIF GPS, DJI XMP, bundled camera profiles and flags.
- ground: pixel -> ray -> flat ground (or an elevation model) -> WGS84, with an error estimate.
- tracks: one person seen in several photos becomes one track.
- writers: detections.geojson, detections.kml, detections_geo.csv, tracks.geojson, thumbnails.
- mqtt: publish detections to a broker (paho-mqtt, extra ``mqtt``).
- mavlink: read the vehicle's pose and send detections to a ground station (pymavlink, extra ``mavlink``).

Importing this package costs NumPy and OpenCV only: pymap3d, Pillow, paho-mqtt and pymavlink are
imported by the functions that need them (extras ``geo``, ``mqtt``, ``mavlink``).
"""

from __future__ import annotations

from .ground import ErrorModel, GroundFix, box_feet, ground_to_pixel, locate_boxes, locate_pixels
from .pose import (
    CameraPose,
    PhotoMetadata,
    PoseError,
    PoseOverrides,
    pose_from_metadata,
    pose_from_photo,
    read_photo_metadata,
    rotation_ypr,
)
from .profiles import CAMERA_PROFILES, CameraProfile
from .tracks import Track, TrackBuilder, build_tracks, ground_distance_m
from .writers import GEO_FORMATS, GeoConfig, GeoWriter, georeference_detections, parse_formats

__all__ = [
    "CAMERA_PROFILES",
    "GEO_FORMATS",
    "CameraPose",
    "CameraProfile",
    "ErrorModel",
    "GeoConfig",
    "GeoWriter",
    "GroundFix",
    "PhotoMetadata",
    "PoseError",
    "PoseOverrides",
    "Track",
    "TrackBuilder",
    "box_feet",
    "build_tracks",
    "georeference_detections",
    "ground_distance_m",
    "ground_to_pixel",
    "locate_boxes",
    "locate_pixels",
    "parse_formats",
    "pose_from_metadata",
    "pose_from_photo",
    "read_photo_metadata",
    "rotation_ypr",
]
