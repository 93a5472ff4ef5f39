"""edgetile detect --resume and --ray: the outputs of one uninterrupted local run, whatever happened.

A real Ray cluster is started by the tests (a head and a worker node, one CPU each, on this machine)
and ``edgetile detect`` runs as a user runs it, in its own process. Outputs are compared with a
local run's, byte for byte where the run does not measure time (detections.csv, the annotated
images, the geographic files) and record for record in detections.json, less its timings.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from geo_photos import dji_values, write_photo

from onnx_models import red_blob_model

pytestmark = pytest.mark.slow

EDGETILE = [sys.executable, "-m", "edgetile.runtime.cli"]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
GEO_FILES = ("detections.geojson", "tracks.geojson", "detections.kml", "detections_geo.csv")
LAT0, LON0 = 46.5, 7.9


def ray_free_env() -> dict[str, str]:
    """This process's environment without Ray's settings: a Ray started earlier in the test session
    (ray.init sets RAY_AUTH_MODE=token in its own process) must not change how these clusters run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def detect(photos, out, *args, model):
    r = subprocess.run(
        [*EDGETILE, "detect", str(photos), "--model", str(model), "--out", str(out), "--tile", "256", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ray_free_env(),
    )
    return r


def records(out):
    """detections.json less what a run measures (timings) and where it wrote (the vis folder)."""
    recs = json.loads((Path(out) / "detections.json").read_text())
    for r in recs:
        r.pop("timings_ms", None)
        if "vis" in r:
            r["vis"] = Path(r["vis"]).name
    return recs


def assert_same_outputs(out, ref, vis=False, geo=False):
    assert records(out) == records(ref)
    assert (Path(out) / "detections.csv").read_bytes() == (Path(ref) / "detections.csv").read_bytes()
    for folder, enabled in (("vis", vis), ("thumbs", geo)):
        if enabled:
            names = sorted(p.name for p in (Path(ref) / folder).iterdir())
            assert sorted(p.name for p in (Path(out) / folder).iterdir()) == names
            for name in names:
                assert (Path(out) / folder / name).read_bytes() == (Path(ref) / folder / name).read_bytes()
    if geo:
        for name in GEO_FILES:
            text = (Path(out) / name).read_text().replace(str(out), "OUT")
            assert text == (Path(ref) / name).read_text().replace(str(ref), "OUT"), name


def keep_only(out, indices):
    """Leave in detections.json only these records, as if the run had stopped before the others."""
    path = Path(out) / "detections.json"
    recs = json.loads(path.read_text())
    path.write_text(json.dumps([r for i, r in enumerate(recs) if i in indices]))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six photos with a red 'person' each, in different places, and one broken file."""
    d = tmp_path_factory.mktemp("photos")
    for i in range(6):
        img = np.full((300, 420, 3), (60, 110, 70), np.uint8)
        img[40 + 30 * i : 80 + 30 * i, 60 + 40 * i : 84 + 40 * i] = (0, 0, 255)
        cv2.imwrite(str(d / f"IMG_{i:04d}.jpg"), img)
    (d / "IMG_0006.jpg").write_bytes(b"\xff\xd8 not a whole photo")
    return d


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, photos, model):
    out = tmp_path_factory.mktemp("local") / "out"
    r = detect(photos, out, "--save-vis", model=model)
    assert r.returncode == 1, r.stderr  # the broken photo
    assert len(records(out)) == 7 and "error" in records(out)[6]
    return out


def test_resume_keeps_the_done_photos_and_gives_the_same_outputs(tmp_path, photos, model, local_run):
    out = tmp_path / "out"
    first = detect(photos, out, "--save-vis", model=model)
    assert first.returncode == 1, first.stderr
    before = json.loads((out / "detections.json").read_text())
    keep_only(out, {0, 2, 3, 6})  # as if stopped midway; the failed photo is tried again
    drawn = {p.name: p.stat().st_mtime_ns for p in (out / "vis").iterdir()}
    (out / "vis" / "IMG_0001.jpg").unlink()
    os.utime(photos / "IMG_0003.jpg", ns=(1, 1))  # a photo replaced since: done again
    try:
        r = detect(photos, out, "--save-vis", "--resume", model=model)
    finally:
        os.utime(photos / "IMG_0003.jpg")
    assert r.returncode == 1, r.stderr
    assert "2 kept from the earlier run" in r.stderr
    after = json.loads((out / "detections.json").read_text())
    # Kept records are the earlier run's, timings and all; the others were detected again.
    assert after[0] == before[0] and after[2] == before[2]
    assert drawn["IMG_0000.jpg"] == (out / "vis" / "IMG_0000.jpg").stat().st_mtime_ns  # not drawn again
    assert (out / "vis" / "IMG_0001.jpg").is_file()
    assert_same_outputs(out, local_run, vis=True)


def test_resume_of_a_run_killed_midway(tmp_path, model, photos):
    """A run stopped by SIGKILL (its detections.json as last flushed, its CSV further on), then resumed."""
    many = tmp_path / "many"
    many.mkdir()
    n = 150
    for i in range(n):
        (many / f"P{i:03d}.jpg").write_bytes((photos / f"IMG_{i % 6:04d}.jpg").read_bytes())
    ref = tmp_path / "ref"
    assert detect(many, ref, model=model).returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*EDGETILE, "detect", str(many), "--model", str(model), "--out", str(out), "--tile", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and not done and time.monotonic() < deadline:
            time.sleep(0.02)
            try:  # written atomically, every 2 s: either the last list or the one before
                done = len(json.loads((out / "detections.json").read_text()))
            except (FileNotFoundError, ValueError):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert 0 < done < n, f"the run was to be stopped midway; {done} of {n} photos were written"
    r = detect(many, out, "--resume", model=model)
    assert r.returncode == 0, r.stderr
    kept = int(r.stderr.split(" kept from the earlier run")[0].rsplit(", ", 1)[1])
    assert kept >= done
    assert_same_outputs(out, ref)


def test_resume_refuses_other_settings_and_results_without_a_run_record(tmp_path, photos, model):
    out = tmp_path / "out"
    assert detect(photos, out, model=model).returncode == 1
    r = detect(photos, out, "--resume", "--conf", "0.3", "--merge", "nms", model=model)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"edgetile detect: error: --resume: the results in {out} were made with other settings "
        '(conf 0.25 -> 0.3; merge "ios" -> "nms"); run with the same settings, or without --resume '
        "(or with another --out) to start over"
    ]
    (out / "run.json").unlink()
    r = detect(photos, out, "--resume", model=model)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "run.json" in r.stderr and "not written by an edgetile detect" in r.stderr
    # Without --resume an existing folder's results are replaced, as they always were.
    r = detect(photos, out, "--conf", "0.3", model=model)
    assert r.returncode == 1 and "kept" not in r.stderr


def geo_photos(folder):
    folder.mkdir()
    xmp = dji_values(rel_alt=50.0, abs_alt=180.0, yaw=0.0, pitch=-90.0, focal_px=500.0)
    for i in range(4):
        img = np.full((384, 512, 3), (60, 110, 70), np.uint8)
        img[136 + 8 * i : 144 + 8 * i, 280:288] = (0, 0, 255)
        lat = LAT0 + i * 2.0 / 111_320  # 2 m north per photo: one person, one track
        write_photo(folder / f"DJI_{i:04d}.JPG", img, lat=lat, lon=LON0, xmp=xmp)
    return folder


def test_resume_with_geographic_outputs(tmp_path, model):
    pytest.importorskip("pymap3d", reason="needs the geo extra: pip install 'edgetile[geo]'")
    pytest.importorskip("PIL", reason="needs the geo extra: pip install 'edgetile[geo]'")
    flight = geo_photos(tmp_path / "flight")
    fmt = ["--format", "geojson,kml,csv"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert detect(flight, ref, *fmt, model=model).returncode == 0
    assert len(json.loads((ref / "tracks.geojson").read_text())["features"]) == 1
    assert detect(flight, out, *fmt, model=model).returncode == 0
    keep_only(out, {0, 1})
    r = detect(flight, out, *fmt, "--resume", model=model)
    assert r.returncode == 0, r.stderr
    assert "2 kept from the earlier run" in r.stderr
    assert_same_outputs(out, ref, geo=True)
    r = detect(flight, out, "--format", "geojson", "--resume", model=model)
    assert r.returncode == 2 and 'format ["geojson", "kml", "csv"] -> ["geojson"]' in r.stderr


# ---- a real Ray cluster: a head and a worker node on loopback ----


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="needs Ray, the optional extra: pip install 'edgetile[ray]'")
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    # A home of its own: a Ray run earlier on this machine (edgetile tune --ray) leaves ~/.ray/auth_token,
    # and a head that finds it asks its workers for a token they were not told to send.
    env = {**ray_free_env(), "HOME": str(tmp_path_factory.mktemp("ray-home"))}
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"
    try:
        for words in (
            [
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={temp}",
                "--include-dashboard=false",
            ],
            [f"--address={address}", "--node-ip-address=127.0.0.1"],
        ):
            r = subprocess.run(
                [*RAY, "start", *words, *common], capture_output=True, text=True, env=env, timeout=180
            )
            assert r.returncode == 0, (
                f"ray start {' '.join(words)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
            )
        yield address
    finally:
        subprocess.run([*RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_run_writes_what_a_local_run_writes(tmp_path, photos, model, local_run, ray_cluster):
    out = tmp_path / "out"
    r = detect(photos, out, "--save-vis", "--ray", ray_cluster, model=model)
    assert r.returncode == 1, r.stderr  # the broken photo fails on its worker as it fails here
    assert "2 model copies" in r.stderr  # one per node
    assert "skipped" in r.stderr and "IMG_0006.jpg" in r.stderr
    assert_same_outputs(out, local_run, vis=True)

    keep_only(out, {1, 4, 5})
    r = detect(photos, out, "--save-vis", "--ray", ray_cluster, "--resume", model=model)
    assert r.returncode == 1, r.stderr
    assert "3 kept from the earlier run" in r.stderr and "4 photo(s) to detect" in r.stderr
    assert_same_outputs(out, local_run, vis=True)

    r = detect(photos, out, "--ray", ray_cluster, "--resume", "--tile", "320", model=model)
    assert r.returncode == 2 and "tile 256 -> 320" in r.stderr


def test_a_worker_that_cannot_open_the_model_says_why_in_one_line(ray_cluster):
    # On one machine every node sees the driver's files, so the library is called with a model
    # path that no node has, as a worker without the shared folder would see it.
    code = (
        "from edgetile.runtime.detector import DetectConfig\n"
        "from edgetile.runtime.options.detect import DetectorRecipe\n"
        "from edgetile.runtime.ray_detect import RayCluster\n"
        "try:\n"
        f"    RayCluster({ray_cluster!r}, DetectorRecipe(('/nowhere/m.onnx',), None, 'auto', DetectConfig()), None)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().splitlines() == [
        "--ray: a worker cannot open the model: FileNotFoundError: model: file not found: /nowhere/m.onnx"
    ]
    assert "Traceback" not in r.stderr


def test_ray_without_a_cluster_is_a_usage_error(tmp_path, photos, model):
    pytest.importorskip("ray", reason="needs Ray, the optional extra: pip install 'edgetile[ray]'")
    r = detect(photos, tmp_path / "out", "--ray", f"127.0.0.1:{free_port()}", model=model)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("edgetile detect: error: --ray 127.0.0.1:")


@pytest.mark.parametrize(
    "models, backend, on_gpu",
    [
        (("person.engine",), "auto", True),  # auto picks TensorRT for an engine: one actor per GPU
        (("person.plan",), "auto", True),
        (("person.onnx",), "auto", False),  # ONNX Runtime: one actor per node, on its CPUs
        (("person.onnx",), "tensorrt", True),  # asked for explicitly
        (("a.onnx", "b.engine"), "auto", True),  # an ensemble with an engine needs a GPU
        (("person.engine",), "onnxruntime", False),
    ],
)
def test_actors_ask_for_a_gpu_only_for_tensorrt(models, backend, on_gpu):
    from edgetile.runtime.detector import DetectConfig
    from edgetile.runtime.options.detect import DetectorRecipe

    assert DetectorRecipe(models, None, backend, DetectConfig()).uses_tensorrt is on_gpu
