"""edgetile.runtime.geo: where a detected person is on the ground, and the files that say so.

- pose: the camera of a photo from EXIF GPS, DJI XMP, bundled camera profiles and flags.
- ground: pixel -> ray -> flat ground (or an elevation model) -> WGS84, with an error estimate.
- tracks: one person seen in several photos becomes one track.
- finds: one person seen by several drones becomes one find (the ground station's grouping).
- writers: detections.geojson, detections.kml, detections_geo.csv, tracks.geojson, thumbnails.
- profiles: bundled camera profiles (focal lengths).

Pure geometry and file formats: the network links (MQTT, MAVLink) live in
:mod:`edgetile.runtime.links`, the daemon's use of both in :mod:`edgetile.runtime.serve`.
Importing this package costs NumPy and OpenCV only: pymap3d and Pillow are imported by the
functions that need them (extra ``geo``).
"""

from __future__ import annotations

from .finds import FindGrouper, Sighting
from .ground import (
    ErrorModel,
    GroundFix,
    box_feet,
    centre_gsd_m,
    ground_to_pixel,
    locate_boxes,
    locate_pixels,
    photo_footprint,
)
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
from .writers import (
    GEO_FORMATS,
    GeoConfig,
    GeoWriter,
    PlacedPhoto,
    georeference,
    ground_data,
    missing_geo_packages,
    parse_formats,
)

__all__ = [
    "CAMERA_PROFILES",
    "GEO_FORMATS",
    "CameraPose",
    "CameraProfile",
    "ErrorModel",
    "FindGrouper",
    "GeoConfig",
    "GeoWriter",
    "GroundFix",
    "PhotoMetadata",
    "PlacedPhoto",
    "PoseError",
    "PoseOverrides",
    "Sighting",
    "Track",
    "TrackBuilder",
    "box_feet",
    "build_tracks",
    "centre_gsd_m",
    "georeference",
    "ground_data",
    "ground_distance_m",
    "ground_to_pixel",
    "locate_boxes",
    "locate_pixels",
    "missing_geo_packages",
    "parse_formats",
    "photo_footprint",
    "pose_from_metadata",
    "pose_from_photo",
    "read_photo_metadata",
    "rotation_ypr",
]
