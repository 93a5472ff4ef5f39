"""`edgetile dataset from-review`: the operator's decisions become a VOC dataset that `dataset tiles` reads."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgetile.runtime.evaluation.annotations import load_dataset
from edgetile.runtime.serve.review_store import ReviewQueue
from edgetile.runtime.serve.store import Outcome, PhotoQueue

pytest.importorskip("tqdm")
from edgetile.train.from_review import RejectedBoxScorer, dataset_from_review  # noqa: E402

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
W, H = 640, 480


def det(bbox, score=0.5):
    return {"bbox": bbox, "score": score, "class_id": 0, "class_name": "person"}


@pytest.fixture
def state(tmp_path):
    """Four photos: one fully reviewed, one with an unreviewed box, one with an operator's box, one untouched."""
    s = tmp_path / "state"
    (s / "uploads").mkdir(parents=True)
    photos = [
        ("DJI_0001.JPG", [det([100, 100, 120, 140]), det([500, 300, 530, 330])]),
        ("DJI_0002.JPG", [det([10, 10, 30, 50]), det([200, 200, 220, 240])]),
        ("DJI_0001.JPG", [det([400, 50, 420, 90])]),  # same name, another card
        ("DJI_0004.JPG", [det([300, 300, 320, 340])]),
    ]
    with PhotoQueue(s / "queue.sqlite3") as q:
        for i, (name, dets) in enumerate(photos):
            path = s / "uploads" / f"{i}_{name}"
            cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 255, (H, W, 3), np.uint8))
            q.add(f"{i:064x}", "upload", name, path, size=path.stat().st_size)
            (item,) = q.claim(1)
            q.finish([Outcome(item, W, H, dets, {})])
    with ReviewQueue(s / "queue.sqlite3") as q:
        q.decide("1-0", "confirmed", "ann")
        q.decide("1-1", "confirmed", "ann")
        q.decide("1-1", "rejected", "bob")  # the last decision counts
        q.decide("2-0", "flagged", "ann")  # 2-1 stays unreviewed: the photo is left out
        q.decide("3-0", "rejected", "ann")
        q.add_operator_box(3, [100, 200, 130, 260], "ann")
    return s


def digest(state) -> str:
    """The database and its write-ahead log, an empty one as none (the -shm file is a reader's index)."""
    wal = state / "queue.sqlite3-wal"
    data = (state / "queue.sqlite3").read_bytes() + b"|" + (wal.read_bytes() if wal.exists() else b"")
    return hashlib.sha256(data).hexdigest()


def test_from_review_writes_voc_and_hard_negatives_without_touching_the_store(state, tmp_path):
    before = digest(state)
    out = tmp_path / "reviewed"
    r = subprocess.run(
        [*EDGETILE, "dataset", "from-review", state, "--out", out], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "2 photo(s) with 2 person box(es) and 2 rejected box(es)" in r.stderr
    assert "left out: DJI_0002.JPG: 1 detection(s) not reviewed yet" in r.stderr
    assert digest(state) == before  # read-only

    ds = load_dataset(out)
    assert ds.problems == [] and ds.class_names == ["person"]
    got = {p.path.name: p.boxes.tolist() for p in ds.photos}
    assert got == {
        "000001_DJI_0001.jpg": [[100, 100, 120, 140]],  # confirmed; the rejected one unlabelled
        "000003_DJI_0001.jpg": [[100, 200, 130, 260]],  # the operator's box
    }
    hard = json.loads((out / "hard_negatives.json").read_text())
    assert hard == {
        "000001_DJI_0001.jpg": [[500, 300, 530, 330]],
        "000003_DJI_0001.jpg": [[400, 50, 420, 90]],
    }
    assert (out / "ImageSets" / "Main" / "trainval.txt").read_text().split() == [
        "000001_DJI_0001",
        "000003_DJI_0001",
    ]
    assert load_dataset(out, subset="trainval").photos


def test_dataset_tiles_prefers_windows_around_rejected_boxes_as_negatives(state, tmp_path):
    out = tmp_path / "reviewed"
    dataset_from_review(state, out)
    tiles = tmp_path / "tiles"
    r = subprocess.run(
        [*EDGETILE, "dataset", "tiles", out, "--out", tiles, "--tile", "160", "--overlap", "0", "--negatives", "2",
         "--val-fraction", "0", "--quiet"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tiles / "manifest.csv").open()))
    negatives = [
        (row["photo"], [int(row[k]) for k in ("x0", "y0", "x1", "y1")])
        for row in rows
        if row["kind"] != "positive"
    ]
    # the two empty windows chosen are the ones holding the rejected boxes, out of dozens
    assert sorted(negatives) == [
        ("000001_DJI_0001", [480, 160, 640, 320]),
        ("000003_DJI_0001", [320, 0, 480, 160]),
    ]
    assert {row["kind"] for row in rows if row["kind"] != "positive"} == {"hard-negative"}


def test_rejected_box_scores_rank_whole_boxes_first():
    class P:
        source = "/x/a.jpg"

    scorer = RejectedBoxScorer({"a.jpg": np.array([[10, 10, 20, 20]], np.float64)})
    windows = np.array([[0, 0, 100, 100], [15, 0, 115, 100], [200, 200, 300, 300]])
    s = scorer(P(), windows)
    assert s[0] == pytest.approx(1.0, abs=1e-3) and s[1] == pytest.approx(0.5, abs=1e-3) and s[2] < 1e-3

    class Other:
        source = "/x/b.jpg"

    assert (scorer(Other(), windows) < 1e-3).all()  # a photo without rejected boxes: plain random order


def test_from_review_refuses_what_is_not_a_review_state(tmp_path):
    r = subprocess.run(
        [*EDGETILE, "dataset", "from-review", tmp_path, "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "expected an edgetile serve state folder with queue.sqlite3" in r.stderr
