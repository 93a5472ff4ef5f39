"""Staged training (``edgetile train --stages``): parsing, the budget before the first stage, and the
hand-over: stage 2 starts from stage 1's best.pt at its own input size and learning rate, as
Ultralytics' own args.yaml of each stage records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from edgetile.train.stages import Stage, parse_stages
from edgetile.train.synth import SceneConfig, write_dataset

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
TINY = SceneConfig(
    width=256, height=256, people=(1, 3), person_px=(16, 40), rocks=(0, 2), logs=(0, 1), bushes=(0, 2)
)
TINY_TRAIN = ["--model", "yolov8n.yaml", "--batch", "4", "--workers", "0", "--device", "cpu"]
QUIET = ["--set", "plots=false", "amp=false", "val=true"]


def run(*args):
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*EDGETILE, *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.parametrize(
    "words, expected",
    [
        (["640:30:1e-3"], [Stage(640, 30, 1e-3)]),  # one stage
        (["640:30:1e-3", "1024:10:1e-4"], [Stage(640, 30, 1e-3), Stage(1024, 10, 1e-4)]),  # Lacmus 1st
        (
            ["229:5:0.01", "384:5:0.005", "512:5:0.001"],
            [Stage(229, 5, 0.01), Stage(384, 5, 0.005), Stage(512, 5, 0.001)],
        ),
    ],
)
def test_parse_stages(words, expected):
    assert parse_stages(words) == expected


@pytest.mark.parametrize(
    "word, message",
    [
        ("640:30", "expected IMGSZ:EPOCHS:LR"),  # two fields
        ("640:x:1e-3", "integer:integer:number"),  # not a number
        ("16:30:1e-3", "imgsz: expected an integer of at least 32"),  # too small
        ("640:0:1e-3", "epochs: expected a positive integer"),  # no epochs
        ("640:30:2", "lr0: expected a learning rate in"),  # lr out of range
    ],
)
def test_parse_stages_refuses(word, message):
    with pytest.raises(ValueError, match=message):
        parse_stages([word])


def test_stages_from_yaml(tmp_path):
    f = tmp_path / "stages.yaml"
    f.write_text(
        "- {imgsz: 640, epochs: 30, lr0: 1.0e-3}\n- {imgsz: 1024, epochs: 10, lr0: 1.0e-4, mosaic: 0}\n"
    )
    assert parse_stages([str(f)]) == [Stage(640, 30, 1e-3), Stage(1024, 10, 1e-4, {"mosaic": 0})]
    f.write_text("- {imgsz: 640, epochs: 30, lr0: 1.0e-3, mosaik: 0}\n")
    with pytest.raises(ValueError, match="unknown \\['mosaik'\\]"):
        parse_stages([str(f)])
    f.write_text("- {imgsz: 640, epochs: 30}\n")
    with pytest.raises(ValueError, match="missing \\['lr0'\\]"):
        parse_stages([str(f)])


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    photos = write_dataset(root / "photos", 6, seed=5, config=TINY)
    r = run("dataset", "tiles", photos, "--out", root / "tiles", "--tile", 128, "--negatives", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.slow
def test_budget_is_checked_before_the_first_stage(tiles):
    r = run(
        "train",
        "--data",
        tiles / "tiles" / "data.yaml",
        *TINY_TRAIN,
        "--stages",
        "64:1:1e-3",
        "96:1:1e-4",
        "--budget-mb",
        1,
        "--project",
        tiles / "runs",
        "--name",
        "refused",
    )
    assert r.returncode == 2 and "refused" in r.stderr and "over the weight budget of 1 MB" in r.stderr
    assert not (tiles / "runs" / "refused").exists()  # no stage started


@pytest.mark.slow
def test_stage_two_starts_from_stage_one_best_at_its_own_lr(tiles):
    r = run(
        "train",
        "--data",
        tiles / "tiles" / "data.yaml",
        *TINY_TRAIN,
        "--stages",
        "64:1:1e-3",
        "96:1:1e-4",
        *QUIET,
        "--project",
        tiles / "runs",
        "--name",
        "staged",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tiles / "runs" / "staged"
    a1 = yaml.safe_load((run_dir / "stage1" / "args.yaml").read_text())
    a2 = yaml.safe_load((run_dir / "stage2" / "args.yaml").read_text())
    assert (a1["model"], a1["imgsz"], a1["lr0"], a1["epochs"]) == ("yolov8n.yaml", 64, 1e-3, 1)
    # The hand-over: stage 2 loads stage 1's best weights, at stage 2's size and learning rate.
    assert a2["model"] == str(run_dir / "stage1" / "weights" / "best.pt")
    assert (a2["imgsz"], a2["lr0"]) == (96, 1e-4)
    # A learning rate Ultralytics would ignore under optimizer=auto; no warm-up undoing the fine-tune.
    assert a1["optimizer"] == a2["optimizer"] == "AdamW"
    assert a2["warmup_epochs"] == 0
    summary = json.loads((run_dir / "stages.json").read_text())
    assert [s["imgsz"] for s in summary["stages"]] == [64, 96]
    assert summary["stages"][1]["start"] == a2["model"]
    assert summary["best"] == str(run_dir / "stage2" / "weights" / "best.pt")
    assert summary["onnx"] == str(run_dir / "stage2" / "weights" / "best.onnx")  # only the last is exported
    assert not (run_dir / "stage1" / "weights" / "best.onnx").exists()
    assert "stage" in r.stderr and "lr0" in r.stderr  # the printed table
    assert (run_dir / "stages.txt").read_text().splitlines()[1].split()[:4] == [
        "stage",
        "imgsz",
        "epochs",
        "lr0",
    ]
