"""`edgetile` as a user runs it: real processes, real files, real ONNX Runtime."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_models import red_blob_model

EDGETILE = [sys.executable, "-m", "edgetile.runtime.cli"]


def run(*args, cwd=None, **kw):
    return subprocess.run(
        [*EDGETILE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600, **kw
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def red_photo(path, w=600, h=400, people=((100, 100, 140, 180),)):
    img = np.full((h, w, 3), (60, 110, 70), np.uint8)
    for x1, y1, x2, y2 in people:
        img[y1:y2, x1:x2] = (0, 0, 255)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def inputs(tmp_path):
    """A folder of good, odd and broken inputs, as a field laptop's SD card might hold."""
    d = tmp_path / "photos"
    d.mkdir()
    red_photo(d / "good.jpg")
    good = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.png").write_text("this is not an image")
    img16 = cv2.imread(str(d / "good.jpg")).astype(np.uint16) * 257
    cv2.imwrite(str(d / "deep16.png"), img16)
    cv2.imwrite(str(d / "grey.png"), cv2.cvtColor(cv2.imread(str(d / "good.jpg")), cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "rgba.png"), cv2.cvtColor(cv2.imread(str(d / "good.jpg")), cv2.COLOR_BGR2BGRA))
    red_photo(d / "tiny.png", 90, 60, [(10, 10, 40, 50)])  # far smaller than a tile
    cv2.imwrite(str(d / "dot.png"), np.zeros((1, 1, 3), np.uint8))  # a single pixel
    return d


def test_detect_processes_everything_and_reports_each_bad_input(tmp_path, model, inputs):
    out = tmp_path / "out"
    missing = tmp_path / "not_there.jpg"
    r = run("detect", inputs, missing, "--model", model, "--out", out, "--tile", 256, "--save-vis")
    assert r.returncode == 1, r.stderr  # some inputs failed, the rest were processed
    assert "Traceback" not in r.stderr
    records = {Path(rec["image"]).name: rec for rec in json.loads((out / "detections.json").read_text())}
    assert set(records) == {
        "good.jpg",
        "truncated.jpg",
        "empty.jpg",
        "notes.png",
        "deep16.png",
        "grey.png",
        "rgba.png",
        "tiny.png",
        "dot.png",
        "not_there.jpg",
    }
    expected_errors = {
        "truncated.jpg": "truncated JPEG",
        "empty.jpg": "empty file",
        "notes.png": "not a readable image",
        "not_there.jpg": "file not found",
    }
    for name, words in expected_errors.items():
        assert words in records[name]["error"] and "\n" not in records[name]["error"]
        assert f"skipped {records[name]['image']}" in r.stderr
    for name in ("good.jpg", "deep16.png", "rgba.png", "tiny.png"):
        rec = records[name]
        assert "error" not in rec
        assert rec["detections"], name  # the red person is found, whatever the pixel format
        d = rec["detections"][0]
        assert set(d) == {"bbox", "score", "class_id", "class_name"} and d["class_name"] == "person"
        assert set(rec["timings_ms"]) >= {"read", "preprocess", "infer", "decode", "merge"}
        assert (rec["width"], rec["height"]) == ((90, 60) if name == "tiny.png" else (600, 400))
    assert records["dot.png"]["detections"] == [] and (
        records["dot.png"]["width"],
        records["dot.png"]["height"],
    ) == (1, 1)
    # Grey has no red: processed, nothing found.
    assert records["grey.png"]["detections"] == [] and "error" not in records["grey.png"]
    rows = list(csv.DictReader((out / "detections.csv").open()))
    assert set(rows[0]) == {"id", "xmin", "ymin", "xmax", "ymax", "score"}
    assert {row["id"] for row in rows} == {"good.jpg", "deep16.png", "rgba.png", "tiny.png"}
    assert sum(len(rec.get("detections", [])) for rec in records.values()) == len(rows)
    assert (out / "vis" / "good.jpg").is_file()


def test_reading_ahead_changes_nothing_but_when_photos_are_read(tmp_path, model, inputs):
    # Good and broken photos alike: with the next photo decoded on a thread (--read-ahead 256, the
    # default on a GPU) and without (--read-ahead 0, the default on the CPU), the same records in the
    # same order, with the same errors.
    def records(*extra):
        out = tmp_path / f"out{len(extra)}"  # both runs use the model's default batch (8)
        r = run("detect", inputs, "--model", model, "--out", out, "--tile", 256, *extra)
        assert r.returncode == 1, r.stderr
        recs = json.loads((out / "detections.json").read_text())
        for rec in recs:
            assert ("timings_ms" in rec) != ("error" in rec)
            rec.pop("timings_ms", None)
        return recs

    ahead, in_turn = records("--read-ahead", 256), records("--read-ahead", 0, "--batch", 8)
    assert ahead == in_turn
    assert [Path(rec["image"]).name for rec in ahead] == sorted(p.name for p in inputs.iterdir())
    assert sum(1 for rec in ahead if "error" in rec) == 3


def test_all_good_inputs_exit_zero_and_globs_expand(tmp_path, model):
    for i in range(3):
        red_photo(tmp_path / f"img_{i}.jpg")
    r = run("detect", tmp_path / "img_*.jpg", "--model", model, "--out", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "out" / "detections.json").read_text())) == 3
    assert r.stderr == ""  # --quiet: no bar, no summary


USAGE = [
    # (arguments after SOURCE, words in the one-line error)
    (["--model", "nowhere.onnx"], "--model: file not found"),
    (["--overlap", "1.5"], "--overlap"),
    (["--conf", "abc"], "--conf"),
    (["--tile", "8"], "--tile"),
    (["--batch", "0"], "--batch"),
    (["--merge", "soft-nms"], "--merge"),
    (["--model-weights", "1", "2"], "--model-weights: expected 1 weight"),
    (["--model-weights", "-1"], "--model-weights"),
]


@pytest.mark.parametrize("args,words", USAGE)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(tmp_path, model, args, words):
    red_photo(tmp_path / "a.jpg")
    if "--model" not in args:
        args = [*args, "--model", str(model)]
    r = run("detect", tmp_path / "a.jpg", "--out", tmp_path / "out", *args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1


def test_not_an_onnx_model_is_a_usage_error(tmp_path):
    red_photo(tmp_path / "a.jpg")
    (tmp_path / "bad.onnx").write_text("garbage")
    r = run("detect", tmp_path / "a.jpg", "--model", tmp_path / "bad.onnx", "--out", tmp_path / "out")
    assert r.returncode == 2 and "not a loadable ONNX model" in r.stderr and "Traceback" not in r.stderr


def test_model_whose_output_does_not_match_its_names_fails_each_input_clearly(tmp_path):
    model = red_blob_model(tmp_path / "odd.onnx", extra_classes=2)  # 3 class rows, 1 name
    red_photo(tmp_path / "a.jpg")
    r = run("detect", tmp_path / "a.jpg", "--model", model, "--out", tmp_path / "out")
    assert r.returncode == 1
    rec = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    assert "expected shape" in rec["error"] and "(1, 7, 1024)" in rec["error"]


def test_fixed_batch_model_runs_partial_batches(tmp_path):
    model = red_blob_model(tmp_path / "b4.onnx", batch=4)
    red_photo(tmp_path / "a.jpg", 1300, 700, [(100, 100, 140, 180), (900, 500, 940, 580)])  # 6 tiles of 256+
    r = run("detect", tmp_path / "a.jpg", "--model", model, "--out", tmp_path / "out", "--tile", 512)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    assert len(rec["detections"]) >= 2
    r = run("detect", tmp_path / "a.jpg", "--model", model, "--out", tmp_path / "out", "--batch", 8)
    assert r.returncode == 2 and "fixed batch of 4" in r.stderr


def test_progress_bar_on_a_terminal_only(tmp_path, model):
    for i in range(3):
        red_photo(tmp_path / f"img_{i}.jpg")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.run(
        [*EDGETILE, "detect", str(tmp_path), "--model", str(model), "--out", str(tmp_path / "o")],
        stdout=subprocess.PIPE,
        stderr=slave,
        timeout=300,
    )
    os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 65536):
            shown += chunk
    except OSError:  # EIO once the terminal is drained
        pass
    os.close(master)
    assert proc.returncode == 0
    assert b"100%" in shown and b"3/3 [" in shown  # tqdm's bar: percentage, count, then [elapsed<remaining]
    piped = run("detect", tmp_path, "--model", model, "--out", tmp_path / "p")
    assert "100%" not in piped.stderr and "3/3 [" not in piped.stderr  # not a terminal: no bar


def test_help_teaches_and_env_reports_backends():
    r = run("detect", "--help")
    assert r.returncode == 0 and "--merge-thr" in r.stdout and "Exit codes" in r.stdout
    r = run("env")
    assert r.returncode == 0
    assert "backend onnxruntime  usable" in r.stdout and "numpy" in r.stdout and "merge" in r.stdout
    r = run()
    assert r.returncode == 2


LEAN = """
import struct
import sys
import termios
from edgetile.runtime.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "ultralytics", "onnx", "tensorrt", "pycuda", "torchvision")
               if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(rc)
"""


def test_lean_runtime_never_loads_heavy_libraries(tmp_path, model):
    code = (
        "import sys, edgetile.runtime, edgetile.runtime.detector, edgetile.runtime.cli; "
        "print([m for m in ('torch','ultralytics','onnx','onnxruntime','tensorrt','pycuda') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    red_photo(tmp_path / "a.jpg")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            LEAN,
            "detect",
            str(tmp_path / "a.jpg"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stdout or r.stdout.strip().endswith("HEAVY=")


@pytest.mark.slow
def test_huge_photo_holds_only_the_image_and_one_batch(tmp_path, model):
    w, h = 20000, 15000
    img = np.full((h, w, 3), (60, 110, 70), np.uint8)
    img[7000:7080, 9000:9040] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "huge.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    del img
    # The peak of the detect process alone, measured by a small Python between it and pytest: not
    # RUSAGE_CHILDREN of pytest (the largest of every child the run has had), and not os.wait4 on a
    # child of pytest either (Linux carries the forking process's high-water mark over the exec).
    measure = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)"
    )
    args = [str(a) for a in ("detect", tmp_path / "huge.jpg", "--model", model, "--out", tmp_path / "out")]
    # 300 MP, an orthomosaic's size: past the default --max-pixels (a 100 MP camera)
    args += ["--batch", "8", "--max-pixels", "unlimited"]
    child = subprocess.run(
        [sys.executable, "-c", measure, *EDGETILE, *args], capture_output=True, text=True, timeout=600
    )
    stderr = child.stderr
    peak_mb = int(stderr.rsplit("peak_kib", 1)[1].split()[0]) / 1024  # KiB on Linux
    assert child.returncode == 0, stderr
    rec = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    assert (rec["width"], rec["height"]) == (w, h) and rec["detections"]
    image_mb = w * h * 3 / 2**20  # 858 MB
    # The decoded image plus one batch (8 x 3 x 256 x 256 floats, 6 MB) plus the interpreter,
    # OpenCV and ONNX Runtime (~250 MB): a second copy of the image would add another 858 MB.
    assert peak_mb > image_mb, (
        f"peak RSS {peak_mb:.0f} MB: the child cannot have held the {image_mb:.0f} MB image"
    )
    assert peak_mb < image_mb + 450, f"peak RSS {peak_mb:.0f} MB for an image of {image_mb:.0f} MB"


def test_plugin_usage_errors_exit_2_under_python_m(tmp_path):
    # A plugin command's usage error must be caught when the CLI runs as `python -m`, too.
    r = run("eval", "--model", tmp_path / "missing.onnx", "--data", tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr


def test_serve_registers_through_entry_points_and_the_daemon_never_imports_the_command_line():
    from importlib import metadata

    commands = {e.name: e.value for e in metadata.entry_points(group="edgetile.commands")}
    assert commands["serve"] == "edgetile.runtime.serve.command:register"
    assert commands["export"] == "edgetile.export.cli:register"
    code = (
        "import sys, edgetile.runtime.serve.command, edgetile.runtime.serve.daemon, "
        "edgetile.runtime.serve.config; print('edgetile.runtime.cli' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


def test_ensemble_with_weights_and_flip_runs_from_the_cli(tmp_path, model):
    second = red_blob_model(tmp_path / "second.onnx", batch=2)  # a fixed-batch member next to a dynamic one
    red_photo(tmp_path / "a.jpg", 900, 700, [(100, 100, 140, 180), (600, 400, 640, 480)])
    r = run(
        "detect",
        tmp_path / "a.jpg",
        "--model",
        model,
        second,
        "--model-weights",
        1,
        2,
        "--tta",
        "flip",
        "--tile",
        256,
        "--out",
        tmp_path / "out",
    )
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    assert rec["timings_ms"]["fuse"] > 0  # four passes fused by WBF
    # The oracle: both members are the same model, and the red-blob model is mirror-symmetric on its
    # 8 px cells, so the four passes agree box for box and their fusion must give back one plain pass.
    # A flipped pass mapped back to the wrong place, or a box lost by the fusion, would differ.
    single = run("detect", tmp_path / "a.jpg", "--model", model, "--tile", 256, "--out", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    plain = json.loads((tmp_path / "one" / "detections.json").read_text())[0]["detections"]

    def table(dets):
        return sorted((*d["bbox"], d["score"]) for d in dets)

    assert len(rec["detections"]) == len(plain) > 0
    np.testing.assert_allclose(table(rec["detections"]), table(plain), atol=1e-3)
    # And every box lies on one of the two red people.
    people = [(100, 100, 140, 180), (600, 400, 640, 480)]
    for d in rec["detections"]:
        cx, cy = (d["bbox"][0] + d["bbox"][2]) / 2, (d["bbox"][1] + d["bbox"][3]) / 2
        assert any(x1 <= cx <= x2 and y1 <= cy <= y2 for x1, y1, x2, y2 in people), d


MISSING = [
    # (module made unimportable, command, the extra the one-line error names)
    ("ultralytics", ["export", "onnx", "m.pt"], "export"),
    ("torch", ["train", "--data", "d.yaml", "--model", "yolov8n.yaml"], "train"),
    ("onnx", ["export", "engine", "m.onnx", "--precision", "fp16"], "engine"),
]


@pytest.mark.parametrize("module,args,extra", MISSING, ids=[m[0] for m in MISSING])
def test_a_missing_optional_module_is_one_line_naming_the_extra(tmp_path, module, args, extra):
    red_blob_model(tmp_path / "m.onnx")
    (tmp_path / "m.pt").write_bytes(b"not read before the import")
    (tmp_path / "d.yaml").write_text("path: .\ntrain: images\nval: images\nnames:\n  0: person\n")
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"  # as if it were not installed
        "from edgetile.runtime.cli import main\n"
        f"sys.exit(main({args!r}))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [
        f"edgetile {args[0]}: error: needs the Python module {module}, which this install lacks: "
        f"pip install 'edgetile[{extra}]'"
    ]


def test_resume_settings_name_the_verifier_and_its_threshold(tmp_path, model):
    # a rerun with another --verify classifier or --verify-thr must not keep the earlier results
    from edgetile.runtime.cli import build_parser, detect_run_settings
    from edgetile.runtime.options.files import resolve_options

    a_cls, b_cls = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a_cls.write_bytes(b"classifier a")
    b_cls.write_bytes(b"classifier b")

    def settings(*words):
        a = resolve_options(
            build_parser().parse_args(["detect", "x.jpg", "--out", "o", "--model", str(model), *words])
        )
        return detect_run_settings(a, None)

    plain, with_a, with_b = settings(), settings("--verify", str(a_cls)), settings("--verify", str(b_cls))
    with_a_thr = settings("--verify", str(a_cls), "--verify-thr", "0.4")
    assert plain["verify"] is None and with_a["verify"] != with_b["verify"]
    assert with_a["verify-thr"] is None and with_a_thr["verify-thr"] == 0.4
    assert len({repr(s) for s in (plain, with_a, with_b, with_a_thr)}) == 4
