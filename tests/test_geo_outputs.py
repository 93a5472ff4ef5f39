"""GeoJSON / KML / CSV outputs, thumbnails and tracks: checked by the geojson package, fastkml and csv,
and `edgetile detect --format ...` as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import geojson
import numpy as np
import pymap3d
import pytest
from fastkml import kml
from geo_photos import dji_values, write_photo

from edgetile.runtime.geo import (
    CameraPose,
    GeoConfig,
    GeoWriter,
    PoseOverrides,
    TrackBuilder,
    georeference,
    ground_distance_m,
    ground_to_pixel,
    locate_boxes,
    pose_from_photo,
)
from edgetile.runtime.results import NULL, Detections
from onnx_models import red_blob_model

NAMES = {0: "person"}
LAT0, LON0 = 55.75, 37.62
W, H, F, AGL = 640, 480, 500.0, 60.0
ALL = ("geojson", "kml", "csv")


def offset(north, east, lat=LAT0, lon=LON0):
    la, lo, _ = pymap3d.ned2geodetic(north, east, 0.0, lat, lon, 0.0)
    return float(la), float(lo)


def flight(n_photos=3, step_m=25.0, yaw_jitter=(0.0, 0.0, 0.0)):
    """Nadir photos 25 m apart flying north, 60 m up: consecutive footprints (77 x 58 m) overlap."""
    return [
        CameraPose.from_angles(*offset(k * step_m, 0.0), AGL, yaw_jitter[k], -90.0, 0.0, F, W, H)
        for k in range(n_photos)
    ]


def sightings(pose, people):
    """Detection records of the people (lat, lon) this camera sees: the box's bottom-centre is the feet."""
    feet = ground_to_pixel(pose, [p[0] for p in people], [p[1] for p in people])
    dets = []
    for (u, v), _ in zip(feet, people):
        if 10 <= u <= W - 10 and 40 <= v <= H:
            dets.append(
                {
                    "bbox": [float(u - 8), float(v - 40), float(u + 8), float(v)],
                    "score": 0.8,
                    "class_id": 0,
                    "class_name": "person",
                }
            )
    return dets


def run_flight(tmp_path, people, poses, formats=ALL, radius=5.0):
    image = np.full((H, W, 3), 90, np.uint8)
    with GeoWriter(tmp_path, GeoConfig(formats=formats, track_radius_m=radius), names=NAMES) as w:
        for k, pose in enumerate(poses):
            dets = Detections.from_records(sightings(pose, people), NAMES)
            w.add(f"flight/DJI_{k:04d}.JPG", dets, image, pose=pose)
    return w


PEOPLE = [
    offset(20.0, -10.0),
    offset(35.0, 12.0),
    offset(10.0, 20.0),
    offset(13.0, 20.0),
]  # the last two 3 m apart


def test_each_person_becomes_one_track_listing_its_photos(tmp_path):
    w = run_flight(tmp_path, PEOPLE, flight())
    tracks = w.tracks.tracks
    assert len(tracks) == len(PEOPLE)  # two people 3 m apart in one photo stay two tracks under a 5 m radius
    for t in tracks:
        truth = min(PEOPLE, key=lambda p: ground_distance_m(t.lat, t.lon, *p))
        assert ground_distance_m(t.lat, t.lon, *truth) < 0.01  # noise-free poses: to the centimetre
        assert len(t.photos) >= 2 and len(t.photos) == len(t.detections)
    assert sum(len(t.detections) for t in tracks) == w.located


def test_tracks_absorb_pose_noise_but_not_other_classes_or_far_points(tmp_path):
    w = run_flight(tmp_path, PEOPLE[:2], flight(yaw_jitter=(0.0, 1.5, -1.5)))  # compass wobble of 1.5 deg
    assert len(w.tracks.tracks) == 2
    b = TrackBuilder(radius_m=5.0)
    assert b.add_photo(
        "a", [{"lat": LAT0, "lon": LON0, "class_name": "person", "score": 0.5, "error_m": 3.0}]
    ) == [1]
    near, far = offset(3.0, 0.0), offset(6.0, 0.0)
    ids = b.add_photo(
        "b",
        [
            {"lat": near[0], "lon": near[1], "class_name": "car", "score": 0.5},
            {"lat": far[0], "lon": far[1], "class_name": "person", "score": 0.5},
            {"class_name": "person", "score": 0.9},
        ],
    )  # no coordinates: no track
    assert ids == [2, 3, None]
    # the track's position is the inverse-variance mean: a 1 m fix outweighs a 3 m one nine to one
    one_m = offset(2.0, 0.0)
    assert b.add_photo(
        "c", [{"lat": one_m[0], "lon": one_m[1], "class_name": "person", "score": 0.7, "error_m": 1.0}]
    ) == [1]
    assert ground_distance_m(b.tracks[0].lat, b.tracks[0].lon, *offset(2.0 * 9 / 10, 0.0)) < 0.01
    assert b.tracks[0].photos == ["a", "c"] and b.tracks[0].error_m == 1.0 and b.tracks[0].best == ("c", 0)
    with pytest.raises(ValueError, match="radius_m: expected a positive number"):
        TrackBuilder(0.0)


def test_geojson_is_valid_and_carries_the_properties(tmp_path):
    w = run_flight(tmp_path, PEOPLE, flight())
    for path in (w.geojson_path, w.tracks_path):
        obj = geojson.loads(path.read_text())
        assert obj.is_valid, obj.errors()
        assert obj["type"] == "FeatureCollection"
    feats = json.loads(w.geojson_path.read_text())["features"]
    assert len(feats) == w.located > 0
    for f in feats:
        p = f["properties"]
        assert {"image", "bbox", "score", "class_name", "error_m", "track_id", "thumbnail"} <= set(p)
        assert len(p["bbox"]) == 4 and p["error_m"] > 0
        lon, lat = f["geometry"]["coordinates"]  # RFC 7946 order
        assert min(ground_distance_m(lat, lon, *q) for q in PEOPLE) < 0.01
    tracks = json.loads(w.tracks_path.read_text())["features"]
    assert [t["properties"]["track_id"] for t in tracks] == [1, 2, 3, 4]
    assert all(len(t["properties"]["photos"]) == t["properties"]["count"] for t in tracks)


def test_kml_parses_back_with_fastkml(tmp_path):
    w = run_flight(tmp_path, PEOPLE, flight())
    doc = kml.KML.from_string(w.kml_path.read_bytes()).features[0]
    folders = {f.name: f for f in doc.features}
    assert set(folders) == {"Detections", "Tracks"}
    dets, tracks = folders["Detections"].features, folders["Tracks"].features
    feats = json.loads(w.geojson_path.read_text())["features"]
    assert len(dets) == len(feats) and len(tracks) == 4
    for pm, f in zip(dets, feats):
        assert (pm.geometry.x, pm.geometry.y) == pytest.approx(tuple(f["geometry"]["coordinates"]), abs=1e-8)
        data = {d.name: d.value for d in pm.extended_data.elements}
        assert data["image"] == f["properties"]["image"] and float(data["score"]) == f["properties"]["score"]
    assert all("photo(s)" in t.name for t in tracks)


def test_csv_has_latitude_longitude_columns(tmp_path):
    w = run_flight(tmp_path, PEOPLE, flight())
    rows = list(csv.DictReader(w.csv_path.open(newline="")))
    feats = json.loads(w.geojson_path.read_text())["features"]
    assert len(rows) == len(feats)
    for row, f in zip(rows, feats):
        assert (float(row["longitude"]), float(row["latitude"])) == pytest.approx(
            tuple(f["geometry"]["coordinates"])
        )
        assert int(row["track_id"]) == f["properties"]["track_id"]
        assert row["image"] == f["properties"]["image"]


def test_thumbnails_show_the_box_with_context(tmp_path):
    image = np.full((H, W, 3), 90, np.uint8)
    image[200:240, 300:316] = (0, 0, 255)
    rec = {
        "image": "x/a.jpg",
        "detections": [
            {"bbox": [300.0, 200.0, 316.0, 240.0], "score": 0.9, "class_id": 0, "class_name": "person"},
            {"bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.5, "class_id": 0, "class_name": "person"},
        ],
    }
    with GeoWriter(tmp_path, GeoConfig(formats=("geojson",)), names=NAMES) as w:
        placed = w.add(
            rec["image"], Detections.from_records(rec["detections"], NAMES), image, pose=flight(1)[0]
        )
    thumbs = [cv2.imread(str(tmp_path / t)) for t in placed.detections.data["thumbnail"]]
    assert thumbs[0].shape[:2] == (100, 100)  # 2.5 x the 40 px box side
    assert thumbs[1].shape[:2] == (53, 53)  # at the corner: centre 5 + half of the 96 px minimum
    assert (thumbs[0][45:55, 45:55, 2] > 200).all()  # the person is in the middle


def test_photo_without_pose_keeps_pixels_and_gets_a_warning(tmp_path):
    path = write_photo(
        tmp_path / "nogps.jpg", np.zeros((H, W, 3), np.uint8), lat=None, lon=None, xmp=dji_values()
    )
    rec = {
        "image": str(path),
        "detections": [{"bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "class_id": 0, "class_name": "person"}],
    }
    with GeoWriter(tmp_path / "out", GeoConfig(formats=ALL), names=NAMES) as w:
        placed = w.add(
            rec["image"], Detections.from_records(rec["detections"], NAMES), np.zeros((H, W, 3), np.uint8)
        )
    warning = placed.warning
    assert warning.startswith("no GPS position") and "\n" not in warning
    assert placed.camera is None and placed.record_fields() == {"geo_warning": warning}
    records = placed.detections.to_records(NAMES)
    assert "lat" not in records[0]
    assert records[0]["bbox"] == [1.0, 2.0, 3.0, 4.0] and "thumbnail" in records[0]
    assert json.loads(w.geojson_path.read_text())["features"] == []
    assert len(list(csv.DictReader(w.csv_path.open()))) == 0


# ---- edgetile detect --format ... as a user runs it ----

EDGETILE = [sys.executable, "-m", "edgetile.runtime.cli"]
PW, PH, PF, PAGL = 512, 384, 500.0, 50.0  # GSD 0.1 m/px


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def blob_photo(path, cell_xy, **kw):
    """A photo with one 8x8 red 'person' filling one cell of the red-blob model's 8 px grid."""
    img = np.full((PH, PW, 3), (60, 110, 70), np.uint8)
    x, y = cell_xy
    img[y : y + 8, x : x + 8] = (0, 0, 255)
    return write_photo(path, img, **kw)


def test_detect_writes_geojson_kml_csv_and_tracks(tmp_path, model):
    photos = tmp_path / "flight"
    photos.mkdir()
    cam2 = offset(20.0, 0.0)
    xmp = dji_values(rel_alt=PAGL, abs_alt=180.0, yaw=0.0, pitch=-90.0, focal_px=PF)
    # The same person in both photos: the camera moved 20 m north, so 200 px further down the second.
    blob_photo(photos / "DJI_0001.JPG", (280, 136), lat=LAT0, lon=LON0, xmp=xmp)
    blob_photo(photos / "DJI_0002.JPG", (280, 336), lat=cam2[0], lon=cam2[1], xmp=xmp)
    blob_photo(photos / "DJI_0003.JPG", (80, 80), lat=None, lon=None, xmp=xmp)  # no GPS fix recorded
    out = tmp_path / "out"
    r = subprocess.run(
        [
            *EDGETILE,
            "detect",
            str(photos),
            "--model",
            str(model),
            "--out",
            str(out),
            "--tile",
            "256",
            "--format",
            "geojson,kml,csv",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr  # a photo without a pose is not a failed input
    warnings = [ln for ln in r.stderr.splitlines() if "no ground coordinates" in ln]
    assert warnings == [
        f"edgetile: no ground coordinates for {photos / 'DJI_0003.JPG'}: no GPS position: the photo "
        "has neither EXIF GPSLatitude/GPSLongitude nor drone-dji:GpsLatitude/GpsLongitude"
    ]
    records = {Path(rec["image"]).name: rec for rec in json.loads((out / "detections.json").read_text())}
    nogps = records["DJI_0003.JPG"]
    assert len(nogps["detections"]) == 1 and "lat" not in nogps["detections"][0] and "geo_warning" in nogps
    assert (out / nogps["detections"][0]["thumbnail"]).is_file()

    valid = geojson.loads((out / "detections.geojson").read_text())
    assert valid.is_valid, valid.errors()
    feats = json.loads((out / "detections.geojson").read_text())  # geojson.loads rounds to 6 decimals
    assert len(feats["features"]) == 2
    # The person's feet are at pixel (284, 144) of the first photo: 4.8 m north, 2.8 m east of the camera;
    # the model's 16 px box reaches 4 px (0.4 m) lower, and both photos see that same point.
    truth = offset((PH / 2 - 148) * 0.1, (284 - PW / 2) * 0.1)
    for f in feats["features"]:
        name = Path(f["properties"]["image"]).name
        det = records[name]["detections"][0]
        pose = pose_from_photo(photos / name)
        expect = locate_boxes(pose, np.array([det["bbox"]]))[0]
        lon, lat = f["geometry"]["coordinates"]
        assert ground_distance_m(lat, lon, expect.lat, expect.lon) < 0.01
        assert ground_distance_m(lat, lon, *truth) < 0.05  # the EXIF position is rounded to ~1 cm
        assert (lat, lon) == (det["lat"], det["lon"])  # detections.json carries the same coordinates
        assert records[name]["camera"]["agl_m"] == PAGL
    tracks = json.loads((out / "tracks.geojson").read_text())["features"]
    assert len(tracks) == 1 and tracks[0]["properties"]["photos"] == [
        str(photos / "DJI_0001.JPG"),
        str(photos / "DJI_0002.JPG"),
    ]
    doc = kml.KML.from_string((out / "detections.kml").read_bytes()).features[0]
    assert [len(folder.features) for folder in doc.features] == [2, 1]
    rows = list(csv.DictReader((out / "detections_geo.csv").open()))
    assert len(rows) == 2 and all(-90 <= float(r_["latitude"]) <= 90 for r_ in rows)
    assert len(list((out / "thumbs").iterdir())) == 3


def test_detect_ground_flags_move_the_points(tmp_path, model):
    xmp = dji_values(rel_alt=PAGL, abs_alt=180.0, pitch=-90.0, focal_px=PF)
    blob_photo(tmp_path / "a.jpg", (400, 40), lat=LAT0, lon=LON0, xmp=xmp)
    dist = {}
    for flags in ([], ["--ground-alt", "155"], ["--height-above-ground", "100"]):
        out = tmp_path / f"out{len(dist)}"
        r = subprocess.run(
            [
                *EDGETILE,
                "detect",
                str(tmp_path / "a.jpg"),
                "--model",
                str(model),
                "--out",
                str(out),
                "--tile",
                "256",
                "--format",
                "geojson",
                *flags,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        dist[tuple(flags)] = json.loads((out / "detections.geojson").read_text())["features"][0][
            "properties"
        ]["distance_m"]
    # heights 50 (RelativeAltitude), 25 (180 - 155) and 100 m: the offset from the camera scales with them
    assert dist[("--ground-alt", "155")] == pytest.approx(dist[()] / 2, rel=1e-3)
    assert dist[("--height-above-ground", "100")] == pytest.approx(dist[()] * 2, rel=1e-3)


def test_detect_without_format_writes_no_geo_files_and_bad_format_is_usage(tmp_path, model):
    blob_photo(tmp_path / "a.jpg", (80, 80), lat=LAT0, lon=LON0, xmp=dji_values(focal_px=PF))
    r = subprocess.run(
        [
            *EDGETILE,
            "detect",
            str(tmp_path / "a.jpg"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "o"),
            "--tile",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    # run.json records the run's settings for --resume; no geographic file without --format
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "detections.csv",
        "detections.json",
        "run.json",
    ]
    assert set(json.loads((tmp_path / "o" / "detections.json").read_text())[0]["detections"][0]) == {
        "bbox",
        "score",
        "class_id",
        "class_name",
    }
    for args, words in (
        (["--format", "kmz"], "expected a comma-separated list of geojson, kml, csv, found 'kmz'"),
        (["--format", "kml", "--ground-alt", "1", "--height-above-ground", "2"], "not allowed with"),
        (["--format", "kml", "--camera", "gopro"], "invalid choice: 'gopro'"),
    ):
        r = subprocess.run(
            [*EDGETILE, "detect", str(tmp_path / "a.jpg"), "--out", str(tmp_path / "o2"), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_geo_config_refuses_bad_values():
    with pytest.raises(ValueError, match="formats: expected names among geojson, kml, csv, found 'gpx'"):
        GeoConfig(formats=("gpx",))
    with pytest.raises(ValueError, match="track_radius_m: expected a positive number"):
        GeoConfig(track_radius_m=-1.0)
    with pytest.raises(ValueError, match="camera: expected one of"):
        PoseOverrides(camera="nikon")


def test_georeference_puts_ground_fields_or_a_warning_into_the_data():
    level = CameraPose.from_angles(
        LAT0, LON0, AGL, 0.0, -10.0, 0.0, F, W, H
    )  # looking 10 deg below the horizon
    dets = Detections(
        [[300.0, 0.0, 316.0, 10.0], [300.0, 400.0, 316.0, 440.0]],
        [0.9, 0.8],
        [0, 0],
        data={"thumbnail": ["a", "b"]},
    )  # the first box's feet are above the horizon, the second's on the ground
    placed = georeference(dets, level)
    sky, ground = placed.to_records(NAMES)
    assert list(sky) == ["bbox", "score", "class_id", "class_name", "thumbnail", "geo_warning"]
    assert list(ground) == [
        "bbox",
        "score",
        "class_id",
        "class_name",
        "thumbnail",
        "lat",
        "lon",
        "ground_alt_m",
        "error_m",
        "distance_m",
    ]  # the order detections.json has always had
    assert ground["ground_alt_m"] is None  # no absolute altitude: the key with null, as before
    assert placed.data["ground_alt_m"] == [None, NULL] and dets.data == {"thumbnail": ["a", "b"]}
