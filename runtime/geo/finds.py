"""One person, one find: sightings from several drones and photos grouped by place, time and appearance.

A ground station gathers the detections (sightings) of every drone. The same person, seen by drone A
at 10:02 and by drone B at 10:07, is one find, so that the operator reviews them once and the decision
goes out once. A sighting joins an existing find of its class when all of these hold:

- **place**: its ground position and the find's agree within their combined position error. Each
  ``error_m`` (runtime/geo/ground.py) is a one-sigma figure: the root of the summed squared ground
  displacements that one-sigma errors of height, heading, tilts and GPS cause, i.e. the RMS horizontal
  error (DRMS), not a 95% radius; a circular error stays within it only 63% of the time. Two
  independent fixes of one person differ by an error whose DRMS is ``sqrt(e1**2 + e2**2)``; twice
  that (2DRMS, the GNSS convention) holds 95.4% (error along one line, as for an oblique view) to
  98.2% (circular error) of the differences. So the gate is
  ``distance <= GATE_SIGMAS * sqrt(e1**2 + e2**2)`` with ``GATE_SIGMAS = 2``. Each error is floored at
  ``MIN_SIGHTING_ERROR_M`` (1 m) first: whatever the GNSS, the foot point of one person's box moves
  by about that much between two views (a person lying down, seen from two sides), so two fixes with
  centimetre errors still agree within 2.8 m, while two people 3 m apart stay two.
- **time**: its time is within ``window_s`` of some member's time (a person found at 10:02 may have
  walked away by 11:00; the window chains, so a find seen every 20 minutes for hours stays one).
- **photo**: the find has no sighting of the same photo: two people side by side in one photo stay
  two finds, however close.
- **split**: the find is not one the sighting was split from by the operator.
- **appearance**: when ``appearance_min`` is set and both the sighting and the find carry appearance
  embeddings (runtime/embedding.py), the cosine similarity of the sighting's vector to the mean of
  the find members' vectors is at least ``appearance_min``. Without embeddings on either side, place
  and time decide alone.

Of several finds that qualify, the sighting joins the closest in normalised distance (distance over
the combined error), the lowest id on a tie. A sighting without coordinates, or with coordinates but
no error bound (``error_m`` None: the ray grazes the horizon, the place is unbounded), is a find of its
own that nothing joins: a wrong grouping hides a person behind another's decision, which costs more
than a second look at a duplicate.

A find's position is the inverse-variance mean of its members' positions (weights ``1 / e**2``, the
errors floored as above) and its error is the smallest member error, not the smaller error of an
independent mean: fixes of one drone share its heading, height and GPS biases, and even across
drones the errors are correlated enough (the same terrain under the flat-ground assumption) that the
mean is not more certain than its best member (the same reasoning as runtime/geo/tracks.py).

Find ids are 1, 2, ... in order of creation and never change; a split gives the sighting a new id.
The grouper holds no I/O: the station replays its store with :meth:`FindGrouper.restore` at start
and records what :meth:`FindGrouper.add` and :meth:`FindGrouper.split` return.

Scale: finds are registered in a grid of ``CELL_M`` cells over the box their gate can reach; a new
sighting looks only at the finds registered in the cells its own reach covers (finds whose reach is
wider than ``WIDE_REACH_M`` are always looked at, and a sighting reaching wider looks at every find,
with NumPy). Tens of thousands of sightings group in seconds (benchmarks/bench_station.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from dataclasses import dataclass, field

import numpy as np

from ..embedding import decode_embedding, similarity
from .tracks import M_PER_DEG_LAT_MIN, M_PER_DEG_LON_MIN, WGS84_A, WGS84_E2

GATE_SIGMAS = 2.0  # 2DRMS: at least 95% of two fixes of one person agree within it
MIN_SIGHTING_ERROR_M = 1.0  # a box's foot point moves about this much between views of one person
CELL_M = 64.0  # grid cell: about the reach of a typical sighting (errors of 3-15 m)
WIDE_REACH_M = 256.0  # finds reaching wider are looked at by every sighting, not through the grid
_CELL_DEG = CELL_M / M_PER_DEG_LAT_MIN
_ROWS = math.ceil(180.0 / _CELL_DEG) + 1
_COLS = math.ceil(360.0 / _CELL_DEG)


@dataclass(frozen=True)
class Sighting:
    """One detection of one drone, as the station stores it.

    Attributes:
        key: The station's sighting row id (unique).
        photo: The station's photo id: two sightings of one photo never share a find.
        drone_id: The drone that saw it.
        time: Unix seconds: the photo's time (taken_at), else when its daemon committed it.
        lat: Ground latitude in degrees (WGS84), None when not georeferenced.
        lon: Ground longitude in degrees, None when not georeferenced.
        error_m: One-sigma horizontal error (RMS, metres) of lat/lon; None when unbounded.
        class_name: The detector's class.
        embedding: Appearance embedding text (runtime/embedding.py), when the daemon computed one.
    """

    key: int
    photo: int
    drone_id: str
    time: float
    lat: float | None
    lon: float | None
    error_m: float | None
    class_name: str
    embedding: str | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.time):
            raise ValueError(f"sighting {self.key}: time: expected unix seconds, found {self.time}")
        if (self.lat is None) != (self.lon is None):
            raise ValueError(
                f"sighting {self.key}: expected both lat and lon or neither, "
                f"found lat={self.lat} lon={self.lon}"
            )
        if self.lat is not None and self.lon is not None:
            if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
                raise ValueError(f"sighting {self.key}: lat: expected degrees in [-90, 90], found {self.lat}")
            if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
                raise ValueError(
                    f"sighting {self.key}: lon: expected degrees in [-180, 180], found {self.lon}"
                )
        if self.error_m is not None and not (math.isfinite(self.error_m) and self.error_m >= 0):
            raise ValueError(
                f"sighting {self.key}: error_m: expected metres >= 0 or None, found {self.error_m}"
            )


def _bounded(s: Sighting) -> bool:
    """Whether its place is bounded, so that it can share a find."""
    return s.lat is not None and s.lon is not None and s.error_m is not None


def _wrap(dlon: np.ndarray | float) -> np.ndarray | float:
    """Longitude difference into [-180, 180): a find across the antimeridian stays together."""
    return (np.asarray(dlon) + 180.0) % 360.0 - 180.0


def _distance_m(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Ground distances from one point to many nearby points (local radii, as tracks.ground_distance_m)."""
    phi = np.radians((lat + lats) / 2.0)
    s2 = np.sin(phi) ** 2
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5
    n = WGS84_A / np.sqrt(1 - WGS84_E2 * s2)
    dn = np.radians(lats - lat) * m
    de = np.radians(_wrap(lons - lon)) * n * np.cos(phi)
    return np.hypot(dn, de)


def _reach_m(error_m: float) -> float:
    return GATE_SIGMAS * max(error_m, MIN_SIGHTING_ERROR_M)


def _cells(lat: float, lon: float, reach_m: float) -> list[tuple[int, int]] | None:
    """Grid cells covering the box of a disc of ``reach_m`` around a point; None: too wide for the grid."""
    lon_scale = M_PER_DEG_LON_MIN * math.cos(math.radians(lat))
    if reach_m > WIDE_REACH_M or lon_scale < 0.1 * M_PER_DEG_LON_MIN:  # near a pole: no box
        return None
    dlat = reach_m / M_PER_DEG_LAT_MIN
    dlon = reach_m / lon_scale
    r0 = int((max(lat - dlat, -90.0) + 90.0) // _CELL_DEG)
    r1 = int((min(lat + dlat, 90.0) + 90.0) // _CELL_DEG)
    c0 = int(((lon - dlon + 180.0) % 360.0) // _CELL_DEG)
    span = int(math.ceil(2 * dlon / _CELL_DEG)) + 2  # + 1: the last column is narrower
    return [(r, (c0 + k) % _COLS) for r in range(r0, r1 + 1) for k in range(span)]


@dataclass
class _Find:
    """A find's members and the running sums its position comes from."""

    find_id: int
    class_name: str
    members: dict[int, Sighting] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)  # sorted
    photos: set[int] = field(default_factory=set)
    ref_lon: float | None = None  # longitudes are averaged as offsets from it (antimeridian)
    w: float = 0.0
    wlat: float = 0.0
    wdlon: float = 0.0
    plain_n: int = 0  # located members without an error bound (only through restore)
    plain_lat: float = 0.0
    plain_dlon: float = 0.0
    min_error: float | None = None
    emb_sum: np.ndarray | None = None
    emb_n: int = 0

    def take(self, s: Sighting, vector: np.ndarray | None) -> None:
        self.members[s.key] = s
        insort(self.times, s.time)
        self.photos.add(s.photo)
        if s.lat is not None and s.lon is not None:
            if self.ref_lon is None:
                self.ref_lon = s.lon
            dlon = float(_wrap(s.lon - self.ref_lon))
            if s.error_m is None:
                self.plain_n += 1
                self.plain_lat += s.lat
                self.plain_dlon += dlon
            else:
                w = 1.0 / max(s.error_m, MIN_SIGHTING_ERROR_M) ** 2
                self.w += w
                self.wlat += w * s.lat
                self.wdlon += w * dlon
                self.min_error = s.error_m if self.min_error is None else min(self.min_error, s.error_m)
        if vector is not None:
            self.emb_sum = vector.astype(np.float64) if self.emb_sum is None else self.emb_sum + vector
            self.emb_n += 1

    def position(self) -> tuple[float | None, float | None, float | None]:
        if self.ref_lon is None:
            return None, None, None
        if self.w > 0:
            lat, dlon, err = self.wlat / self.w, self.wdlon / self.w, self.min_error
        else:
            lat, dlon, err = self.plain_lat / self.plain_n, self.plain_dlon / self.plain_n, None
        return lat, float(_wrap(self.ref_lon + dlon)), err

    @property
    def gated(self) -> bool:
        return self.w > 0


class FindGrouper:
    """Groups sightings into finds as they arrive (see the module docstring for the rules).

    Args:
        window_s: Largest time between a sighting and some member of a find for it to join.
        appearance_min: Least cosine similarity of appearance embeddings for a sighting to join a find
            when both have embeddings (the embedding model's own threshold); None: appearance is not
            compared.
    """

    def __init__(self, window_s: float = 1800.0, appearance_min: float | None = None) -> None:
        if not (math.isfinite(window_s) and window_s >= 0):
            raise ValueError(f"window_s: expected seconds >= 0, found {window_s}")
        if appearance_min is not None and not (-1.0 <= appearance_min <= 1.0):
            raise ValueError(
                f"appearance_min: expected a cosine similarity in [-1, 1], found {appearance_min}"
            )
        self.window_s = float(window_s)
        self.appearance_min = appearance_min
        self._finds: dict[int, _Find] = {}
        self._find_of: dict[int, int] = {}  # sighting key -> find id
        self._split_from: dict[int, set[int]] = {}
        self._next_id = 1
        self._class_code: dict[str, int] = {}
        # per find id, what the gate needs, so that candidates are compared at once with NumPy
        self._lat = np.zeros(64)
        self._lon = np.zeros(64)
        self._err = np.full(64, np.nan)  # floored error; NaN: not gated (nothing joins it)
        self._tmin = np.zeros(64)
        self._tmax = np.zeros(64)
        self._cls = np.full(64, -1, np.int64)
        self._grid: dict[tuple[int, int], set[int]] = {}
        self._cells_of: dict[int, list[tuple[int, int]]] = {}
        self._wide: set[int] = set()

    # -- public ------------------------------------------------------------------------------------

    def add(self, s: Sighting) -> int:
        """Group a new sighting.

        Returns:
            The id of the find it joined, or of the new find it starts.

        Raises:
            ValueError: The key was grouped before, or its embedding is not one.
        """
        self._check_new(s)
        vector = self._vector(s)
        find_id = self._best_find(s, vector) if _bounded(s) else None
        if find_id is None:
            find_id = self._next_id
            self._new_find(find_id, s.class_name)
        self._join(find_id, s, vector)
        return find_id

    def restore(self, s: Sighting, find_id: int, split_from: set[int]) -> None:
        """Put a stored sighting back where the store says it was (at start, in any order).

        Args:
            s: The sighting.
            find_id: The find it belongs to (created when not known yet).
            split_from: The finds it was split from.

        Raises:
            ValueError: The key was restored before, the find holds another class or already this
                photo, or the find is one it was split from: the store contradicts itself.
        """
        self._check_new(s)
        if not (isinstance(find_id, int) and find_id >= 1):
            raise ValueError(f"sighting {s.key}: find_id: expected an id >= 1, found {find_id!r}")
        if find_id in split_from:
            raise ValueError(f"sighting {s.key}: stored in find {find_id}, which it was split from")
        f = self._finds.get(find_id)
        if f is None:
            self._new_find(find_id, s.class_name)
        elif f.class_name != s.class_name:
            raise ValueError(
                f"sighting {s.key}: class {s.class_name!r} stored in find {find_id} of class {f.class_name!r}"
            )
        elif s.photo in f.photos:
            raise ValueError(f"sighting {s.key}: find {find_id} already has a sighting of photo {s.photo}")
        self._next_id = max(self._next_id, find_id + 1)
        if split_from:
            self._split_from[s.key] = set(split_from)
        self._join(find_id, s, self._vector(s))

    def split(self, key: int) -> tuple[int, int]:
        """Take a sighting out of its find into a new find that is never grouped with the old one.

        Returns:
            (the new find's id, the id of the find it left).

        Raises:
            KeyError: No sighting has this key.
            ValueError: The sighting is alone in its find.
        """
        old_id = self._find_of.get(key)
        if old_id is None:
            raise KeyError(f"sighting {key}: not grouped")
        old = self._finds[old_id]
        if len(old.members) == 1:
            raise ValueError(
                f"sighting {key}: expected a find with other sightings, found it alone in find {old_id}"
            )
        s = old.members[key]
        rebuilt = _Find(old_id, old.class_name)
        for m in old.members.values():
            if m.key != key:
                rebuilt.take(m, self._vector(m))
        self._finds[old_id] = rebuilt
        self._index(rebuilt)
        new_id = self._next_id
        self._new_find(new_id, s.class_name)
        self._split_from.setdefault(key, set()).add(old_id)
        self._join(new_id, s, self._vector(s))
        return new_id, old_id

    def members(self, find_id: int) -> list[Sighting]:
        """The find's sightings in time order; KeyError for an unknown find."""
        f = self._find(find_id)
        return sorted(f.members.values(), key=lambda m: (m.time, m.key))

    def position(self, find_id: int) -> tuple[float | None, float | None, float | None]:
        """(lat, lon, error_m) of the find (see the module docstring); Nones without coordinates."""
        return self._find(find_id).position()

    # -- internals ---------------------------------------------------------------------------------

    def _find(self, find_id: int) -> _Find:
        f = self._finds.get(find_id)
        if f is None:
            raise KeyError(f"find {find_id}: unknown")
        return f

    def _check_new(self, s: Sighting) -> None:
        if not isinstance(s, Sighting):
            raise TypeError(f"expected a Sighting, found {type(s).__name__}")
        if s.key in self._find_of:
            raise ValueError(f"sighting {s.key}: already in find {self._find_of[s.key]}")

    def _vector(self, s: Sighting) -> np.ndarray | None:
        if s.embedding is None:
            return None
        try:
            return decode_embedding(s.embedding)
        except ValueError as e:
            raise ValueError(f"sighting {s.key}: {e}") from None

    def _new_find(self, find_id: int, class_name: str) -> None:
        self._finds[find_id] = _Find(find_id, class_name)
        self._next_id = max(self._next_id, find_id + 1)
        if find_id >= len(self._lat):
            size = max(2 * len(self._lat), find_id + 1)
            grow = size - len(self._lat)
            self._lat = np.concatenate([self._lat, np.zeros(grow)])
            self._lon = np.concatenate([self._lon, np.zeros(grow)])
            self._err = np.concatenate([self._err, np.full(grow, np.nan)])
            self._tmin = np.concatenate([self._tmin, np.zeros(grow)])
            self._tmax = np.concatenate([self._tmax, np.zeros(grow)])
            self._cls = np.concatenate([self._cls, np.full(grow, -1, np.int64)])
        self._cls[find_id] = self._class_code.setdefault(class_name, len(self._class_code))

    def _join(self, find_id: int, s: Sighting, vector: np.ndarray | None) -> None:
        f = self._finds[find_id]
        f.take(s, vector)
        self._find_of[s.key] = find_id
        self._index(f)

    def _index(self, f: _Find) -> None:
        """Bring the find's row of the arrays and its grid cells up to date."""
        i = f.find_id
        self._tmin[i], self._tmax[i] = f.times[0], f.times[-1]
        lat, lon, err = f.position()
        cells: list[tuple[int, int]] | None = []
        if f.gated and lat is not None and lon is not None and err is not None:
            self._lat[i], self._lon[i] = lat, lon
            self._err[i] = max(err, MIN_SIGHTING_ERROR_M)
            cells = _cells(lat, lon, _reach_m(err))
        else:
            self._err[i] = np.nan
        old = self._cells_of.get(i, [])
        if cells is None:
            self._wide.add(i)
            cells = []
        else:
            self._wide.discard(i)
        if cells != old:
            for c in old:
                self._grid[c].discard(i)
            for c in cells:
                self._grid.setdefault(c, set()).add(i)
            self._cells_of[i] = cells

    def _best_find(self, s: Sighting, vector: np.ndarray | None) -> int | None:
        assert s.lat is not None and s.lon is not None and s.error_m is not None  # _bounded(s)
        code = self._class_code.get(s.class_name)
        if code is None:
            return None
        cells = _cells(s.lat, s.lon, _reach_m(s.error_m))
        if cells is None:
            ids = np.flatnonzero(np.isfinite(self._err[: self._next_id]))
        else:
            near = set(self._wide)
            for c in cells:
                near.update(self._grid.get(c, ()))
            if not near:
                return None
            ids = np.fromiter(near, np.int64, len(near))
        ids = ids[(self._cls[ids] == code) & np.isfinite(self._err[ids])]
        w = self.window_s
        ids = ids[(self._tmin[ids] - w <= s.time) & (s.time <= self._tmax[ids] + w)]
        if len(ids) == 0:
            return None
        combined = np.sqrt(max(s.error_m, MIN_SIGHTING_ERROR_M) ** 2 + self._err[ids] ** 2)
        score = _distance_m(s.lat, s.lon, self._lat[ids], self._lon[ids]) / combined
        keep = score <= GATE_SIGMAS
        ids, score = ids[keep], score[keep]
        split_from = self._split_from.get(s.key, set())
        for k in np.lexsort((ids, score)).tolist():
            f = self._finds[int(ids[k])]
            if f.find_id in split_from or s.photo in f.photos:
                continue
            j = bisect_left(f.times, s.time - w)
            if j == len(f.times) or f.times[j] > s.time + w:
                continue
            if self.appearance_min is not None and vector is not None and f.emb_sum is not None:
                if not np.any(f.emb_sum) or similarity(vector, f.emb_sum) < self.appearance_min:
                    continue
            return f.find_id
        return None


__all__ = [
    "CELL_M",
    "GATE_SIGMAS",
    "MIN_SIGHTING_ERROR_M",
    "WIDE_REACH_M",
    "FindGrouper",
    "Sighting",
]
