"""edgetile tune: Ultralytics' genetic evolution over a chosen space, a CSV, and a YAML that train --hyp takes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

from edgetile.train.datasets import TileOptions, build_tile_dataset
from edgetile.train.synth import SceneConfig, write_dataset
from edgetile.train.training import load_hyp
from edgetile.train.tuning import KNOWN_BOUNDS, TuneOptions, parse_space, tune

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
SMALL = SceneConfig(
    width=512, height=384, people=(2, 4), person_px=(16, 48), rocks=(1, 3), logs=(1, 2), bushes=(1, 4)
)
TINY = [
    "--model",
    "yolov8n.yaml",
    "--imgsz",
    64,
    "--epochs",
    1,
    "--batch",
    4,
    "--workers",
    0,
    "--device",
    "cpu",
]


def run(*args):
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.run([*EDGETILE, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


# Each case: --space words -> expected space, or the words of the one-line error.
SPACE_CASES = [
    (["lr0", "lrf", "momentum"], {k: KNOWN_BOUNDS[k] for k in ("lr0", "lrf", "momentum")}),
    (["lr0=0.001:0.02", "cls"], {"lr0": (0.001, 0.02), "cls": KNOWN_BOUNDS["cls"]}),
    (["nbs=32:128"], {"nbs": (32.0, 128.0)}),  # any training argument by name, with bounds
    (["lr_zero"], "unknown 'lr_zero'"),
    (["nbs"], "no default bounds for 'nbs'"),
    (["lr0=0.1:0.01"], "expected LO < HI"),
    (["lr0=0.1"], "expected NAME=LO:HI"),
]


@pytest.mark.parametrize("words,expected", SPACE_CASES)
def test_search_space_from_names_and_bounds(words, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            parse_space(words)
    else:
        assert parse_space(words) == expected


def test_hyp_file_must_hold_training_arguments(tmp_path):
    (tmp_path / "ok.yaml").write_text("lr0: 0.002\nmomentum: 0.9\noptimizer: AdamW\n")
    assert load_hyp(tmp_path / "ok.yaml") == {"lr0": 0.002, "momentum": 0.9, "optimizer": "AdamW"}
    (tmp_path / "typo.yaml").write_text("lr_0: 0.002\n")
    with pytest.raises(ValueError, match="unknown \\['lr_0'\\]"):
        load_hyp(tmp_path / "typo.yaml")
    (tmp_path / "data.yaml").write_text("data: other.yaml\n")
    with pytest.raises(ValueError, match="pass those as options"):
        load_hyp(tmp_path / "data.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_hyp(tmp_path / "list.yaml")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    photos = write_dataset(root / "photos", 6, seed=41, config=SMALL)
    return build_tile_dataset(
        photos, root / "tiles", TileOptions(tile=256, negatives=2), val_fraction=0.34
    ).data_yaml


@pytest.mark.slow
def test_genetic_tune_writes_csv_and_best_yaml_that_train_hyp_accepts(tmp_path, tiles):
    out = tmp_path / "tune"
    space = ["lr0=0.001:0.01", "momentum", "cls=0.3:3"]
    r = run(
        "tune",
        "--data",
        tiles,
        *TINY,
        "--iterations",
        2,
        "--space",
        *space,
        "--out",
        out,
        "--set",
        "amp=false",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "tune_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["iteration"]) for x in rows] == [1, 2]
    bounds = parse_space(space)
    for row in rows:
        assert row["fitness"] != ""
        for k, (lo, hi, *_) in bounds.items():
            assert lo <= float(row[k]) <= hi  # every candidate within the chosen space
    assert "metrics/mAP50-95(B)" in rows[0]
    best = yaml.safe_load((out / "best_hyperparameters.yaml").read_text())
    top = max(rows, key=lambda x: float(x["fitness"]))
    assert best == {
        "lr0": float(top["lr0"]),
        "momentum": float(top["momentum"]),
        "cls": float(top["cls"]),
        "optimizer": "AdamW",
    }
    # A second search into the same folder is refused, not numbered elsewhere.
    with pytest.raises(ValueError, match="--resume"):
        tune(tiles, TuneOptions(out=str(out), iterations=1))
    # train --hyp takes the file, and Ultralytics trains with exactly those values.
    t = run(
        "train",
        "--data",
        tiles,
        *TINY,
        "--hyp",
        out / "best_hyperparameters.yaml",
        "--export",
        "none",
        "--project",
        tmp_path / "runs",
        "--name",
        "hyp",
        "--set",
        "plots=false",
        "amp=false",
    )
    assert t.returncode == 0, t.stderr[-3000:]
    args = yaml.safe_load((tmp_path / "runs" / "hyp" / "args.yaml").read_text())
    assert {k: args[k] for k in best} == best
