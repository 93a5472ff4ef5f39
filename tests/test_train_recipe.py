"""``edgetile recipe lacmus`` and ``edgetile train --folds`` end to end, tiny, on the CPU.

A handful of 256x256 synthetic photos, 128 px windows, yolov8n from its YAML (no download), inputs
of 64 and 96 px, one epoch per model (``--epochs 10 10 10 --scale 0.1``): every step runs, a rerun
skips the finished ones, and the ensemble file it writes loads in detect, serve, eval and export engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from test_export_engine import FakeCudaDevice
from trt_stand_in import StandInTensorRT

from edgetile.runtime.options.detect import read_ensemble
from edgetile.train.recipe import STEPS
from edgetile.train.synth import SceneConfig, write_dataset

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
TINY = SceneConfig(
    width=256, height=256, people=(1, 3), person_px=(16, 40), rocks=(0, 2), logs=(0, 1), bushes=(0, 2)
)
SMALL_RECIPE = [
    "--model",
    "yolov8n.yaml",
    "--tile",
    128,
    "--folds",
    2,
    "--negatives",
    2,
    "--hard-negatives",
    2,
    4,
    "--imgsz",
    64,
    96,
    "--epochs",
    10,
    10,
    10,
    "--scale",
    0.1,
    "--fusion-weights",
    "choose",
    "--batch",
    4,
    "--workers",
    0,
    "--device",
    "cpu",
    "--set",
    "plots=false",
    "amp=false",
]


def run(*args):
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*EDGETILE, *map(str, args)], capture_output=True, text=True, timeout=1500, env=env)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    photos = write_dataset(root / "photos", 8, seed=11, config=TINY)
    r = run("recipe", "lacmus", photos, "--out", root / "out", *SMALL_RECIPE)
    return root, photos, r


@pytest.mark.slow
def test_every_step_runs_and_is_recorded(recipe):
    root, _, r = recipe
    assert r.returncode == 0, r.stderr[-4000:]
    doc = json.loads((root / "out" / "recipe.json").read_text())
    assert list(doc["steps"]) == list(STEPS) and all(s["done"] for s in doc["steps"].values())
    steps = {k: v["outputs"] for k, v in doc["steps"].items()}
    # Model 1 learnt people only; models 2 and 3 had the hard negatives, model 3 more of them.
    m1 = (root / "out" / "tiles" / "folds" / "model1_train.txt").read_text().splitlines()
    manifest = {r["tile"]: r["kind"] for r in _csv(root / "out" / "tiles" / "manifest.csv")}
    assert m1 and all(manifest[line.rsplit("/", 1)[-1][:-4]] == "positive" for line in m1)
    kinds_hard = [r["kind"] for r in _csv(root / "out" / "tiles_hard" / "manifest.csv")]
    kinds_more = [r["kind"] for r in _csv(root / "out" / "tiles_more" / "manifest.csv")]
    assert kinds_hard.count("hard-negative") == 2 and kinds_more.count("hard-negative") == 4
    # Sizes, epochs (scaled to one), learning rates and the start of each model, as Ultralytics ran them.
    args = {
        m: yaml.safe_load((root / "out" / "runs" / m / "args.yaml").read_text())
        for m in ("model1", "model2", "model3")
    }
    assert [args[m]["imgsz"] for m in args] == [64, 64, 96]
    assert [args[m]["epochs"] for m in args] == [1, 1, 1]
    assert [args[m]["lr0"] for m in args] == [1e-3, 1e-3, 1e-4]
    assert args["model3"]["model"] == steps["model2"]["best"]  # 640 then 1024: model 3 continues model 2
    assert args["model2"]["data"].endswith("tiles_hard/folds/fold0.yaml")
    # The ensemble: models 2 and 3, weights chosen on the held-out photos from the grid.
    ens = read_ensemble(root / "out" / "ensemble.yaml")
    assert ens.models == (steps["model2"]["onnx"], steps["model3"]["onnx"])
    assert [row["weights"] for row in steps["ensemble"]["grid"]] == [[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]]
    assert list(ens.weights) in [row["weights"] for row in steps["ensemble"]["grid"]]
    settings = yaml.safe_load((root / "out" / "ensemble_detect.yaml").read_text())
    assert (settings["tta"], settings["merge"], settings["merge-thr"], settings["tile"]) == (
        "flip",
        "ios",
        0.5,
        128,
    )
    # Full-photo evaluation on the held-out fold, the sweep and the error analysis.
    ev = steps["evaluation"]
    assert (root / "out" / "eval" / "metrics.json").is_file() and (
        root / "out" / "eval" / "sweep.csv"
    ).is_file()
    assert (root / "out" / "eval" / "best_detect.yaml").is_file()
    assert (root / "out" / "eval" / "errors" / "errors.json").is_file()
    held = [r for r in _csv(root / "out" / "tiles" / "photos.csv") if r["fold"] == "0"]
    assert json.loads((root / "out" / "eval" / "metrics.json").read_text())["photos"] == len(held)
    assert 0.0 <= ev["scores"]["map50"] <= 1.0
    assert "recipe: evaluation: done" in r.stderr


@pytest.mark.slow
def test_a_rerun_skips_finished_steps_and_redoes_a_deleted_one(recipe):
    root, photos, first = recipe
    assert first.returncode == 0
    before = json.loads((root / "out" / "recipe.json").read_text())["steps"]
    r = run("recipe", "lacmus", photos, "--out", root / "out", *SMALL_RECIPE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("done before, skipped") == len(STEPS)
    assert json.loads((root / "out" / "recipe.json").read_text())["steps"] == before
    shutil.rmtree(root / "out" / "eval")  # an output gone: its step runs again, the others do not
    r = run("recipe", "lacmus", photos, "--out", root / "out", *SMALL_RECIPE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("done before, skipped") == len(STEPS) - 1
    assert "recipe: evaluation: done" in r.stderr and (root / "out" / "eval" / "metrics.json").is_file()
    after = json.loads((root / "out" / "recipe.json").read_text())["steps"]
    assert (
        after["model3"] == before["model3"]
        and after["evaluation"]["finished"] >= before["evaluation"]["finished"]
    )


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused(recipe):
    root, photos, first = recipe
    assert first.returncode == 0
    words = [str(w) for w in SMALL_RECIPE]
    words[words.index("--scale") + 1] = "0.2"
    r = run("recipe", "lacmus", photos, "--out", root / "out", *words)
    assert r.returncode == 2
    assert "made with other settings (scale 0.1 -> 0.2)" in r.stderr


@pytest.mark.slow
def test_the_ensemble_file_loads_in_detect_serve_eval_and_export(recipe, tmp_path):
    root, photos, first = recipe
    assert first.returncode == 0
    ens = root / "out" / "ensemble.yaml"
    settings = root / "out" / "eval" / "best_detect.yaml"
    one = sorted((photos / "JPEGImages").glob("*.jpg"))[0]
    r = run("detect", one, "--model", ens, "--settings", settings, "--out", tmp_path / "det", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "det" / "detections.json").read_text())[0]["image"] == str(one)
    r = run("eval", "--model", ens, "--data", photos, "--tile", 128, "--out", tmp_path / "ev", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ev" / "metrics.json").is_file()
    code = (
        "from edgetile.runtime.cli import build_parser\n"
        "from edgetile.runtime.options.files import resolve_options\n"
        "from edgetile.runtime.options.detect import open_detector\n"
        f"a = resolve_options(build_parser().parse_args(['serve', '--model', {str(ens)!r}, '--watch', '.']))\n"
        "with open_detector(a) as det: print(len(det._models), [m.weight for m in det._models])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "2"
    r = run("serve", "--help")
    assert r.returncode == 0 and ".yaml/.json: models, weights, fusion" in " ".join(r.stdout.split())
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        r = run("export", "engine", ens, "--precision", "fp16")
        assert r.returncode == 2 and "TensorRT is not installed here" in r.stderr
    from edgetile.export.engine import EngineRequest, build_ensemble_engines

    out, results = build_ensemble_engines(
        ens,
        tmp_path / "engines.yaml",
        EngineRequest("fp16"),
        trt=StandInTensorRT("10.3.0"),
        device=FakeCudaDevice(),
        log=lambda m: None,
    )
    assert len(results) == 2 and read_ensemble(out).weights == read_ensemble(ens).weights


@pytest.mark.slow
def test_train_folds_writes_an_ensemble_of_every_fold_scored_out_of_fold(recipe, tmp_path):
    root, photos, first = recipe
    tiles = root / "out" / "tiles"  # two folds, made by the recipe's first step
    test_set = write_dataset(tmp_path / "test_set", 2, seed=99, config=TINY)  # photos no fold trained on
    common = ["--model", "yolov8n.yaml", "--imgsz", 64, "--epochs", 1, "--batch", 4, "--workers", 0]
    common += ["--device", "cpu", "--set", "plots=false", "amp=false", "--project", tmp_path]
    # Weights cannot be searched on the folds' own photos: each is in the training of the other fold.
    r = run(
        "train",
        "--data",
        tiles / "data.yaml",
        "--folds",
        *common,
        "--name",
        "leak",
        "--fusion-weights",
        "choose",
        "--weights-data",
        photos,
    )
    assert r.returncode == 2 and "expected photos that no fold trained on, found 8" in r.stderr
    assert not (tmp_path / "leak").exists()  # refused before any training
    r = run(
        "train",
        "--data",
        tiles / "data.yaml",
        "--folds",
        *common,
        "--name",
        "chosen",
        "--fusion-weights",
        "choose",
        "--weights-data",
        test_set,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    chosen = json.loads((tmp_path / "chosen" / "folds.json").read_text())
    assert chosen["weights_rule"].startswith("chosen on 2 photo(s) no fold trained on, among 1:1, 1:2, 2:1")
    r = run(
        "train",
        "--data",
        tiles / "data.yaml",
        "--folds",
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
        "--set",
        "plots=false",
        "amp=false",
        "--project",
        tmp_path,
        "--name",
        "folds",
    )
    assert r.returncode == 0, r.stderr[-4000:]
    run_dir = tmp_path / "folds"
    doc = json.loads((run_dir / "folds.json").read_text())
    assert doc["folds"] == 2 and len(doc["oof"]) == 2
    ens = read_ensemble(run_dir / "ensemble.yaml")
    assert ens.models == tuple(str(run_dir / f"fold{k}" / "weights" / "best.onnx") for k in range(2))
    assert doc["weights_rule"].startswith("oof") and max(ens.weights) == 1.0
    for k in range(2):
        held = [p for p in _csv(tiles / "photos.csv") if p["fold"] == str(k)]
        metrics = json.loads((run_dir / f"fold{k}" / "oof" / "metrics.json").read_text())
        assert metrics["photos"] == len(held)  # scored on its own fold's full photos only
        a = yaml.safe_load((run_dir / f"fold{k}" / "args.yaml").read_text())
        assert a["data"].endswith(f"folds/fold{k}.yaml")
    assert "out of fold" in r.stderr and "ensemble:" in r.stderr


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_an_oversized_model_is_refused_before_any_step(tmp_path):
    photos = write_dataset(tmp_path / "photos", 2, seed=1, config=TINY)
    r = run(
        "recipe", "lacmus", photos, "--out", tmp_path / "out", "--model", "yolov8x.yaml", "--budget-mb", 50
    )
    assert r.returncode == 2 and "refused" in r.stderr and "over the weight budget of 50 MB" in r.stderr
    assert not (tmp_path / "out" / "tiles").exists()
