"""eval, its sweep and pseudo-labelling, on a tiny real ONNX model (red blobs are people)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgetile.runtime.cli import build_parser
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import AnnotatedPhoto, Dataset, load_dataset
from edgetile.runtime.evaluation.metrics import evaluate
from edgetile.runtime.options.detect import detect_config_from_args
from edgetile.runtime.options.files import resolve_options
from edgetile.train.evaluation import SweepGrid, sweep
from onnx_models import red_blob_model

EDGETILE = [sys.executable, "-c", "import sys; from edgetile.runtime.cli import main; sys.exit(main())"]
GREEN = (60, 110, 70)


def run(*args):
    return subprocess.run([*EDGETILE, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("m") / "red.onnx", input_hw=(128, 128))


def scene(path, people, w=320, h=240, colour=(0, 0, 255)):
    img = np.full((h, w, 3), GREEN, np.uint8)
    for x1, y1, x2, y2 in people:
        img[y1:y2, x1:x2] = colour
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A VOC set of red squares: 16 px people centred on the model's 8 px cells, some across tile borders."""
    root = tmp_path_factory.mktemp("voc")
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    layouts = [
        [(12, 12, 28, 28), (100, 60, 116, 76)],
        [(92, 100, 108, 116), (196, 28, 212, 44)],
        [],
        [(36, 180, 52, 196), (228, 124, 244, 140), (276, 20, 292, 36)],
    ]
    for i, people in enumerate(layouts):
        scene(root / "JPEGImages" / f"p{i}.png", people)
        objs = "".join(
            f"<object><name>person</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
            f"<ymax>{d}</ymax></bndbox></object>"
            for a, b, c, d in people
        )
        (root / "Annotations" / f"p{i}.xml").write_text(
            f"<annotation><filename>p{i}.png</filename><size><width>320</width><height>240</height></size>"
            f"{objs}</annotation>"
        )
    return root


def test_sweep_runs_the_model_once_per_batch_and_scores_every_setting(model, voc):
    ds = load_dataset(voc)
    grid = SweepGrid(confs=(0.05, 0.5, 0.99), merges=("ios", "nms", "wbf"), merge_thrs=(0.3, 0.6))
    base = DetectConfig(tile=128, overlap=0.25, batch=4)
    res = sweep([model], ds, base, grid)
    assert len(res.rows) == 3 * 2 * 3
    # 4 photos of 320x240 at tile 128, overlap 0.25: 3 x 3 = 9 windows -> 3 batches (4, 4, 1) each; the
    # other five merge settings merged the same candidates.
    assert res.model_runs == 4 * 3
    # Every row agrees with a real Detector run with that setting, scored from scratch.
    for row in (res.rows[0], res.rows[-1], res.best):
        cfg = DetectConfig(
            tile=128,
            overlap=0.25,
            batch=4,
            conf=min(grid.confs),
            merge=row["merge"],
            merge_thr=row["merge_thr"],
        )
        with Detector(str(model), config=cfg) as det:
            direct = evaluate(det, ds, score_thr=row["conf"])
        assert (direct.recall, direct.precision, direct.map50) == pytest.approx(
            (row["recall"], row["precision"], row["map50"])
        )
    assert res.best["f1"] == max(r["f1"] for r in res.rows)
    assert res.config.merge == res.best["merge"] and res.config.conf == res.best["conf"]


def test_min_recall_puts_recall_first(model, voc):
    ds = load_dataset(voc)
    grid = SweepGrid(confs=(0.05, 0.5, 0.99, 1.0), merges=("ios",), merge_thrs=(0.5,))
    res = sweep([model], ds, DetectConfig(tile=128, overlap=0.25), grid, min_recall=1.0)
    assert res.best["recall"] == 1.0
    impossible = sweep(
        [model], ds, DetectConfig(tile=128, overlap=0.25), grid, min_recall=1.0, objective="map50"
    )
    assert impossible.best["recall"] == 1.0 and impossible.objective == "map50"


def test_eval_cli_writes_metrics_curve_and_detect_settings_detect_accepts(tmp_path, model, voc):
    out = tmp_path / "ev"
    r = run(
        "eval",
        "--model",
        model,
        "--data",
        voc,
        "--tile",
        128,
        "--overlap",
        0.25,
        "--out",
        out,
        "--sweep",
        "--sweep-conf",
        "0.05,0.5",
        "--sweep-merge",
        "ios,wbf",
        "--sweep-merge-thr",
        "0.4,0.6",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["recall"] == 1.0 and m["gt_boxes"] == 7 and m["photos"] == 4
    assert set(m) >= {"map50", "map75", "map50_95", "lacmus_ap50", "lacmus_f1", "precision", "coco_max_dets"}
    assert cv2.imread(str(out / "pr_curve.png")) is not None
    assert (out / "detections.csv").read_text().startswith("id,xmin,ymin,xmax,ymax,score\n")
    best = json.loads((out / "best_detect.json").read_text())
    # The written command line, parsed by detect's own parser, gives the written DetectConfig.
    words = best["command"].split()[1:]
    a = resolve_options(build_parser().parse_args(words))
    assert a.command == "detect" and a.sources == ["PHOTOS"]
    cfg = best["detect_config"]
    written = DetectConfig(**{**cfg, "tta": tuple(cfg["tta"])})
    assert detect_config_from_args(a) == written
    assert (out / "best_detect.txt").read_text().strip() == best["command"]
    # best_detect.yaml, read by detect --settings, gives the same DetectConfig; its header says where it came from.
    yaml_path = out / "best_detect.yaml"
    a = resolve_options(
        build_parser().parse_args(["detect", "PHOTOS", "--out", "r", "--settings", str(yaml_path)])
    )
    assert detect_config_from_args(a) == written
    header = yaml_path.read_text().split("\n# ")
    assert any(line.startswith(f"data: {voc}") and "4 photo(s)" in line for line in header)
    assert any(line.startswith("objective: f1, min recall: none; 8 settings tried") for line in header)
    # One key per line, as docs/train.md shows it: the settings' names open the lines after the header.
    body = [line for line in yaml_path.read_text().splitlines() if not line.startswith("#")]
    assert [line.split(":")[0] for line in body] == list(best["detect_settings"])
    assert (
        f"detect with: edgetile detect PHOTOS --model {model} --out results --settings {yaml_path}"
        in r.stderr
    )
    assert f"settings: {yaml_path}" in r.stderr


def test_eval_reports_unreadable_photos_and_exits_1(tmp_path, model, voc):
    src = tmp_path / "voc"
    subprocess.run(["cp", "-r", str(voc), str(src)], check=True)
    (src / "JPEGImages" / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = run("eval", "--model", model, "--data", src, "--tile", 128, "--out", tmp_path / "ev")
    assert r.returncode == 1, r.stderr
    assert "p1" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["photos"] == 3
    r = run("eval", "--model", model, "--data", voc, "--tile", 128, "--conf", 0.3, "--out", tmp_path / "ev2")
    assert r.returncode == 2 and "conf" in r.stderr  # mAPs need the low scores: refused, not silently wrong


def test_pseudo_label_keeps_only_confident_photos(tmp_path, model):
    photos = tmp_path / "unlabelled"
    photos.mkdir()
    # People of one whole 8 px cell inside the first 128 px window (--overlap 0): score ~1 each.
    scene(photos / "sure.png", [(16, 16, 24, 24), (40, 72, 48, 80)])
    scene(photos / "unsure.png", [(16, 16, 24, 24), (96, 96, 104, 104)])
    img = cv2.imread(str(photos / "unsure.png"))
    img[96:104, 96:104] = (90, 90, 180)  # a dull red cell: score about 0.5, the grey zone
    cv2.imwrite(str(photos / "unsure.png"), img)
    scene(photos / "empty.png", [])
    (photos / "broken.png").write_bytes(b"nope")
    out = tmp_path / "extra"
    r = run(
        "pseudo-label",
        photos,
        "--model",
        model,
        "--tile",
        128,
        "--overlap",
        0,
        "--out",
        out,
        "--conf",
        0.8,
        "--ambiguous",
        0.2,
    )
    assert r.returncode == 1, r.stderr  # the broken photo
    assert "broken.png" in r.stderr and "1 photo(s) kept with 2 box(es)" in r.stderr
    ds = load_dataset(out)
    assert ds.format == "voc" and ds.problems == [] and [p.photo_id for p in ds.photos] == ["sure"]
    centres = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in ds.photos[0].boxes)
    assert centres == [(20.0, 20.0), (44.0, 76.0)]
    assert load_dataset(out, "yolo").box_count == 2  # the YOLO labels beside it agree
    rows = (out / "pseudo_labels.csv").read_text().splitlines()
    assert rows[0].startswith("photo,source,class") and len(rows) == 3
    # --min-boxes 0 keeps the confidently empty photo as a negative; --ambiguous = --conf turns the grey zone off.
    r = run(
        "pseudo-label",
        photos,
        "--model",
        model,
        "--tile",
        128,
        "--overlap",
        0,
        "--out",
        tmp_path / "x2",
        "--conf",
        0.8,
        "--ambiguous",
        0.8,
        "--min-boxes",
        0,
    )
    kept = {p.photo_id for p in load_dataset(tmp_path / "x2").photos}
    assert kept == {"sure", "unsure", "empty"}


def test_evaluate_matches_classes_by_index_and_says_so(tmp_path, model):
    path = scene(tmp_path / "a.png", [(12, 12, 28, 28)])
    ds = Dataset([AnnotatedPhoto(path, 320, 240, np.array([[12, 12, 28, 28]]), np.zeros(1))], ["Pedestrian"])
    with Detector(str(model), config=DetectConfig(tile=128, conf=0.01)) as det:
        res = evaluate(det, ds)
    assert res.recall == 1.0 and any("'person'='Pedestrian'" in n for n in res.notes)
