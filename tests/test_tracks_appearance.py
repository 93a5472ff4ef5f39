"""Tracks with appearance: a sighting joins a track only when its position is within the radius AND its
embedding agrees with the track's appearance; without embeddings, tracks are exactly position-only."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from edgetile.runtime.embedding import DIM, encode_embedding
from edgetile.runtime.geo import GeoConfig, TrackBuilder, build_tracks
from edgetile.runtime.geo.tracks import appearance_agrees
from edgetile.runtime.geo.writers import GeoDocuments
from edgetile.runtime.options.geo import add_geo_options, add_serve_geo_options, geo_config_from_args
from edgetile.runtime.serve.review import tracks_of

LAT0, LON0 = 55.75, 37.62
M_PER_DEG_LAT = 111_400.0  # near 55.75 N; the tests' distances are far from the radius's edge


def at(north: float, east: float = 0.0) -> tuple[float, float]:
    return LAT0 + north / M_PER_DEG_LAT, LON0 + east / (M_PER_DEG_LAT * np.cos(np.radians(LAT0)))


def look(person: int, noise: float = 0.0, sighting: int = 0, like: int | None = None) -> str:
    """An embedding: a random direction per person, with fresh noise per sighting, or near another's."""
    v = np.random.default_rng(person).normal(size=DIM)
    if like is not None:
        v = np.random.default_rng(like).normal(size=DIM) + 0.3 * v  # alike: cosine about 0.96
    return encode_embedding(v + noise * np.random.default_rng([person, sighting]).normal(size=DIM))


def det(north: float, east: float = 0.0, embedding: str | None = None, **kw) -> dict:
    lat, lon = at(north, east)
    d = {"lat": lat, "lon": lon, "class_name": "person", "score": 0.8, "error_m": 2.0, **kw}
    if embedding is not None:
        d["embedding"] = embedding
    return d


A, B = look(1), look(2)  # two people dressed differently: cosine about 0


@pytest.mark.parametrize(
    "photos, position_only, with_appearance",
    [
        # A and B 2 m apart; next photo only A, shifted 1.2 m towards B by the pose's error: by position
        # it is nearer B's track, by appearance it is A
        ([[det(0, embedding=A), det(2, embedding=B)], [det(1.2, embedding=A)]], [[1, 2], [2]], [[1, 2], [1]]),
        # two people close together stay two: A seen alone, then B alone 1 m away (A hidden)
        ([[det(0, embedding=A)], [det(1, embedding=B)]], [[1], [1]], [[1], [2]]),
        # the same person in three photos with fresh noise in each embedding stays one track
        (
            [
                [det(0, embedding=look(3, 0.3, 0))],
                [det(1, embedding=look(3, 0.3, 1))],
                [det(0.5, embedding=look(3, 0.3, 2))],
            ],
            [[1], [1], [1]],
            [[1], [1], [1]],
        ),
        # appearance never joins what position keeps apart: A 8 m away is a new track either way
        ([[det(0, embedding=A)], [det(8, embedding=A)]], [[1], [2]], [[1], [2]]),
        # a sighting without an embedding is placed by position alone, also next to a track with one
        ([[det(0, embedding=A), det(3, embedding=B)], [det(2.4)]], [[1, 2], [2]], [[1, 2], [2]]),
        # a track without an appearance takes any sighting by position, and then has one
        ([[det(0)], [det(1, embedding=A)], [det(0.5, embedding=B)]], [[1], [1], [1]], [[1], [1], [2]]),
    ],
)
def test_appearance_keeps_people_apart_that_position_alone_merges(photos, position_only, with_appearance):
    for appearance_min, expected in ((None, position_only), (0.5, with_appearance)):
        b = TrackBuilder(5.0, appearance_min)
        assert [b.add_photo(f"p{k}", [dict(d) for d in dets]) for k, dets in enumerate(photos)] == expected


def test_without_embeddings_the_tracks_are_the_position_only_ones():
    rng = np.random.default_rng(0)
    photos = [
        [det(*rng.uniform(-20, 20, 2), score=float(rng.random())) for _ in range(rng.integers(0, 6))]
        for _ in range(30)
    ]
    plain = TrackBuilder(5.0)
    gated = TrackBuilder(5.0, appearance_min=0.9)
    for k, dets in enumerate(photos):
        assert plain.add_photo(str(k), dets) == gated.add_photo(str(k), dets)
    assert [t.to_dict() for t in plain.tracks] == [t.to_dict() for t in gated.tracks]
    assert all(t.appearance is None for t in gated.tracks)


def test_a_tracks_appearance_is_the_direction_of_its_members_sum():
    b = TrackBuilder(5.0, appearance_min=0.5)
    b.add_photo("a", [det(0, embedding=look(4, 0.2))])
    b.add_photo("b", [det(0.5, embedding=look(4, 0.2, 1))])
    t = b.tracks[0]
    assert t.appearance is not None and t.appearance.shape == (DIM,)
    assert 1.0 < float(np.linalg.norm(t.appearance)) <= 2.0  # two unit vectors, nearly parallel
    # a group of alike-dressed people (cosine about 0.96) passes a loose threshold and fails a strict one
    alike = look(5, like=4)
    assert appearance_agrees(_unit(alike), t.appearance, 0.5)
    assert not appearance_agrees(_unit(alike), t.appearance, 0.99)


def _unit(text: str) -> np.ndarray:
    from edgetile.runtime.embedding import decode_embedding

    return decode_embedding(text)


@pytest.mark.parametrize(
    "embedding, appearance, appearance_min, agrees",
    [
        (None, np.ones(DIM), 0.9, True),  # the sighting has none: position decides
        (np.ones(DIM) / np.sqrt(DIM), None, 0.9, True),  # the track has none: position decides
        (np.ones(DIM) / np.sqrt(DIM), -np.ones(DIM), None, True),  # no rule: position decides
        (np.ones(DIM) / np.sqrt(DIM), 3 * np.ones(DIM), 0.999, True),  # only the direction counts
        (np.ones(DIM) / np.sqrt(DIM), -np.ones(DIM), -1.0, True),  # -1 lets everything through
        (np.ones(DIM) / np.sqrt(DIM), -np.ones(DIM), -0.99, False),  # opposite
        (np.eye(DIM)[0], np.eye(DIM)[1], 0.0, True),  # orthogonal: cosine 0 is at least 0
        (np.eye(DIM)[0], np.eye(DIM)[1], 0.01, False),
        (np.eye(DIM)[0], np.zeros(DIM), -1.0, False),  # members cancelling exactly: agrees with nothing
    ],
)
def test_the_appearance_rule(embedding, appearance, appearance_min, agrees):
    assert appearance_agrees(embedding, appearance, appearance_min) is agrees


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), True, "0.5"])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="appearance_min: expected None or a cosine similarity in"):
        TrackBuilder(5.0, bad)
    with pytest.raises(ValueError, match="appearance_min"):
        GeoConfig(appearance_min=bad)


def test_a_malformed_embedding_is_named_when_appearance_counts():
    b = TrackBuilder(5.0, appearance_min=0.5)
    with pytest.raises(ValueError, match="embedding: expected base64 text"):
        b.add_photo("a", [det(0, embedding="not base64!")])
    assert TrackBuilder(5.0).add_photo("a", [det(0, embedding="not base64!")]) == [1]  # unused: ignored


def test_build_tracks_documents_and_the_review_use_the_threshold():
    photos = [("a", [det(0, embedding=A)]), ("b", [det(1, embedding=B)])]
    assert len(build_tracks([(n, [dict(d) for d in ds]) for n, ds in photos], 5.0)) == 1
    assert len(build_tracks([(n, [dict(d) for d in ds]) for n, ds in photos], 5.0, 0.5)) == 2
    assert len(GeoDocuments(photos, track_radius_m=5.0).tracks) == 1
    assert len(GeoDocuments(photos, track_radius_m=5.0, appearance_min=0.5).tracks) == 2
    # the review's items carry the record's embedding privately, as the store reads it
    items = [
        {"id": f"{k}-0", "outcome_id": k, "status": "unreviewed", "score": 0.9, "class_name": "person",
         "lat": d["lat"], "lon": d["lon"], "_embedding": d["embedding"]}
        for k, d in ((1, det(0, embedding=A)), (2, det(1, embedding=A)), (3, det(0.5, embedding=B)))
    ]  # fmt: skip
    assert [t["detections"] for t in tracks_of(items)] == [["1-0", "2-0", "3-0"]]
    assert [t["detections"] for t in tracks_of(items, appearance_min=0.5)] == [["1-0", "2-0"]]


def test_the_option_reaches_the_config():
    for add in (add_geo_options, add_serve_geo_options):
        p = argparse.ArgumentParser(exit_on_error=False)
        p.add_argument("--video", action="append", default=[])
        add(p)
        assert geo_config_from_args(p.parse_args([])).appearance_min is None
        assert geo_config_from_args(p.parse_args(["--appearance-min", "0.6"])).appearance_min == 0.6
        # an embedding model's own threshold is the default; the option overrides it
        assert geo_config_from_args(p.parse_args([]), model_threshold=0.7).appearance_min == 0.7
        assert (
            geo_config_from_args(
                p.parse_args(["--appearance-min", "0.6"]), model_threshold=0.7
            ).appearance_min
            == 0.6
        )
        with pytest.raises(argparse.ArgumentError, match="--appearance-min"):
            p.parse_args(["--appearance-min", "2"])


def test_detect_tracks_a_synthetic_flight_with_the_threshold(tmp_path):
    """edgetile detect on a written flight: every photo georeferenced from its XMP, tracks written, and
    --appearance-min accepted (the demo model gives no embeddings: position decides, as documented)."""
    import json
    import subprocess
    import sys
    from dataclasses import replace

    pytest.importorskip("pymap3d", reason="georeferencing needs the geo extra (pymap3d)")
    from edgetile.train.synth import FLIGHT_SCENE, FlightConfig, write_flights

    config = FlightConfig(
        photos=3, altitude_m=25.0, focal_px=600.0, scene=replace(FLIGHT_SCENE, width=800, height=600)
    )
    src = write_flights(tmp_path / "flight", 1, seed=11, config=config)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgetile.runtime.cli", "detect", str(src / "JPEGImages"), "--out", str(out)]
    cmd += ["--format", "geojson", "--appearance-min", "0.6", "--conf", "0.05", "--quiet"]
    subprocess.run(cmd, check=True)
    records = json.loads((out / "detections.json").read_text())
    photos = records["photos"] if isinstance(records, dict) else records
    assert len(photos) == 3 and all("camera" in p for p in photos)
    tracks = json.loads((out / "tracks.geojson").read_text())
    assert tracks["type"] == "FeatureCollection"
    # the threshold is part of the run's settings (--resume); without it they are what they were before
    assert json.loads((out / "run.json").read_text())["settings"]["geo"]["appearance_min"] == 0.6
    subprocess.run(cmd[:7] + ["--format", "geojson", "--conf", "0.05", "--quiet"], check=True)
    assert "appearance_min" not in json.loads((out / "run.json").read_text())["settings"]["geo"]


def test_detect_with_embed_tracks_by_the_models_threshold(tmp_path):
    """Two photos from one pose, a person at the same spot in both, dressed orange in one and pink in the
    other (a real colour embedder: cosine 0.81): by position one track; with --embed, whose model stores
    the threshold 0.9, two; --appearance-min 0.5 overrides the model's threshold: one again."""
    import json
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    pytest.importorskip("pymap3d", reason="georeferencing needs the geo extra (pymap3d)")
    from geo_photos import dji_values, write_photo
    from test_embedder import colour_embedder

    from onnx_models import red_blob_model

    for name, colour in (("a.jpg", (0, 130, 255)), ("b.jpg", (150, 0, 255))):
        img = np.full((400, 800, 3), (70, 110, 60), np.uint8)
        img[192:208, 392:408] = colour  # a person of 1 m at 6 cm/px, seen from above
        write_photo(tmp_path / name, img, LAT0, LON0, xmp=dji_values(rel_alt=50.0, focal_px=800.0))
    model = red_blob_model(tmp_path / "red.onnx")
    embedder = colour_embedder(tmp_path / "embed.onnx")  # stores the threshold 0.9

    def tracks(*extra) -> int:
        out = tmp_path / f"out{len(extra)}"
        cmd = [
            sys.executable,
            "-m",
            "edgetile.runtime.cli",
            "detect",
            str(tmp_path / "a.jpg"),
            str(tmp_path / "b.jpg"),
        ]
        cmd += [
            "--model",
            str(model),
            "--tile",
            "256",
            "--format",
            "geojson",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        counts = [len(p["detections"]) for p in json.loads((out / "detections.json").read_text())]
        assert counts[0] == counts[1] > 0  # the detector's boxes on the person (a few, 8 px apart)
        return len(json.loads((out / "tracks.geojson").read_text())["features"]) / counts[0]

    assert tracks() == 1  # position only: every box of photo b joins one of photo a's
    assert tracks("--embed", str(embedder)) == 2  # the model's own threshold: orange and pink are two
    assert tracks("--embed", str(embedder), "--appearance-min", "0.5") == 1  # the option wins
