"""Georeferenced outputs: detections.geojson, detections.kml, detections_geo.csv, tracks and thumbnails.

GeoWriter sits beside the pixel ResultWriter: for each photo it finds the camera pose, returns its
Detections with ground coordinates, a crop thumbnail and a track per box in their data (so that
detections.json carries them too), and keeps the chosen files current
(rewritten atomically at most every few seconds and at the end). A photo without a usable pose
keeps its pixel results and gets a one-line warning instead of coordinates; only georeferenced
detections appear in the geographic files, so that mapping tools never import a made-up point.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
import math
import os
import re
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..outputs import csv_text_cell
from ..results import NULL, Detections
from .ground import ElevationFn, ErrorModel, locate_boxes
from .pose import CameraPose, PoseError, PoseOverrides, pose_from_photo
from .tracks import Track, TrackBuilder, check_appearance_min

GEO_FORMATS = ("geojson", "kml", "csv")

# Characters XML 1.0 cannot carry, even escaped (C0 controls but tab, LF and CR; U+FFFE/U+FFFF), and
# lone surrogates (a file name's undecodable bytes), which UTF-8 cannot encode.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_safe(text: str) -> str:
    """``text`` with every character XML 1.0 cannot carry written as a visible ``\\xNN`` / ``\\uNNNN``.

    A file name with a control character in it must not make the whole KML document unreadable.
    """
    return _NOT_XML.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else f"\\u{ord(m[0]):04x}", text)


GEO_CSV_HEADER = [
    "image",
    "index",
    "class_name",
    "score",
    "latitude",
    "longitude",
    "error_m",
    "ground_alt_m",
    "distance_m",
    "x1",
    "y1",
    "x2",
    "y2",
    "track_id",
    "thumbnail",
]
KML_NS = "http://www.opengis.net/kml/2.2"
THUMB_MIN_SIDE = 96
THUMB_MAX_SIDE = 512
#: What georeferencing adds to each box that reaches the ground, in the order records list them.
GROUND_FIELDS = ("lat", "lon", "ground_alt_m", "error_m", "distance_m")
NO_GROUND = "the ray through the box's bottom-centre does not reach the ground"
THUMB_CONTEXT = 2.5  # thumbnail side / box side: enough ground around a person to judge a false positive


def parse_formats(text: str) -> tuple[str, ...]:
    """'geojson,kml,csv' -> ('geojson', 'kml', 'csv'); ValueError naming the choices otherwise."""
    out: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in GEO_FORMATS:
            raise ValueError(
                f"--format: expected a comma-separated list of {', '.join(GEO_FORMATS)}, found {part!r}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(
            f"--format: expected a comma-separated list of {', '.join(GEO_FORMATS)}, found {text!r}"
        )
    return tuple(out)


def missing_geo_packages() -> list[str]:
    """Packages of the ``geo`` extra that are not installed (pymap3d, Pillow)."""
    return [
        pkg
        for mod, pkg in (("pymap3d", "pymap3d"), ("PIL", "pillow"))
        if importlib.util.find_spec(mod) is None
    ]


@dataclass(frozen=True)
class GeoConfig:
    """How detections become places.

    Attributes:
        formats: Which of geojson, kml, csv to write (empty: georeference nothing).
        overrides: Pose values from flags.
        errors: Uncertainties behind each point's error estimate.
        track_radius_m: Ground radius within which sightings in different photos join one track.
        appearance_min: Least cosine similarity of a detection's appearance embedding with a track's
            for it to join, besides the radius (TrackBuilder); None: position alone.
        thumbnails: Write a crop thumbnail per detection to DIR/thumbs/.
    """

    formats: tuple[str, ...] = ()
    overrides: PoseOverrides = field(default_factory=PoseOverrides)
    errors: ErrorModel = field(default_factory=ErrorModel)
    track_radius_m: float = 5.0
    appearance_min: float | None = None
    thumbnails: bool = True

    def __post_init__(self) -> None:
        for f in self.formats:
            if f not in GEO_FORMATS:
                raise ValueError(f"formats: expected names among {', '.join(GEO_FORMATS)}, found {f!r}")
        if not (math.isfinite(self.track_radius_m) and self.track_radius_m > 0):
            raise ValueError(
                f"track_radius_m: expected a positive number of metres, found {self.track_radius_m}"
            )
        check_appearance_min(self.appearance_min)


def crop_thumbnail(image: np.ndarray, bbox: list[float] | np.ndarray) -> np.ndarray:
    """A square crop around a box, with the box outlined, at most THUMB_MAX_SIDE pixels wide.

    Args:
        image: (H, W, 3) uint8 BGR photo.
        bbox: x1, y1, x2, y2 in pixels.

    Returns:
        (h, w, 3) uint8 BGR crop (smaller than the square where the box is near the photo's edge).
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    side = max(THUMB_MIN_SIDE, THUMB_CONTEXT * max(x2 - x1, y2 - y1))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(max(0, math.floor(cx - side / 2))), int(max(0, math.floor(cy - side / 2)))
    right, bottom = int(min(w, math.ceil(cx + side / 2))), int(min(h, math.ceil(cy + side / 2)))
    crop = image[top:bottom, left:right].copy()
    thick = max(1, int(round(side / 150)))
    cv2.rectangle(
        crop,
        (int(round(x1)) - left - thick, int(round(y1)) - top - thick),
        (int(round(x2)) - left + thick, int(round(y2)) - top + thick),
        (0, 0, 255),
        thick,
    )
    if max(crop.shape[:2]) > THUMB_MAX_SIDE:
        s = THUMB_MAX_SIDE / max(crop.shape[:2])
        crop = cv2.resize(
            crop,
            (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
            interpolation=cv2.INTER_AREA,
        )
    return crop


def record_boxes(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) float64 boxes rounded as detections.json writes them (0.01 px).

    Coordinates and thumbnails are made from these, so that a result read back from its record
    places the same point and crops the same thumbnail.
    """
    return np.array([[round(float(v), 2) for v in b] for b in xyxy], np.float64).reshape(-1, 4)


def ground_data(
    xyxy: np.ndarray,
    pose: CameraPose,
    errors: ErrorModel | None = None,
    elevation: ElevationFn | None = None,
) -> dict[str, list]:
    """Ground coordinates of boxes as per-box data (:attr:`Detections.data`).

    Args:
        xyxy: (N, 4) boxes x1, y1, x2, y2 in pixels.
        pose: The camera of their photo.

    Returns:
        GROUND_FIELDS and geo_warning, each a list of N values: a box whose ray reaches the ground has
        the ground fields (NULL for a ground_alt_m or error_m that is not known) and no geo_warning; the
        others (rays at or above the horizon) only the geo_warning.
    """
    boxes = record_boxes(xyxy)
    fixes = locate_boxes(pose, boxes, errors, elevation) if len(boxes) else []
    data: dict[str, list] = {k: [] for k in (*GROUND_FIELDS, "geo_warning")}
    for fix in fixes:
        values = dict.fromkeys(GROUND_FIELDS) if fix is None else fix.to_dict()
        for k in GROUND_FIELDS:
            data[k].append(NULL if fix is not None and values[k] is None else values[k])
        data["geo_warning"].append(NO_GROUND if fix is None else None)
    return data


def georeference(
    dets: Detections,
    pose: CameraPose,
    errors: ErrorModel | None = None,
    elevation: ElevationFn | None = None,
) -> Detections:
    """The detections with lat, lon, ground_alt_m, error_m, distance_m (or a geo_warning) in their data."""
    return dets.with_data(ground_data(dets.xyxy, pose, errors, elevation))


def located_count(dets: Detections) -> int:
    """How many of the detections have ground coordinates."""
    return sum(v is not None for v in dets.data.get("lat", []))


def feature(det: dict, image: str) -> dict:
    """One GeoJSON Point feature (RFC 7946: [longitude, latitude]) for a georeferenced detection."""
    props = {"image": image}
    props.update({k: v for k, v in det.items() if k not in ("lat", "lon")})
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [det["lon"], det["lat"]]},
        "properties": props,
    }


class GeoDocuments:
    """GeoJSON, KML and CSV of georeferenced detection records and their tracks.

    Args:
        photos: (image, detection records) per photo, in order; records with lat/lon are placed.
        tracks: The tracks of those records (see TrackBuilder), or None to build them here with
            track_radius_m and appearance_min (the documents then give each record its track_id; the
            records passed in stay as they are).
        track_radius_m: Radius for building tracks.
        appearance_min: Least appearance similarity for building tracks (None: position alone).
    """

    def __init__(
        self,
        photos: list[tuple[str, list[dict]]],
        tracks: list[Track] | None = None,
        track_radius_m: float = 5.0,
        appearance_min: float | None = None,
    ) -> None:
        if tracks is None:
            builder = TrackBuilder(track_radius_m, appearance_min)
            tracked = []
            for image, dets in photos:
                ids = builder.add_photo(image, dets)
                tracked.append((image, [d if t is None else {**d, "track_id": t} for d, t in zip(dets, ids)]))
            photos, tracks = tracked, builder.tracks
        self.photos = photos
        self.tracks = tracks

    def _located(self) -> list[tuple[str, dict]]:
        return [(img, d) for img, dets in self.photos for d in dets if d.get("lat") is not None]

    def _thumb_of(self, image: str, index: int) -> str | None:
        for img, dets in self.photos:
            if img == image and index < len(dets):
                return dets[index].get("thumbnail")
        return None

    def geojson(self) -> dict:
        """The detections as a GeoJSON FeatureCollection."""
        return {"type": "FeatureCollection", "features": [feature(d, img) for img, d in self._located()]}

    def tracks_geojson(self) -> dict:
        """The tracks as a GeoJSON FeatureCollection, one Point per track listing its photos."""
        feats = []
        for t in self.tracks:
            props = t.to_dict()
            props.pop("lat")
            props.pop("lon")
            props["thumbnail"] = self._thumb_of(t.best[0], t.best[1])
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [round(t.lon, 8), round(t.lat, 8)]},
                    "properties": props,
                }
            )
        return {"type": "FeatureCollection", "features": feats}

    def kml(self) -> str:
        """The detections and tracks as a KML 2.2 document (two folders)."""
        root = ET.Element("kml", xmlns=KML_NS)  # children inherit the default namespace
        doc = ET.SubElement(root, "Document")
        ET.SubElement(doc, "name").text = "edgetile detections"
        for sid, colour in (("detection", "ff0000ff"), ("track", "ff00ffff")):
            style = ET.SubElement(doc, "Style", id=sid)
            icon = ET.SubElement(style, "IconStyle")
            ET.SubElement(icon, "color").text = colour

        def placemark(
            parent: ET.Element, name: str, style: str, lat: float, lon: float, data: dict, thumb: str | None
        ) -> None:
            pm = ET.SubElement(parent, "Placemark")
            ET.SubElement(pm, "name").text = name
            # The description is HTML that Google Earth and QGIS render: every value is text in it
            # (a photo named "<img src=x onerror=...>.jpg" is shown, never run), the thumbnail a URL.
            lines = [
                html.escape(f"{k}: {json.dumps(v) if isinstance(v, (list, dict)) else v}")
                for k, v in data.items()
                if v is not None and k != "thumbnail"
            ]
            src = html.escape(urllib.parse.quote(thumb, safe="/", errors="surrogateescape")) if thumb else ""
            page = "<br/>".join(lines) + (f'<br/><img src="{src}" width="256"/>' if thumb else "")
            ET.SubElement(pm, "description").text = page
            ET.SubElement(pm, "styleUrl").text = f"#{style}"
            ext = ET.SubElement(pm, "ExtendedData")
            for k, v in data.items():
                if v is None:
                    continue
                el = ET.SubElement(ext, "Data", name=str(k))
                ET.SubElement(el, "value").text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            point = ET.SubElement(pm, "Point")
            ET.SubElement(point, "coordinates").text = f"{lon:.8f},{lat:.8f},0"

        folder = ET.SubElement(doc, "Folder")
        ET.SubElement(folder, "name").text = "Detections"
        for img, d in self._located():
            data: dict = {"image": img}
            data.update({k: v for k, v in d.items() if k not in ("lat", "lon")})
            placemark(
                folder,
                f"{d.get('class_name', '')} {float(d.get('score', 0)):.2f}",
                "detection",
                d["lat"],
                d["lon"],
                data,
                d.get("thumbnail"),
            )
        folder = ET.SubElement(doc, "Folder")
        ET.SubElement(folder, "name").text = "Tracks"
        for t in self.tracks:
            data = t.to_dict()
            lat, lon = data.pop("lat"), data.pop("lon")
            placemark(
                folder,
                f"track {t.track_id}: {t.class_name} in {len(t.photos)} photo(s)",
                "track",
                lat,
                lon,
                data,
                self._thumb_of(t.best[0], t.best[1]),
            )
        text = ET.tostring(root, encoding="unicode")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_safe(text) + "\n"

    def csv_text(self) -> str:
        """The detections as CSV with latitude and longitude columns, one row per georeferenced detection."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(GEO_CSV_HEADER)
        for img, dets in self.photos:
            for i, d in enumerate(dets):
                if d.get("lat") is None:
                    continue
                x1, y1, x2, y2 = d["bbox"]
                w.writerow(
                    [
                        csv_text_cell(img),
                        i,
                        csv_text_cell(d.get("class_name", "")),
                        d.get("score", ""),
                        d["lat"],
                        d["lon"],
                        "" if d.get("error_m") is None else d["error_m"],
                        "" if d.get("ground_alt_m") is None else d["ground_alt_m"],
                        d.get("distance_m", ""),
                        x1,
                        y1,
                        x2,
                        y2,
                        d.get("track_id", ""),
                        csv_text_cell(d.get("thumbnail", "")),
                    ]
                )
        return buf.getvalue()


@dataclass(frozen=True)
class PlacedPhoto:
    """What GeoWriter.add made of one photo.

    Attributes:
        detections: Its detections with thumbnail, ground coordinates and track_id in their data.
        camera: The pose's summary (CameraPose.summary()), None when the photo has no usable pose.
        warning: Why the photo has no usable pose (one line), or None.
    """

    detections: Detections
    camera: dict | None = None
    warning: str | None = None

    def record_fields(self) -> dict[str, Any]:
        """What the photo's detections.json record adds: camera, or geo_warning."""
        return {"camera": self.camera} if self.camera is not None else {"geo_warning": self.warning}


class GeoWriter:
    """Georeferences each photo's detections and keeps the geographic files current.

    Args:
        out_dir: Output folder (created); files are DIR/detections.geojson, DIR/tracks.geojson,
            DIR/detections.kml, DIR/detections_geo.csv and DIR/thumbs/.
        config: Formats, pose overrides, error model, track radius.
        elevation: Optional ground elevation model (a DEM), in the datum of the absolute altitude.
        flush_every_s: Longest time between rewrites of the files.
        names: Class index -> name, for the records of the files and the tracks.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        config: GeoConfig,
        elevation: ElevationFn | None = None,
        flush_every_s: float = 2.0,
        names: Mapping[int, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.elevation = elevation
        self.names = dict(names or {})
        self.tracks = TrackBuilder(config.track_radius_m, config.appearance_min)
        self.photos: list[tuple[str, Detections]] = []
        self.thumb_dir = self.out_dir / "thumbs"
        self.geojson_path = self.out_dir / "detections.geojson"
        self.tracks_path = self.out_dir / "tracks.geojson"
        self.kml_path = self.out_dir / "detections.kml"
        self.csv_path = self.out_dir / "detections_geo.csv"
        self._thumb_names: set[str] = set()
        self._flush_every = flush_every_s
        self._last_flush = 0.0
        self._closed = False
        self.located = 0
        self.flush()

    @property
    def paths(self) -> list[Path]:
        """The files this writer keeps, in the order of its formats."""
        by_format = {
            "geojson": [self.geojson_path, self.tracks_path],
            "kml": [self.kml_path],
            "csv": [self.csv_path],
        }
        return [p for f in self.config.formats for p in by_format[f]]

    def pose_for(self, image_path: str) -> CameraPose:
        """The pose of a photo file with the configured overrides (PoseError when unusable)."""
        return pose_from_photo(image_path, self.config.overrides)

    def add(
        self,
        image_name: str,
        dets: Detections,
        image: np.ndarray | None = None,
        pose: CameraPose | None = None,
    ) -> PlacedPhoto:
        """Georeference one photo's detections and write their thumbnails.

        Args:
            image_name: The photo's path (its pose is read from it, and the files name it).
            dets: Its detections.
            image: The decoded photo, for thumbnails (None: no thumbnails).
            pose: The camera, when known from elsewhere (MAVLink); None reads the photo's metadata.

        Returns:
            The detections with their new data, and the camera, or a one-line warning when the photo
            has no usable pose (its pixel results stay).
        """
        name = str(image_name)
        warning = None
        if image is not None and self.config.thumbnails:
            boxes = record_boxes(dets.xyxy)
            thumbs = [self._write_thumbnail(image, b, name, i) for i, b in enumerate(boxes)]
            dets = dets.with_data({"thumbnail": thumbs})
        if pose is None:
            try:
                pose = self.pose_for(name)
            except PoseError as exc:
                warning = str(exc)
        if pose is not None:
            dets = georeference(dets, pose, self.config.errors, self.elevation)
            self.located += located_count(dets)
            dets = dets.with_data({"track_id": self.tracks.add_photo(name, dets.to_records(self.names))})
        self.photos.append((name, dets))
        now = time.monotonic()
        if now - self._last_flush >= self._flush_every:
            self.flush()
        return PlacedPhoto(dets, None if pose is None else pose.summary(), warning)

    def restore(self, image_name: str, detections: list[dict], located: bool) -> None:
        """Take an earlier run's georeferenced records of a photo as they are (``detect --resume``).

        They join the files and the tracks in input order, as if just placed; their thumbnails stay
        and keep their names.

        Args:
            image_name: The photo's path, as its record names it.
            detections: Its records' "detections" (with lat, lon, error_m, thumbnail, track_id).
            located: Whether the photo had a usable pose (its record has "camera"): only then were its
                detections offered to the tracks.
        """
        dets = Detections.from_records(detections, self.names or None)
        for thumb in dets.data.get("thumbnail", []):
            if thumb:
                self._thumb_names.add(Path(str(thumb)).name)
        if located:
            self.located += located_count(dets)
            # The same records in the same order give the same track ids as the earlier run's.
            untracked = [{k: v for k, v in d.items() if k != "track_id"} for d in detections]
            self.tracks.add_photo(str(image_name), untracked)
        self.photos.append((str(image_name), dets))

    def _write_thumbnail(self, image: np.ndarray, bbox: np.ndarray, image_name: str, index: int) -> str:
        self.thumb_dir.mkdir(exist_ok=True)
        stem = Path(image_name).stem
        name, k = f"{stem}_{index:03d}.jpg", 1
        while name in self._thumb_names:  # same file name from different folders
            name, k = f"{stem}-{k}_{index:03d}.jpg", k + 1
        self._thumb_names.add(name)
        cv2.imwrite(str(self.thumb_dir / name), crop_thumbnail(image, bbox), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return f"thumbs/{name}"

    def documents(self) -> GeoDocuments:
        """The files' contents now."""
        photos = [(name, dets.to_records(self.names)) for name, dets in self.photos]
        return GeoDocuments(photos, self.tracks.tracks)

    def flush(self) -> None:
        """Rewrite every chosen file now."""
        from ..files import write_json_atomic, write_text_atomic

        docs = self.documents()
        if "geojson" in self.config.formats:
            write_json_atomic(self.geojson_path, docs.geojson())
            write_json_atomic(self.tracks_path, docs.tracks_geojson())
        if "kml" in self.config.formats:
            write_text_atomic(self.kml_path, docs.kml())
        if "csv" in self.config.formats:
            write_text_atomic(self.csv_path, docs.csv_text())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write the final files. Safe to call twice."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    def __enter__(self) -> GeoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
