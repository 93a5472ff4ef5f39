"""One person seen in several overlapping photos becomes one track.

Photos arrive in order. Each detection joins the nearest track of its class whose position lies
within a radius on the ground, one detection per track per photo (two people side by side in one
photo stay two tracks); a detection near no track starts one. A track's position is the
inverse-variance mean of its detections, so better fixes count more. Track ids never change once
given, so a daemon can publish them as they come.

Appearance, the same rule as the station's finds (runtime/geo/finds.py), with track for find:

- **appearance**: when ``appearance_min`` is set and both the sighting and the track carry appearance
  embeddings (runtime/embedding.py), the cosine similarity of the sighting's vector to the mean of
  the track members' vectors is at least ``appearance_min``. Without embeddings on either side,
  position decides alone.

A mean of zero length (members' vectors cancelling exactly) has no direction and agrees with nothing.
So two people standing closer than the radius but dressed differently stay two tracks, and records
without an ``embedding`` are grouped exactly as before. :func:`appearance_agrees` is the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..embedding import decode_embedding

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
MIN_ERROR_M = 0.5  # floor of the weights: no fix is better than this
# Fewest metres per degree of latitude (the meridian radius at the equator), and of longitude times
# the cosine of the latitude (a sphere of the semi-major axis, less 10% for the latitude's change
# over a track's radius): bounds that never drop a track within the radius.
M_PER_DEG_LAT_MIN = WGS84_A * (1 - WGS84_E2) * math.pi / 180
M_PER_DEG_LON_MIN = 0.9 * WGS84_A * math.pi / 180


def appearance_agrees(
    embedding: np.ndarray | None, appearance: np.ndarray | None, appearance_min: float | None
) -> bool:
    """Whether a sighting may join a track by its appearance (the rule in this module's docstring).

    Args:
        embedding: The sighting's vector (:func:`edgetile.runtime.embedding.decode_embedding`), or None.
        appearance: The sum (or mean: only its direction counts) of the track members' vectors, or
            None when no member had one.
        appearance_min: The least cosine similarity, or None for position alone.

    Returns:
        True when the appearance rule does not apply or the similarity is at least appearance_min.
    """
    if appearance_min is None or embedding is None or appearance is None:
        return True
    norms = float(np.linalg.norm(embedding)) * float(np.linalg.norm(appearance))
    if norms == 0.0:  # no direction to compare with: agrees with nothing, as in the station's finds
        return False
    return float(np.dot(embedding, appearance)) / norms >= appearance_min


def record_embedding(record: dict) -> np.ndarray | None:
    """A detection record's ``embedding`` as a unit vector, or None when it has none.

    Raises:
        ValueError: An embedding that is not the record text of one (named).
    """
    text = record.get("embedding")
    return None if text is None else decode_embedding(text)


def check_appearance_min(appearance_min: float | None) -> float | None:
    """appearance_min itself, refused (ValueError naming it) unless None or a cosine in [-1, 1]."""
    if appearance_min is None:
        return None
    if isinstance(appearance_min, bool) or not isinstance(appearance_min, (int, float)):
        raise ValueError(
            f"appearance_min: expected None or a cosine similarity in [-1, 1], found {appearance_min!r}"
        )
    if not (math.isfinite(appearance_min) and -1.0 <= appearance_min <= 1.0):
        raise ValueError(
            f"appearance_min: expected None or a cosine similarity in [-1, 1], found {appearance_min}"
        )
    return float(appearance_min)


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
        appearance: Sum of its members' unit appearance embeddings (its direction is the track's
            appearance), or None when no member had one.
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
    appearance: np.ndarray | None = field(default=None, repr=False)
    _w: float = field(default=0.0, repr=False)
    _wlat: float = field(default=0.0, repr=False)
    _wlon: float = field(default=0.0, repr=False)

    def _add(
        self,
        image: str,
        index: int,
        lat: float,
        lon: float,
        score: float,
        error_m: float | None,
        embedding: np.ndarray | None = None,
    ) -> None:
        if embedding is not None:
            self.appearance = (
                embedding.astype(np.float64) if self.appearance is None else self.appearance + embedding
            )
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
        appearance_min: Least cosine similarity between a detection's ``embedding`` and the track's
            appearance for it to join, besides the radius (see :func:`appearance_agrees`); None:
            position alone, as without embeddings. The embedding model's own threshold is the
            natural value.
    """

    def __init__(self, radius_m: float = 5.0, appearance_min: float | None = None) -> None:
        if not (math.isfinite(radius_m) and radius_m > 0):
            raise ValueError(f"radius_m: expected a positive number of metres, found {radius_m}")
        self.radius_m = radius_m
        self.appearance_min = check_appearance_min(appearance_min)
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
            detections: Records with class_name, score, and lat, lon, error_m where georeferenced,
                and ``embedding`` where an embedding model ran; records without lat/lon are skipped.

        Returns:
            The track id of each detection, None for those without coordinates.
        """
        ids: list[int | None] = [None] * len(detections)
        located = [
            i for i, d in enumerate(detections) if d.get("lat") is not None and d.get("lon") is not None
        ]
        pairs = []
        # decoded only when they count: position-only tracking stays as cheap as it was
        embeddings = {
            i: record_embedding(detections[i]) if self.appearance_min is not None else None for i in located
        }
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
                    if dist <= self.radius_m and appearance_agrees(
                        embeddings[i], t.appearance, self.appearance_min
                    ):
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
            t._add(image, i, d["lat"], d["lon"], float(d.get("score", 0.0)), d.get("error_m"), embeddings[i])
            moved.append(t)
        grown = len(self.tracks) - len(self._lat)
        if grown:
            self._lat = np.concatenate([self._lat, np.zeros(grown)])
            self._lon = np.concatenate([self._lon, np.zeros(grown)])
            self._class += [t.class_name for t in self.tracks[-grown:]]
        for t in moved:  # their centres as they stand after the whole photo
            self._lat[t.track_id - 1], self._lon[t.track_id - 1] = t.lat, t.lon
        return ids


def build_tracks(
    photos: list[tuple[str, list[dict]]], radius_m: float = 5.0, appearance_min: float | None = None
) -> list[Track]:
    """Tracks of (image, detection records) pairs in photo order; also writes track_id into the records."""
    builder = TrackBuilder(radius_m, appearance_min)
    for image, dets in photos:
        for d, tid in zip(dets, builder.add_photo(image, dets)):
            if tid is not None:
                d["track_id"] = tid
    return builder.tracks
