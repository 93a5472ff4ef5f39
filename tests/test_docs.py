"""The README's and the guides' commands, as a user types them: every `edgetile ...` line of their `sh`
and `bash` blocks is known here, parses, and (where a CPU can run it in seconds) runs against tiny
inputs in a temporary folder with the exit code and outputs the docs promise.

Run alone with `make docs-check`. A command added to the docs without an entry in COMMANDS fails
test_every_documented_command_is_known: say there whether it runs here, or why only its options are
checked (a GPU, TensorRT, a network peer, hours of training).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from geo_photos import dji_values, write_photo
from serve_process import ServeProcess

from edgetile.runtime.backends import ENGINE_SUFFIXES
from edgetile.runtime.cli import build_parser
from onnx_models import red_blob_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EDGETILE = [sys.executable, "-m", "edgetile.runtime.cli"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)

# Where the docs name a place on a device, the test uses one in its temporary folder (word prefixes).
# person.engine: on a CPU the same model as ONNX stands in for the engine (the options are the point).
SUBSTITUTIONS = {
    "/media/sdcard/DCIM": "DCIM",
    "/media/sd/DCIM": "DCIM",
    "/var/lib/edgetile": "state",
    "~/models/": "models/",
    "~/calib_photos/": "flights/calib/",
    "person.engine": "person.onnx",
}


def documented_commands() -> list[tuple[str, str]]:
    """(doc file, command line) of every `edgetile ...` line in the docs' sh/bash blocks, in order;
    continuation lines joined, comments dropped, the words re-quoted by shlex.join."""
    found = []
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text(encoding="utf-8")):
            if m.group("lang") not in ("sh", "bash"):
                continue
            body = re.sub(r"\\\n\s*", " ", m.group("body"))
            for line in body.splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] == "edgetile":
                    found.append((doc.relative_to(ROOT).as_posix(), shlex.join(words)))
    return found


def substituted(command: str) -> list[str]:
    words = []
    for word in shlex.split(command)[1:]:
        for doc_word, here in SUBSTITUTIONS.items():
            if word.startswith(doc_word):
                word = here + word[len(doc_word) :]
        words.append(word)
    return words


@dataclass
class Doc:
    """What the test does with one documented command.

    Attributes:
        kind: "run" (run it here), "serve" (start the daemon, read /detections, stop it), "parse"
            (only its options, for the reason in why), "synopsis" (a usage line, not a command).
        rc: The exit code the docs promise.
        needs: Commands whose outputs this one reads (run first, once).
        files: Paths it must have written.
        why: Why a "parse" command is not run here.
    """

    kind: str
    rc: int = 0
    needs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    why: str = ""
    extra: dict = field(default_factory=dict)


DATASET_TILES = "edgetile dataset tiles LADD/ --out tiles/ --tile 1024 --folds 5 --negatives 400"
EVAL_SWEEP = "edgetile eval --model runs/train/exp/weights/best.onnx --data LADD/ --subset test --sweep --min-recall 0.9"
PSEUDO = (
    "edgetile pseudo-label flights/2024-07/ --model runs/train/exp/weights/best.onnx --out extra/ --conf 0.6"
)
TENSORRT = "builds a TensorRT engine: needs TensorRT and an NVIDIA GPU"

COMMANDS = {
    # README.md
    "edgetile env": Doc("run"),
    "edgetile export engine person.onnx --precision fp16 --batch-max 8": Doc("parse", why=TENSORRT),
    "edgetile detect /media/sdcard/DCIM --model person.engine --out results --save-vis": Doc(
        "run", files=("results/detections.json", "results/detections.csv", "results/vis/DJI_0001.jpg")
    ),
    "edgetile detect SOURCE... '[--model' PATH '...]' --out DIR '[options]'": Doc("synopsis"),
    # docs/export.md
    "edgetile export onnx person.pt --imgsz 1024 --verify-images flights/sample/": Doc(
        "parse", why="an Ultralytics export of a trained .pt: minutes; tests/test_export_onnx.py runs one"
    ),
    "edgetile export int8 person.onnx --calib flights/calib/ --val val_voc/": Doc(
        "parse", why="quantization with an accuracy report: minutes; tests/test_export_int8.py runs one"
    ),
    "edgetile export engine '~/models/person.onnx' --precision fp16 --workspace-mb 1024 --timing-cache "
    "'~/models/orin.timing'": Doc("parse", why=TENSORRT),
    "edgetile export engine '~/models/person_int8.onnx' --precision int8": Doc("parse", why=TENSORRT),
    "edgetile export engine '~/models/person.onnx' --precision int8 --calib '~/calib_photos/'": Doc(
        "parse", why=TENSORRT
    ),
    "edgetile export engine '~/models/person.onnx' --precision fp16 --batch-opt 8 --batch-max 8": Doc(
        "parse", why=TENSORRT
    ),
    "edgetile export engine '~/models/person.onnx' --precision fp16 --dla 0 --batch-min 4 --batch-opt 4 "
    "--batch-max 4 --out '~/models/person_fp16_dla0.engine'": Doc("parse", why=TENSORRT + " with a DLA"),
    "edgetile export engine '~/models/person.onnx' --precision fp16": Doc("parse", why=TENSORRT),
    # docs/geo.md
    "edgetile detect flight_07/ --model person.onnx --out results --format geojson,kml,csv": Doc(
        "run", files=("results/detections.geojson", "results/detections.kml", "results/detections_geo.csv")
    ),
    "edgetile serve --model person.engine --watch /media/sd/DCIM --geo --mqtt 192.168.1.10:1883 "
    "--mavlink-out udpout:192.168.1.10:14550": Doc(
        "parse",
        why="publishes to an MQTT broker and a ground station at 192.168.1.10 (tests/test_geo_mqtt.py)",
    ),
    "edgetile serve --model person.engine --video rtsp://192.168.144.25:8554/main --geo --mavlink-in "
    "udpin:0.0.0.0:14550 --focal-px 1120 --ground-above-takeoff 0": Doc(
        "parse", why="reads a camera's RTSP stream and an autopilot (tests/test_geo_video.py)"
    ),
    # docs/gpu.md
    "edgetile export engine model.onnx --precision fp16": Doc("parse", why=TENSORRT),
    # docs/serve.md
    "edgetile serve --model person.onnx --watch /media/sdcard/DCIM --state /var/lib/edgetile": Doc("serve"),
    # docs/station.md
    "edgetile station --mqtt 127.0.0.1:1883 --mqtt-user station --mqtt-password-file station.mqtt "
    "--state search-state --daemon-token-file drones.token": Doc(
        "parse", why="needs a Mosquitto broker and drones: tests/test_station.py runs the station"
    ),
    "edgetile serve --config /etc/edgetile/serve.yaml --state /var/lib/edgetile": Doc(
        "parse",
        why="a drone on the search team's network (deploy/drone.yaml: test_the_documented_drone_config_is_"
        "the_shipped_one_and_serve_accepts_it); tests/test_station.py runs drones on loopback",
    ),
    # docs/train.md
    DATASET_TILES: Doc("run", files=("tiles/data.yaml", "tiles/folds/fold4.yaml")),
    "edgetile train --data tiles/data.yaml --fold 0 --model yolov8s.yaml --imgsz 640 --epochs 50 --name first": Doc(
        "parse", why="50 epochs of training"
    ),
    "edgetile dataset tiles LADD/ --out tiles_hard/ --folds 5 --negatives 1400 --hard-negatives "
    "runs/train/first/weights/best.onnx": Doc("run", files=("tiles_hard/data.yaml",)),
    "edgetile tune --data mini/data.yaml --model yolov8s.yaml --iterations 50 --epochs 10": Doc(
        "parse", why="50 trainings of 10 epochs"
    ),
    "edgetile train --data tiles_hard/data.yaml --fold 0 --model yolov8s.yaml --imgsz 1024 --epochs 100 "
    "--hyp runs/tune/best_hyperparameters.yaml --budget-mb 100": Doc("parse", why="100 epochs of training"),
    EVAL_SWEEP: Doc(
        "run", files=("runs/eval/metrics.json", "runs/eval/best_detect.yaml", "runs/eval/best_detect.json")
    ),
    "edgetile detect PHOTOS --model runs/train/exp/weights/best.onnx --out results --settings "
    "runs/eval/best_detect.yaml": Doc("run", needs=(EVAL_SWEEP,), files=("results/detections.json",)),
    PSEUDO: Doc("run", files=("extra/JPEGImages", "extra/Annotations")),
    "edgetile dataset tiles extra/ --out tiles_extra/": Doc(
        "run", needs=(PSEUDO,), files=("tiles_extra/data.yaml",)
    ),
    "edgetile train --data tiles/data.yaml --model yolov8x.yaml --budget-mb 100": Doc(
        "run", rc=2, needs=(DATASET_TILES,), extra={"stderr_block": "edgetile train: error: refused:"}
    ),
    "edgetile detect flights/ --model person.engine --out results --settings runs/eval/best_detect.yaml": Doc(
        "run", needs=(EVAL_SWEEP,), files=("results/detections.json",)
    ),
    "edgetile serve --model person.engine --watch /media/sd/DCIM --config runs/eval/best_detect.yaml": Doc(
        "serve", needs=(EVAL_SWEEP,)
    ),
    "edgetile synth flight flights/ --flights 20 --photos 8 --altitude 50 --overlap 0.6 --crops crops/": Doc(
        "parse",
        why="20 flights of 2000x1500 photos take minutes (tests/test_train_flights.py runs small ones)",
    ),
    # docs/train.md: the recipe, stages, fold ensembles, error analysis and the second look
    "edgetile recipe lacmus LADD/ --out runs/try --scale 0.05 --model yolov8n.yaml": Doc(
        "parse", why="trains three models (tests/test_train_recipe.py runs the recipe at a tiny scale)"
    ),
    "edgetile recipe lacmus LADD/ --out runs/lacmus --device 0": Doc(
        "parse", why="hours of training on a GPU"
    ),
    "edgetile detect flights/ --model runs/lacmus/ensemble.yaml --settings runs/lacmus/eval/best_detect.yaml "
    "--out results": Doc("parse", why="needs the recipe's trained ensemble"),
    "edgetile train --data tiles/data.yaml --model yolov8s.yaml --stages 640:30:1e-3 1024:10:1e-4 --name staged": Doc(
        "parse", why="40 epochs of training"
    ),
    "edgetile dataset tiles LADD/ --out tiles/ --folds 5 --negatives 400": Doc(
        "parse", why="writes the tiles/ folder that the run of the dataset command above has written"
    ),
    # README: reprocessing an archive
    "edgetile detect archive/ --model person_v2.onnx --conf 0.15 --out rerun --format geojson,kml": Doc(
        "parse", why="an archive and a second model (tests/test_detect_ray.py runs --resume)"
    ),
    "edgetile detect archive/ --model person_v2.onnx --conf 0.15 --out rerun --format geojson,kml --resume": Doc(
        "parse", why="an archive and a second model (tests/test_detect_ray.py runs --resume)"
    ),
    "edgetile detect /mnt/search/archive --model /mnt/search/person_v2.onnx --out rerun --ray auto": Doc(
        "parse", why="needs a Ray cluster (tests/test_detect_ray.py starts one on loopback)"
    ),
    "edgetile train --data tiles/data.yaml --folds --model yolov8s.yaml --imgsz 640 --epochs 50 --name folds": Doc(
        "parse", why="five trainings of 50 epochs"
    ),
    "edgetile detect flights/ --model runs/train/folds/ensemble.yaml --out results --tta flip": Doc(
        "parse", why="needs the folds' trained ensemble"
    ),
    "edgetile eval --model person.onnx --data LADD/ --score-thr 0.3 --errors runs/eval/errors": Doc(
        "parse", why="needs a trained person.onnx (tests/test_train_errors.py runs it on a known model)"
    ),
    "edgetile train-verifier --data LADD/ --subset train --val LADD/ --val-subset val --model person.onnx "
    "--conf 0.1 --out runs/verifier": Doc(
        "parse", why="trains a classifier (tests/test_verifier.py runs a tiny one)"
    ),
    "edgetile detect PHOTOS --model person.onnx --conf 0.1 --verify runs/verifier/verifier.onnx --out results": Doc(
        "parse", why="needs a trained verifier.onnx (tests/test_verifier.py runs detect --verify)"
    ),
    "edgetile export engine runs/verifier/verifier.onnx --precision fp16 --batch-max 64": Doc(
        "parse", why=TENSORRT
    ),
    "edgetile serve ... --verify verifier.engine": Doc("synopsis"),
    "edgetile train-embedder --people 800 --val-people 150 --sightings 6 --out runs/embedder": Doc(
        "parse", why="renders 950 people and trains for minutes (tests/test_embedder.py runs a tiny one)"
    ),
    "edgetile train-embedder --crops people/train/ --val-crops people/val/ --out runs/embedder_own": Doc(
        "parse", why="needs folders of crops per person (tests/test_embedder.py reads rendered ones)"
    ),
    "edgetile detect PHOTOS --model person.onnx --embed runs/embedder/embedder.onnx --out results": Doc(
        "parse", why="needs a trained embedder.onnx (tests/test_embedder.py runs detect --embed)"
    ),
    "edgetile export engine runs/embedder/embedder.onnx --precision fp16 --batch-max 64": Doc(
        "parse", why=TENSORRT
    ),
    "edgetile serve ... --embed embedder.engine": Doc("synopsis"),
}


def ids(kinds: tuple[str, ...]) -> dict:
    """parametrize arguments: the commands of these kinds, with ids that `pytest FILE::TEST[ID]` can
    select (a '/' in an id would be read as a path)."""
    chosen = [c for c, d in COMMANDS.items() if d.kind in kinds]
    return {"argvalues": chosen, "ids": [c[len("edgetile ") :].replace("/", "_") for c in chosen]}


def test_every_documented_command_is_known():
    documented = documented_commands()
    unknown = [f"{doc}: {cmd}" for doc, cmd in documented if cmd not in COMMANDS]
    assert not unknown, "documented commands with no entry in COMMANDS:\n" + "\n".join(unknown)
    stale = sorted(set(COMMANDS) - {cmd for _, cmd in documented})
    assert not stale, "COMMANDS entries no doc shows any more:\n" + "\n".join(stale)
    for cmd, doc in COMMANDS.items():
        assert doc.kind in ("run", "serve", "parse", "synopsis"), cmd
        assert (doc.kind == "parse") == bool(doc.why), f"a parse-only command says why, no other: {cmd}"


# --- the tiny world the commands run in ----------------------------------------------------------------


def photo_with_people(seed: int, w: int = 1024, h: int = 768, people: int = 2) -> tuple[np.ndarray, list]:
    """A grey-green photo with red 32 px squares on the 32 px grid of the red-blob model at tile 1024
    (its 8 px cells at a quarter scale), and the boxes that model gives for them: each square's cell,
    16 model px (64 photo px) wide around its centre, as the ground truth a trained model would match."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 110, (h, w, 3), dtype=np.uint8)
    img[..., 2] = np.minimum(img[..., 2], 80)
    boxes = []
    cells = rng.choice((w // 32 - 4) * (h // 32 - 4), people, replace=False)
    for c in cells:
        x0, y0 = 64 + int(c % (w // 32 - 4)) * 32, 64 + int(c // (w // 32 - 4)) * 32
        img[y0 : y0 + 32, x0 : x0 + 32] = (0, 0, 255)
        boxes.append((x0 - 16, y0 - 16, x0 + 48, y0 + 48))
    return img, boxes


def write_geo_photos(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    xmp = dji_values(rel_alt=50.0, abs_alt=180.0, focal_px=900.0)
    for i in range(count):
        img, _ = photo_with_people(seed + i)
        write_photo(folder / f"DJI_{i + 1:04d}.JPG", img, lat=55.75 + i * 1e-4, lon=37.62, xmp=xmp)


def write_voc(root: Path, count: int, seed: int) -> None:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    names = []
    for i in range(count):
        img, boxes = photo_with_people(seed + i, people=0 if i % 4 == 3 else 2)  # some without people
        name = f"ladd_{i:03d}"
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        objects = "".join(
            f"<object><name>person</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
            f"<ymax>{d}</ymax></bndbox></object>"
            for a, b, c, d in boxes
        )
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{img.shape[1]}</width>"
            f"<height>{img.shape[0]}</height><depth>3</depth></size>{objects}</annotation>"
        )
        names.append(name)
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names[: count // 2]) + "\n")


class World:
    """The temporary folder: the docs' placeholders exist there, and each command runs there once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: dict[str, subprocess.CompletedProcess] = {}
        model = red_blob_model(root / "person.onnx")
        for copy in (
            "models/person.onnx",
            "runs/train/exp/weights/best.onnx",
            "runs/train/first/weights/best.onnx",
        ):
            (root / copy).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(model, root / copy)
        shutil.copy(model, root / "model.onnx")
        for folder, seed in (("DCIM", 10), ("flight_07", 20), ("PHOTOS", 30), ("flights/2024-07", 40)):
            write_geo_photos(root / folder, 2, seed)
        write_geo_photos(root / "flights" / "calib", 2, 50)
        write_geo_photos(root / "flights" / "sample", 1, 60)
        write_voc(root / "LADD", 8, 70)

    def run(self, command: str) -> subprocess.CompletedProcess:
        """Run a documented command (its prerequisites first), once."""
        if command not in self.results:
            for need in COMMANDS[command].needs:
                r = self.run(need)
                assert r.returncode == COMMANDS[need].rc, f"{need}\n{r.stderr[-3000:]}"
            self.results[command] = subprocess.run(
                [*EDGETILE, *substituted(command)],
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "YOLO_OFFLINE": "1"},  # nothing can be downloaded here,
            )
        return self.results[command]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("docs"))


@pytest.mark.parametrize("command", **ids(("run", "serve", "parse")))
def test_every_documented_command_parses(command, world, monkeypatch):
    """Its options exist and its values are accepted, as the docs spell them."""
    monkeypatch.chdir(world.root)
    try:
        build_parser().parse_args(substituted(command))
    except SystemExit as exc:
        pytest.fail(f"{command}: the parser refused it (exit {exc.code})")


@pytest.mark.slow
@pytest.mark.parametrize("command", **ids(("run",)))
def test_documented_command_runs(command, world):
    doc = COMMANDS[command]
    r = world.run(command)
    assert r.returncode == doc.rc, f"{command}: exit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for path in doc.files:
        assert (world.root / path).exists(), f"{command}: {path} not written"
    if "stderr_block" in doc.extra:
        # The doc shows the one line the command prints, wrapped: joined, it is that line exactly.
        printed = [line for line in r.stderr.splitlines() if line.startswith(doc.extra["stderr_block"])]
        assert printed == [shown_block(doc.extra["stderr_block"])], r.stderr[-3000:]


def shown_block(start: str) -> str:
    """The untyped fenced block of the docs that starts with `start`, its lines joined by spaces."""
    for path in DOCS:
        for m in FENCE.finditer(path.read_text(encoding="utf-8")):
            if m.group("lang") == "" and m.group("body").startswith(start):
                return " ".join(line.strip() for line in m.group("body").splitlines())
    raise AssertionError(f"no block starting with {start!r} in the docs")


@pytest.mark.slow
@pytest.mark.parametrize("command", **ids(("serve",)))
def test_documented_daemon_starts_and_serves_the_watched_photos(command, world):
    for need in COMMANDS[command].needs:
        assert world.run(need).returncode == COMMANDS[need].rc
    words = substituted(command)[1:]  # after 'serve'
    if "--state" not in words:
        words += ["--state", str(world.root / f"state-{len(world.results)}")]
    else:  # the docs' state folder, made relative by the substitutions, inside the test's folder
        at = words.index("--state") + 1
        words[at] = str(world.root / words[at])
    words = [str(world.root / w) if (world.root / w).exists() else w for w in words]
    with ServeProcess(world.root, *words, "--settle", "0", "--poll", "0.1").start() as d:
        # serve.md's next line: curl -s localhost:8765/detections
        items = d.wait_for(
            lambda: len(d.json("/detections")["items"]) == 2 and d.json("/detections")["items"]
        )
        assert all(it["detections"] for it in items), items
        assert d.terminate() == 0


# --- other claims of the README ----------------------------------------------------------------------


def station_block(lang: str, start: str = "") -> str:
    """The one fenced block of docs/station.md in ``lang`` (that starts with ``start``), dedented."""
    import textwrap

    blocks = [
        textwrap.dedent(m.group("body"))
        for m in FENCE.finditer((ROOT / "docs" / "station.md").read_text(encoding="utf-8"))
        if m.group("lang") == lang and textwrap.dedent(m.group("body")).startswith(start)
    ]
    assert len(blocks) == 1, f"expected one {lang or 'untyped'} block starting {start!r}, found {len(blocks)}"
    return blocks[0]


def test_the_documented_drone_config_is_the_shipped_one_and_serve_accepts_it(tmp_path):
    """docs/station.md's YAML is deploy/drone.yaml, word for word, and `edgetile serve --config` takes it:
    the options merge, the daemon's checks pass (a token beside host 0.0.0.0) and the station's settings
    (drone id, advertise URL, broker, georeferencing) come out as the page explains them."""
    from edgetile.runtime.options.files import resolve_options
    from edgetile.runtime.options.geo import serve_geo_config_from_args
    from edgetile.runtime.serve.config import ServeConfig

    shipped = ROOT / "deploy" / "drone.yaml"
    assert station_block("yaml") == shipped.read_text(encoding="utf-8")
    # the drone's own places, here in the test's folder; every other setting is the file's
    (tmp_path / "DCIM").mkdir()
    (tmp_path / "drones.token").write_text("team-secret\n")
    (tmp_path / "mqtt.password").write_text("alpha-secret\n")
    a = build_parser().parse_args(
        ["serve", "--config", str(shipped), "--watch", str(tmp_path / "DCIM")]
        + ["--token-file", str(tmp_path / "drones.token"), "--state", str(tmp_path / "state")]
        + ["--mqtt-password-file", str(tmp_path / "mqtt.password")]
    )
    options = resolve_options(a)
    config = ServeConfig.from_options(options)
    geo = serve_geo_config_from_args(options)
    assert (config.host, config.port, config.token) == ("0.0.0.0", 8765, "team-secret")
    assert options.model == ["/opt/edgetile/models/person.engine"]
    assert (geo.drone_id, geo.advertise_url) == ("alpha", "http://192.168.1.21:8765")
    assert (geo.mqtt_user, geo.mqtt_password) == ("alpha", "alpha-secret")
    assert (geo.mqtt_host, geo.mqtt_port, geo.mqtt_topic, geo.georeference) == (
        "192.168.1.10",
        1883,
        "edgetile",
        True,
    )


def test_the_documented_broker_config_starts_mosquitto_as_debian_installs_it(tmp_path):
    """docs/station.md's Mosquitto file, dropped into conf.d beside Debian's own mosquitto.conf (which
    sets persistence_location), is accepted by a real Mosquitto: it starts and listens."""
    import socket
    import time

    from mqtt_broker import MOSQUITTO, free_port, needs_mosquitto, password_file

    needs_mosquitto()
    documented = station_block("", "# /etc/mosquitto/conf.d/edgetile.conf")
    assert "listener 1883\n" in documented and "password_file /etc/mosquitto/passwd\n" in documented
    port = free_port()
    (tmp_path / "conf.d").mkdir()
    accounts = password_file(tmp_path / "passwd", {"station": "s3cret", "alpha": "a1pha"})
    (tmp_path / "conf.d" / "edgetile.conf").write_text(
        documented.replace("listener 1883\n", f"listener {port}\n").replace(
            "/etc/mosquitto/passwd", str(accounts)
        )
    )
    (tmp_path / "mosquitto.conf").write_text(  # Debian's, with this test's folders
        f"persistence true\npersistence_location {tmp_path}/\nlog_dest file {tmp_path}/mosquitto.log\n"
        f"include_dir {tmp_path}/conf.d\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto refused the documented configuration: {proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen within 20 s"
                time.sleep(0.05)
        # it admits the accounts and only them
        assert _mqtt_connect_answer(port, None, None) == "Not authorized"
        assert _mqtt_connect_answer(port, "alpha", "wrong") == "Not authorized"
        assert _mqtt_connect_answer(port, "station", "s3cret") == "Success"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _mqtt_connect_answer(port: int, user: str | None, password: str | None) -> str:
    """The broker's answer to one MQTT connection (paho's reason code as text)."""
    import threading

    import paho.mqtt.client as mqtt

    answered, answer = threading.Event(), []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)

    def on_connect(client, userdata, flags, reason_code, properties):
        answer.append(str(reason_code))
        answered.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert answered.wait(20), "the broker did not answer the connection within 20 s"
    finally:
        c.disconnect()
        c.loop_stop()
    return answer[0]


def test_readme_backend_row_names_every_engine_suffix():
    row = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `--backend`")
    )
    named = set(re.findall(r"\.(\w+)", row.split("TensorRT for", 1)[1].split(",", 1)[0]))
    assert named == {s.lstrip(".") for s in ENGINE_SUFFIXES}, row


def test_readme_usage_error_example_is_what_detect_prints(tmp_path):
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"one line such as `(edgetile detect: error: [^`]*)`", readme.replace("\n", " "))
    assert shown, "the README's example of a usage error"
    r = subprocess.run(
        [*EDGETILE, "detect", "a.jpg", "--out", "o", "--conf", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and r.stderr.splitlines() == [shown.group(1)]


# Every subcommand's argparse errors: one line, exit 2, a pointer to --help; never the usage block.
USAGE_ERRORS = [
    ["detect", "a.jpg", "--out", "o", "--conf", "2"],
    ["detect", "a.jpg", "--out", "o", "--tile", "0"],
    ["detect"],
    ["demo", "--conf", "5"],
    ["env", "--bogus"],
    ["serve", "--port", "abc"],
    ["station", "--state", "s"],
    ["station", "--mqtt", "h", "--find-window-s", "0"],
    ["export"],
    ["export", "onnx"],
    ["export", "int8", "m.onnx"],
    ["export", "engine", "m.onnx", "--precision", "fp8"],
    ["dataset"],
    ["dataset", "tiles", "src"],
    ["train", "--epochs", "x"],
    ["tune", "--data", "d.yaml", "--iterations", "0"],
    ["eval"],
    ["pseudo-label", "src"],
    ["no-such-command"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=[" ".join(a) for a in USAGE_ERRORS])
def test_usage_errors_are_one_line_on_every_subcommand(args, tmp_path):
    r = subprocess.run([*EDGETILE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and "--help" in lines[0], r.stderr


def test_jetson_quick_start_installs_what_export_engine_imports_and_its_absence_is_one_line(tmp_path):
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Jetson quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    install = re.search(r'pip3 install "edgetile\[(\w+)\]"', quick)
    assert install and "edgetile export engine" in quick
    setup = (ROOT / "setup.py").read_text()
    extra = re.search(rf'"{install.group(1)}": (.*),\n', setup).group(1)
    assert "onnx>=" in extra and "pycuda" in extra, extra  # what export engine and the GPU path import
    # Without onnx, export engine stops with one line naming that extra, exit 2 (no traceback).
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from edgetile.runtime.cli import main\n"
        "sys.exit(main(['export', 'engine', 'm.onnx', '--precision', 'fp16', '--batch-max', '8']))"
    )
    red_blob_model(tmp_path / "m.onnx")
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"edgetile export: error: needs the Python module onnx, which this install lacks: "
        f"pip install 'edgetile[{install.group(1)}]'"
    ], r.stderr
