"""`edgetile detect --settings FILE`: the file `eval --sweep` writes, read by detect and by serve's config loader."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgetile.runtime.cli import build_parser
from edgetile.runtime.detector import DetectConfig
from edgetile.runtime.options.detect import detect_config_from_args
from edgetile.runtime.options.files import resolve_options
from edgetile.runtime.serve.command import register
from edgetile.runtime.serve.config import ServeConfig
from edgetile.train.evaluation import SweepResult
from onnx_models import red_blob_model

EDGETILE = [sys.executable, "-m", "edgetile.runtime.cli"]
# The same command in an interpreter where 'import yaml' fails, as on a device without the serve extra.
EDGETILE_NO_YAML = [
    sys.executable,
    "-c",
    "import sys; sys.modules['yaml'] = None; from edgetile.runtime.cli import main; sys.exit(main())",
]


def run(*args, cmd=EDGETILE, cwd=None):
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def detect_namespace(*words):
    """What cmd_detect hands to run_detect: detect's parse, then the settings file and the defaults."""
    return resolve_options(
        build_parser().parse_args(["detect", "PHOTOS", "--out", "results", *map(str, words)])
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("m") / "red.onnx")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """Two people on 8 px cells of two 256 px tiles (--tile 256 --overlap 0): one bright red (score ~1),
    one dull red (score ~0.5), so the confidence threshold decides whether one or two are found."""
    img = np.full((256, 512, 3), (60, 110, 70), np.uint8)
    img[16:24, 16:24] = (0, 0, 255)
    img[96:104, 352:360] = (90, 90, 180)
    path = tmp_path_factory.mktemp("photos") / "two.png"
    cv2.imwrite(str(path), img)
    return path


def scores(out_dir):
    (record,) = json.loads((out_dir / "detections.json").read_text())
    return sorted(d["score"] for d in record["detections"])


@pytest.mark.parametrize(
    "cfg, weights",
    [
        # the common sweep result: tiling and merging chosen, the rest at detect's defaults
        (DetectConfig(tile=128, overlap=0.25, conf=0.15, merge="wbf", merge_thr=0.6), None),
        # every key the file can hold: a flipped pass, the full frame, a fixed batch
        (
            DetectConfig(
                tile=640,
                overlap=0.3,
                conf=0.05,
                iou=0.6,
                merge="nmm",
                merge_thr=0.3,
                tta=("flip",),
                full_frame=True,
                batch=4,
            ),
            None,
        ),
        # an ensemble swept with weights: the scores hold only for them, so the file carries them
        (DetectConfig(tile=1024, overlap=0.2, conf=0.4, merge="nms", merge_thr=0.7), [1.0, 2.0]),
    ],
)
def test_sweep_settings_file_gives_detect_and_serve_the_sweep_config(tmp_path, monkeypatch, cfg, weights):
    row = {
        "merge": cfg.merge,
        "merge_thr": cfg.merge_thr,
        "conf": cfg.conf,
        "recall": 0.9,
        "precision": 0.8,
        "f1": 0.847,
        "tp": 9,
        "fp": 2,
        "gt_boxes": 10,
        "map50": 0.8,
        "map75": 0.5,
        "map50_95": 0.45,
        "lacmus_ap50": 0.81,
        "lacmus_f1": 0.84,
    }
    res = SweepResult([row], row, cfg, "f1", 0.9, model_runs=1)
    models = ["a.onnx", "b.onnx"] if weights else ["a.onnx"]
    paths = res.write(tmp_path / "ev", models, weights=weights, data="LADD/ (subset test), 412 photo(s)")
    text = paths["yaml"].read_text()
    assert (
        "# data: LADD/ (subset test), 412 photo(s)\n" in text and "# objective: f1, min recall: 0.9;" in text
    )
    assert "recall 0.9000" in text and "a.onnx" in text

    # detect reads the YAML and eval's JSON record alike.
    for path in (paths["yaml"], paths["json"]):
        a = detect_namespace("--settings", path)
        assert detect_config_from_args(a) == cfg, path.name
        assert a.model_weights == weights and a.model is None, path.name

    # serve reads the YAML as its --config, and the daemon's configuration checks pass.
    monkeypatch.chdir(tmp_path)
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    a = p.parse_args(["serve", "--config", str(paths["yaml"])])
    merged = resolve_options(a)
    assert detect_config_from_args(merged) == cfg
    assert merged.model_weights == weights
    ServeConfig.from_options(merged)


@pytest.mark.parametrize(
    "file_text, words, expected",
    [
        # the file wins over the defaults; what it does not set keeps detect's default
        (
            "conf: 0.9\ntile: 512\n",
            [],
            {"conf": 0.9, "tile": 512, "overlap": 0.2, "merge": "ios", "batch": None},
        ),
        # an option given on the command line wins, even when it equals the default
        ("conf: 0.9\ntile: 512\n", ["--conf", "0.25"], {"conf": 0.25, "tile": 512}),
        # a flag on the command line wins over 'false' in the file
        (
            "full-frame: false\ntile: 512\n",
            ["--full-frame", "--tile", "256"],
            {"full_frame": True, "tile": 256},
        ),
        # underscore spellings and lists: models and weights from the file
        (
            "model: [a.onnx, b.onnx]\nmodel_weights: [1, 2]\nbackend: onnxruntime\n",
            [],
            {"model": ["a.onnx", "b.onnx"], "model_weights": [1.0, 2.0], "backend": "onnxruntime"},
        ),
        # models on the command line replace the file's, they do not add to them
        (
            "model: [a.onnx, b.onnx]\nmodel-weights: [1, 2]\n",
            ["--model", "c.onnx", "--model-weights", "3"],
            {"model": ["c.onnx"], "model_weights": [3.0]},
        ),
        # a JSON file, and an empty file (nothing set)
        (
            '{"merge": "wbf", "merge-thr": 0.6, "tta": "flip"}',
            [],
            {"merge": "wbf", "merge_thr": 0.6, "tta": "flip"},
        ),
        ("", [], {"conf": 0.25, "tile": 1024, "full_frame": False, "model": None, "tta": "none"}),
    ],
)
def test_command_line_wins_over_the_file_and_the_file_over_defaults(tmp_path, file_text, words, expected):
    path = tmp_path / "s.yaml"
    path.write_text(file_text)
    a = detect_namespace("--settings", path, *words)
    assert {k: getattr(a, k) for k in expected} == expected


def test_without_settings_detect_has_its_defaults():
    a = detect_namespace()
    assert detect_config_from_args(a) == DetectConfig()
    assert (a.model, a.model_weights, a.backend, a.settings) == (None, None, "auto", None)


def test_settings_decide_what_detect_finds(tmp_path, model, photo):
    settings = tmp_path / "s.yaml"
    settings.write_text("tile: 256\noverlap: 0\nconf: 0.8\n")
    r = run("detect", photo, "--model", model, "--out", tmp_path / "file", "--settings", settings)
    assert r.returncode == 0, r.stderr
    only_bright = scores(tmp_path / "file")
    assert len(only_bright) == 1 and only_bright[0] > 0.8  # the file's conf
    r = run(
        "detect", photo, "--model", model, "--out", tmp_path / "cli", "--settings", settings, "--conf", 0.2
    )
    assert r.returncode == 0, r.stderr
    both = scores(tmp_path / "cli")
    assert len(both) == 2 and 0.2 < both[0] < 0.8  # the command line's conf finds the dull one too
    r = run(
        "detect",
        photo,
        "--model",
        model,
        "--out",
        tmp_path / "opts",
        "--tile",
        256,
        "--overlap",
        0,
        "--conf",
        0.2,
    )
    assert r.returncode == 0, r.stderr
    assert scores(tmp_path / "opts") == both  # the file's tile and overlap are the options' own


def test_json_settings_and_eval_records_need_no_pyyaml(tmp_path, model, photo):
    record = {
        "detect_config": {"tile": 256},
        "detect_settings": {"tile": 256, "overlap": 0, "conf": 0.8, "full-frame": True},
        "command": "edgetile detect ...",
    }
    files = {"plain.json": {"tile": 256, "overlap": 0, "conf": 0.8}, "best_detect.json": record}
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
        r = run(
            "detect",
            photo,
            "--model",
            model,
            "--out",
            tmp_path / name[:-5],
            "--settings",
            tmp_path / name,
            cmd=EDGETILE_NO_YAML,
        )
        assert r.returncode == 0, r.stderr
        assert len(scores(tmp_path / name[:-5])) == 1, name
    (tmp_path / "s.yaml").write_text("conf: 0.8\n")
    r = run(
        "detect",
        photo,
        "--model",
        model,
        "--out",
        tmp_path / "y",
        "--settings",
        tmp_path / "s.yaml",
        cmd=EDGETILE_NO_YAML,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"edgetile detect: error: --settings {tmp_path / 's.yaml'}: reading YAML needs "
        "PyYAML, part of the serve extra (pip install 'edgetile[serve]'); a JSON settings "
        "file needs nothing more"
    )


KNOWN = (
    "backend, batch, conf, embed, full-frame, iou, merge, merge-thr, model, model-weights, overlap, tile, tta, "
    "verify, verify-thr"
)


@pytest.mark.parametrize(
    "content, words",
    [
        # a value its option refuses, in the option's own words
        ("conf: 2\n", "conf: expected a number in [0.0, 1.0] for --conf, found 2"),
        ("tile: 16\n", "tile: expected an integer >= 32 for --tile, found 16"),
        ("merge: union\n", "merge: expected one of ios, nms, nmm, wbf, found 'union'"),
        (
            "model-weights: [1, -2]\n",
            "model-weights: expected a finite number > 0 for --model-weights, found -2",
        ),
        # a list where one value belongs, a number where true/false belongs
        ("tta: [flip]\n", "tta: expected a single value, found ['flip']"),
        ("full-frame: 1\n", "full-frame: expected true or false, found 1"),
        # a key no option has: named, with the keys a file may hold
        ("tiles: 512\n", f"unknown key 'tiles'; expected one of: {KNOWN}"),
        # detect's other options stay on the command line
        (
            "out: results\n",
            f"'out' is not a detection setting: give --out on the command line; a settings file holds: {KNOWN}",
        ),
        ("sources: [a.jpg]\n", "'sources' is not a detection setting: give SOURCE on the command line"),
        ("read_ahead: 0\n", "'read_ahead' is not a detection setting: give --read-ahead on the command line"),
        ("settings: other.yaml\n", "'settings' is not a detection setting"),
        # one setting spelled both ways
        (
            "merge-thr: 0.4\nmerge_thr: 0.5\n",
            "'merge-thr' given twice (as '-' and '_' spellings); expected it once",
        ),
        # not a mapping; not YAML; not JSON
        ("- conf\n- 0.1\n", "expected a mapping of option names to values, found list"),
        ("conf: [0.1\n", "not valid YAML"),
        ('{"conf": 0.1,}', "not valid JSON: "),  # the json module's words for it vary by Python version
        ("[1, 2]", "expected a mapping of option names to values, found list"),
        # eval's record whose settings are not a mapping of detection options
        ('{"detect_config": {}, "detect_settings": {"out": "x"}}', "'out' is not a detection setting"),
        (
            '{"detect_config": {}, "detect_settings": ["--tile", "512"]}',
            "detect_settings: expected a mapping of option names to values, found list",
        ),
        # unreadable: missing, a folder, binary
        (None, "cannot read {path}: No such file or directory"),
        ("DIR", "cannot read {path}: Is a directory"),
        (b"\xff\xfe\x00c", "expected a UTF-8 text file of YAML or JSON, found binary data"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(tmp_path, content, words):
    path = tmp_path / "s.yaml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    r = run("detect", tmp_path / "photos", "--out", tmp_path / "out", "--settings", path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("edgetile detect: error: --settings")
    assert words.format(path=path) in r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_file_value_is_refused_in_the_option_s_own_words(tmp_path):
    (tmp_path / "s.yaml").write_text("conf: 2\n")
    by_file = run("detect", "photos", "--out", "out", "--settings", tmp_path / "s.yaml")
    by_option = run("detect", "photos", "--out", "out", "--conf", "2")
    assert by_file.returncode == by_option.returncode == 2
    why = "expected a number in [0.0, 1.0] for --conf, found 2"
    assert by_file.stderr.strip().endswith(why)
    assert (
        by_option.stderr == f"edgetile detect: error: argument --conf: {why} (see 'edgetile detect --help')\n"
    )


def test_detect_help_shows_settings_and_the_real_defaults():
    r = run("detect", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--settings FILE" in text and "best_detect.yaml of 'edgetile eval --sweep'" in text
    assert "(default: 1024)" in text and "(default: 0.25)" in text and "(default: ios)" in text
