"""One person seen in several overlapping photos becomes one track.

Photos arrive in order. Each detection joins the nearest track of its class whose position lies
within a radius on the ground, one detection per track per photo (two people side by side in one
photo stay two tracks); a detection near no track starts one. A track's position is the
inverse-variance mean of its detections, so better fixes count more. Track ids never change once
given, so a daemon can publish them as they come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
MIN_ERROR_M = 0.5  # floor of the weights: no fix is better than this
# Fewest metres per degree of latitude (the meridian radius at the equator), and of longitude times
# the cosine of the latitude (a sphere of the semi-major axis, less 10% for the latitude's change
# over a track's radius): bounds that never drop a track within the radius.
M_PER_DEG_LAT_MIN = WGS84_A * (1 - WGS84_E2) * math.pi / 180
M_PER_DEG_LON_MIN = 0.9 * WGS84_A * math.pi / 180


def ground_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Horizontal distance in metres between two nearby WGS84 points (local radii of curvature).

    Accurate to well under a centimetre over the tens of metres that tracking compares.
    """
    phi = math.radians((lat1 + lat2) / 2.0)
    s2 = math.sin(phi) ** 2
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5  # meridian
    n = WGS84_A / math.sqrt(1 - WGS84_E2 * s2)  # prime vertical
    dn = math.radians(lat2 - lat1) * m
    de = math.radians(lon2 - lon1) * n * math.cos(phi)
    return math.hypot(dn, de)


@dataclass
class Track:
    """Detections of one object across photos.

    Attributes:
        track_id: 1-based id, in order of first sighting.
        class_name: The class of its detections.
        lat: Inverse-variance mean latitude of its detections.
        lon: Inverse-variance mean longitude.
        error_m: The smallest error estimate among its detections (their errors are correlated,
            so the mean is not more certain than its best member).
        photos: Images it was seen in, in order, each once.
        detections: (image, index of the detection in that image's list, score) per sighting.
        best_score: Highest score among its detections.
        best: (image, index) of the highest-scoring detection.
    """

    track_id: int
    class_name: str
    lat: float
    lon: float
    error_m: float | None
    photos: list[str] = field(default_factory=list)
    detections: list[tuple[str, int, float]] = field(default_factory=list)
    best_score: float = 0.0
    best: tuple[str, int] = ("", 0)
    _w: float = field(default=0.0, repr=False)
    _wlat: float = field(default=0.0, repr=False)
    _wlon: float = field(default=0.0, repr=False)

    def _add(
        self, image: str, index: int, lat: float, lon: float, score: float, error_m: float | None
    ) -> None:
        w = 1.0 / max(error_m if error_m is not None else 1e3, MIN_ERROR_M) ** 2
        self._w += w
        self._wlat += w * lat
        self._wlon += w * lon
        self.lat, self.lon = self._wlat / self._w, self._wlon / self._w
        if error_m is not None and (self.error_m is None or error_m < self.error_m):
            self.error_m = error_m
        if image not in self.photos:
            self.photos.append(image)
        self.detections.append((image, index, score))
        if score > self.best_score or len(self.detections) == 1:
            self.best_score, self.best = score, (image, index)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "track_id": self.track_id,
            "class_name": self.class_name,
            "lat": round(self.lat, 8),
            "lon": round(self.lon, 8),
            "error_m": None if self.error_m is None else round(self.error_m, 2),
            "count": len(self.detections),
            "photos": list(self.photos),
            "best_score": round(self.best_score, 5),
            "best_image": self.best[0],
            "best_index": self.best[1],
        }


class TrackBuilder:
    """Groups georeferenced detections into tracks, one photo at a time.

    Args:
        radius_m: Largest ground distance between a detection and a track's position for the
            detection to join it. Keep it above the error of two fixes of one person (a few metres
            at 50-100 m with consumer GNSS) and below the spacing of people searched for.
    """

    def __init__(self, radius_m: float = 5.0) -> None:
        if not (math.isfinite(radius_m) and radius_m > 0):
            raise ValueError(f"radius_m: expected a positive number of metres, found {radius_m}")
        self.radius_m = radius_m
        self.tracks: list[Track] = []
        # every track's position and class as arrays, so that a photo's detections are compared with
        # all of them at once: a search's thousands of tracks made the pairwise loop quadratic in Python
        self._lat = np.zeros(0)
        self._lon = np.zeros(0)
        self._class: list[str] = []

    def add_photo(self, image: str, detections: list[dict]) -> list[int | None]:
        """Assign one photo's detections to tracks.

        Args:
            image: The photo's name or path (listed in its tracks).
            detections: Records with class_name, score, and lat, lon, error_m where georeferenced;
                records without lat/lon are skipped.

        Returns:
            The track id of each detection, None for those without coordinates.
        """
        ids: list[int | None] = [None] * len(detections)
        located = [
            i for i, d in enumerate(detections) if d.get("lat") is not None and d.get("lon") is not None
        ]
        pairs = []
        if located and self.tracks:
            lat = np.array([detections[i]["lat"] for i in located], np.float64)[:, None]
            lon = np.array([detections[i]["lon"] for i in located], np.float64)[:, None]
            # a box around each detection that holds its radius: only the tracks in it are measured
            lon_scale = M_PER_DEG_LON_MIN * np.cos(np.radians(lat))
            near = np.abs(self._lat[None] - lat) * M_PER_DEG_LAT_MIN <= self.radius_m
            near &= (np.abs(self._lon[None] - lon) * lon_scale <= self.radius_m) | (
                lon_scale < 0.1 * M_PER_DEG_LON_MIN
            )  # near a pole: no box
            classes = np.asarray(self._class, dtype=object)
            for row, i in enumerate(located):
                d = detections[i]
                for k in np.flatnonzero(near[row] & (classes == d.get("class_name"))).tolist():
                    t = self.tracks[k]
                    dist = ground_distance_m(d["lat"], d["lon"], t.lat, t.lon)
                    if dist <= self.radius_m:
                        pairs.append((dist, i, k))
        pairs.sort()
        taken_det: set[int] = set()
        taken_track: set[int] = set()
        for _dist, i, k in pairs:
            if i in taken_det or k in taken_track:
                continue
            taken_det.add(i)
            taken_track.add(k)
            ids[i] = self.tracks[k].track_id
        for i in located:
            if i not in taken_det:
                d = detections[i]
                self.tracks.append(
                    Track(len(self.tracks) + 1, str(d.get("class_name")), d["lat"], d["lon"], None)
                )
                ids[i] = self.tracks[-1].track_id
        moved: list[Track] = []
        for i in located:
            d = detections[i]
            track_id = ids[i]
            assert track_id is not None  # every located detection was given a track above
            t = self.tracks[track_id - 1]
            t._add(image, i, d["lat"], d["lon"], float(d.get("score", 0.0)), d.get("error_m"))
            moved.append(t)
        grown = len(self.tracks) - len(self._lat)
        if grown:
            self._lat = np.concatenate([self._lat, np.zeros(grown)])
            self._lon = np.concatenate([self._lon, np.zeros(grown)])
            self._class += [t.class_name for t in self.tracks[-grown:]]
        for t in moved:  # their centres as they stand after the whole photo
            self._lat[t.track_id - 1], self._lon[t.track_id - 1] = t.lat, t.lon
        return ids


def build_tracks(photos: list[tuple[str, list[dict]]], radius_m: float = 5.0) -> list[Track]:
    """Tracks of (image, detection records) pairs in photo order; also writes track_id into the records."""
    builder = TrackBuilder(radius_m)
    for image, dets in photos:
        for d, tid in zip(dets, builder.add_photo(image, dets)):
            if tid is not None:
                d["track_id"] = tid
    return builder.tracks
