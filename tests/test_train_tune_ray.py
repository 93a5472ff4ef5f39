"""edgetile tune --ray: the same search space on Ray Tune (the optional 'ray' extra)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

from edgetile.train.datasets import TileOptions, build_tile_dataset
from edgetile.train.synth import SceneConfig, write_dataset
from edgetile.train.tuning import parse_space

pytest.importorskip("ray.tune", reason="needs Ray Tune, the optional extra: pip install 'edgetile[ray]'")

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
SMALL = SceneConfig(
    width=512, height=384, people=(2, 4), person_px=(16, 48), rocks=(1, 3), logs=(1, 2), bushes=(1, 4)
)


@pytest.mark.slow
def test_ray_tune_searches_the_same_space_and_writes_the_same_files(tmp_path):
    photos = write_dataset(tmp_path / "photos", 4, seed=43, config=SMALL)
    data = build_tile_dataset(
        photos, tmp_path / "tiles", TileOptions(tile=256, negatives=1), val_fraction=0.25
    ).data_yaml
    out = tmp_path / "tune"
    space = ["lr0=0.001:0.01", "momentum"]
    env = {**os.environ, "YOLO_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(
        [
            *EDGETILE,
            "tune",
            "--ray",
            "--data",
            str(data),
            "--model",
            "yolov8n.yaml",
            "--imgsz",
            "64",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--iterations",
            "1",
            "--space",
            *space,
            "--out",
            str(out),
            "--set",
            "amp=false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "tune_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["fitness"] != ""
    for k, (lo, hi, *_) in parse_space(space).items():
        assert lo <= float(rows[0][k]) <= hi
    best = yaml.safe_load((out / "best_hyperparameters.yaml").read_text())
    assert set(best) == {"lr0", "momentum", "optimizer"} and best["lr0"] == float(rows[0]["lr0"])
