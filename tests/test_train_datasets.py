"""Tile datasets: windows as the runtime cuts them, clipped boxes, safe and hard negatives, folds without leaks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.model_selection import KFold

from edgetile.runtime.evaluation.annotations import AnnotatedPhoto, Dataset, load_dataset
from edgetile.runtime.tiling import plan_tiles
from edgetile.train.datasets import TileOptions, build_tile_dataset
from edgetile.train.folds import photo_labels, stratified_folds, stratified_holdout
from edgetile.train.synth import SceneConfig, write_dataset
from edgetile.train.tiles import Photo, cut_tiles, read_manifest, window_boxes
from onnx_models import red_blob_model

# As the console script runs it: main() imported from the package, not run as `python -m`.
EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
SMALL = SceneConfig(
    width=512, height=384, people=(2, 4), person_px=(16, 48), rocks=(1, 3), logs=(1, 2), bushes=(1, 4)
)


def run(*args):
    return subprocess.run([*EDGETILE, *map(str, args)], capture_output=True, text=True, timeout=300)


# Each case: box, window, min_visible -> expected kept box in window coordinates (None: dropped).
WINDOW_CASES = [
    ((10, 10, 30, 50), (0, 0, 100, 100), 0.5, (10, 10, 30, 50)),  # inside: unchanged, shifted by 0
    ((110, 10, 130, 50), (100, 0, 200, 100), 0.5, (10, 10, 30, 50)),  # shifted into the window
    ((90, 10, 110, 50), (0, 0, 100, 100), 0.5, (90, 10, 100, 50)),  # half visible: kept at 0.5, clipped
    ((90, 10, 110, 50), (0, 0, 100, 100), 0.6, None),  # half visible: dropped at 0.6
    ((95, 10, 115, 50), (0, 0, 100, 100), 0.5, None),  # a quarter visible: a sliver, dropped
    ((100, 10, 120, 50), (0, 0, 100, 100), 0.01, None),  # touching the edge only: nothing inside
]


@pytest.mark.parametrize("box,window,min_visible,expected", WINDOW_CASES)
def test_window_boxes_clip_and_keep_only_visible_enough_boxes(box, window, min_visible, expected):
    b, c = window_boxes(np.array([box], np.float32), np.array([3]), window, min_visible)
    if expected is None:
        assert len(b) == 0 and len(c) == 0
    else:
        np.testing.assert_allclose(b, [expected])
        assert c.tolist() == [3]


def photo_of(image, boxes, pid="p", split="train"):
    h, w = image.shape[:2]
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Photo(pid, lambda: image, w, h, b, np.zeros(len(b), np.int64), split, f"{pid}.png")


def test_tiles_follow_the_runtime_layout_and_negatives_never_touch_a_person(tmp_path):
    yy, xx = np.mgrid[0:300, 0:500]
    image = np.stack([xx * 255 // 500, yy * 255 // 300, (xx + yy) * 255 // 800], -1).astype(
        np.uint8
    )  # smooth: JPEG-safe
    boxes = [(20, 20, 40, 60), (230, 100, 260, 150)]  # the second straddles windows
    rows = cut_tiles(
        [photo_of(image, boxes)], tmp_path, tile=128, overlap=0.25, min_visible=0.5, negatives=3, seed=1
    )
    windows = plan_tiles(500, 300, 128, 0.25)
    pos = [r for r in rows if r["kind"] == "positive"]
    neg = [r for r in rows if r["kind"] == "negative"]
    assert len(neg) == 3 and len(pos) >= 2
    for r in rows:
        win = windows[r["window"]]
        assert [r["x0"], r["y0"], r["x1"], r["y1"]] == win.tolist()  # the runtime's windows, exactly
        tile = cv2.imread(str(tmp_path / "images" / "train" / f"{r['tile']}.jpg"))
        assert tile.shape == (128, 128, 3)
        assert (
            np.abs(tile.astype(int) - image[win[1] : win[3], win[0] : win[2]].astype(int)).mean() < 3
        )  # JPEG
        labels = (tmp_path / "labels" / "train" / f"{r['tile']}.txt").read_text().split("\n")
        kept, _ = window_boxes(np.array(boxes, np.float32), np.zeros(2), win, 0.5)
        assert len([x for x in labels if x]) == len(kept) == r["boxes"]
        if r["kind"] == "negative":
            b = np.array(boxes)
            assert not np.any(
                (b[:, 0] < win[2]) & (b[:, 2] > win[0]) & (b[:, 1] < win[3]) & (b[:, 3] > win[1])
            )
    # Every window with a visible-enough box is a positive tile.
    expected_pos = [
        i
        for i, w in enumerate(windows)
        if len(window_boxes(np.array(boxes, np.float32), np.zeros(2), w, 0.5)[0])
    ]
    assert sorted(r["window"] for r in pos) == expected_pos


def test_hard_negatives_rank_empty_windows_by_the_models_confidence(tmp_path):
    model = red_blob_model(tmp_path / "red.onnx", input_hw=(128, 128))
    image = np.full((256, 512, 3), (60, 110, 70), np.uint8)
    image[16:24, 16:24] = (0, 0, 255)  # the annotated person
    image[136:144, 400:408] = (0, 0, 255)  # a red rock: what a first model mistakes for a person
    ds = Dataset(
        [
            AnnotatedPhoto(
                _png(tmp_path / "a.png", image), 512, 256, np.array([[16, 16, 24, 24]]), np.zeros(1)
            )
        ],
        ["person"],
    )
    report = build_tile_dataset(
        ds,
        tmp_path / "hard",
        TileOptions(tile=128, overlap=0.0, negatives=1),
        val_fraction=0.0,
        hard_negatives=model,
        hard_conf=0.1,
    )
    rows = read_manifest(tmp_path / "hard" / "manifest.csv")
    neg = [r for r in rows if r["kind"] == "hard-negative"]
    assert len(neg) == 1 and report.negatives == 1
    assert (int(neg[0]["x0"]), int(neg[0]["y0"])) == (384, 128)  # the window holding the red rock
    assert float(neg[0]["score"]) > 0.9
    # Random negatives would pick some other window most of the time; the rank is the model's.
    rand = build_tile_dataset(
        ds, tmp_path / "rand", TileOptions(tile=128, overlap=0.0, negatives=1, seed=3), val_fraction=0.0
    )
    assert rand.negatives == 1


def _png(path, image):
    cv2.imwrite(str(path), image)
    return path


def test_stratified_folds_balance_every_label_and_split_photos_not_tiles():
    rng = np.random.default_rng(5)
    boxes, classes = [], []
    for i in range(60):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 900, (n, 2))
        side = rng.choice([20, 45, 90, 150], n)[:, None]
        boxes.append(np.concatenate([xy, xy + side], 1))
        classes.append((rng.random(n) < (0.5 if i % 10 == 0 else 0.02)).astype(np.int64))
    labels = photo_labels(boxes, classes, ["person", "dog"])
    assert labels.matrix.shape == (60, 2 + 4 + 4)
    assert (labels.matrix[:, 2:6].sum(1) == 1).all()  # exactly one count bin per photo
    fold = stratified_folds(labels, 3, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [20, 20, 20]

    def spread(f):
        per_fold = np.stack([labels.matrix[f == k].sum(0) for k in range(3)])
        return per_fold.max(0) - per_fold.min(0)

    rare = labels.matrix.sum(0) <= 16  # the dog class, the rarer count bins
    assert rare.sum() >= 3 and (spread(fold)[rare] <= 1).all(), spread(fold)
    plain = np.zeros(60, np.int64)  # the baseline: sklearn's unstratified shuffled K-fold
    for k, (_, v) in enumerate(KFold(3, shuffle=True, random_state=0).split(np.zeros(60))):
        plain[v] = k
    assert spread(fold).sum() * 2 < spread(plain).sum(), (spread(fold), spread(plain))
    val = stratified_holdout(labels, 0.25, seed=0)
    assert val.sum() == 15
    with pytest.raises(ValueError, match="at least 5 photos"):
        stratified_folds(photo_labels(boxes[:3], classes[:3], ["person", "dog"]), 5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("photos"), 9, seed=31, config=SMALL)


def test_cli_folds_write_one_data_yaml_per_fold_and_no_photo_leaks(tmp_path, synth):
    out = tmp_path / "tiles"
    r = run("dataset", "tiles", synth, "--out", out, "--tile", 256, "--folds", 3, "--negatives", 4)
    assert r.returncode == 0, r.stderr
    assert "fold0" in r.stderr and "class:person" in r.stderr  # the distribution table is printed
    rows = read_manifest(out / "manifest.csv")
    photo_fold = {}
    for row in rows:
        assert photo_fold.setdefault(row["photo"], row["fold"]) == row["fold"]  # one fold per photo
    assert sum(1 for row in rows if row["kind"] == "negative") == 4
    all_tiles = {f"./../images/all/{row['tile']}.jpg" for row in rows}
    vals = []
    for k in range(3):
        train = set((out / "folds" / f"fold{k}_train.txt").read_text().split())
        val = set((out / "folds" / f"fold{k}_val.txt").read_text().split())
        assert train | val == all_tiles and not train & val
        photos_train = {t.split("/")[-1].rsplit("_t", 1)[0] for t in train}
        photos_val = {t.split("/")[-1].rsplit("_t", 1)[0] for t in val}
        assert not photos_train & photos_val  # no photo on both sides
        vals.append(photos_val)
        for t in val:
            assert (out / "folds" / t).resolve().is_file()  # './' resolves against the list's folder
        yaml = (out / "folds" / f"fold{k}.yaml").read_text()
        assert f"train: fold{k}_train.txt" in yaml and "0: person" in yaml
    assert set().union(*vals) == set(photo_fold) and sum(len(v) for v in vals) == len(photo_fold)
    assert (out / "folds.csv").read_text().count("\n") == 4


def test_cli_reports_bad_annotations_and_tiles_the_rest(tmp_path, synth):
    src = tmp_path / "voc"
    subprocess.run(["cp", "-r", str(synth), str(src)], check=True)
    ann = sorted((src / "Annotations").glob("*.xml"))
    text = ann[0].read_text()
    xmin = text.split("<xmin>")[1].split("<")[0]
    ann[0].write_text(text.replace(f"<xmin>{xmin}</xmin>", "<xmin>9999</xmin>", 1))  # x2 < x1 and outside
    (src / "JPEGImages" / ann[1].name.replace(".xml", ".jpg")).unlink()  # missing image
    out = tmp_path / "tiles"
    r = run("dataset", "tiles", src, "--out", out, "--tile", 256, "--val-fraction", 0.3, "--negatives", 0)
    assert r.returncode == 1, r.stderr  # some inputs failed, the rest was written
    problems = (out / "problems.txt").read_text().splitlines()
    assert any(ann[0].name in p and "x2 < x1" in p for p in problems), problems
    assert any(ann[1].name in p and "missing image" in p for p in problems), problems
    photos = {row["photo"] for row in read_manifest(out / "manifest.csv")}
    assert ann[0].stem not in photos and ann[1].stem not in photos and len(photos) == 7
    assert "problem:" in r.stderr and "Traceback" not in r.stderr
    splits = (out / "splits.csv").read_text()
    assert splits.startswith("split,photos") and "\nval," in splits


def test_cli_usage_errors_are_one_line_and_exit_2(tmp_path):
    r = run("dataset", "tiles", tmp_path / "nothing", "--out", tmp_path / "o")
    assert r.returncode == 2 and "found nothing at" in r.stderr and "Traceback" not in r.stderr
    r = run("dataset", "tiles", tmp_path, "--out", tmp_path / "o", "--folds", "1")
    assert r.returncode == 2 and "--folds" in r.stderr


def test_loaded_dataset_is_what_gets_tiled(tmp_path, synth):
    ds = load_dataset(synth)
    report = build_tile_dataset(ds, tmp_path / "t", TileOptions(tile=256, negatives=0), val_fraction=0.0)
    rows = read_manifest(tmp_path / "t" / "manifest.csv")
    assert report.tiles == len(rows) == report.positives and report.negatives == 0
    total = sum(int(r["boxes"]) for r in rows)
    assert total >= ds.box_count  # overlap shows some people in two tiles, none is lost
    assert {Path(r["source"]).name for r in rows} <= {p.path.name for p in ds.photos}
