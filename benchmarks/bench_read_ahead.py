"""`edgetile detect` over a folder of JPEGs, reading the next photo on a thread or each in its turn.

Writes synthetic 4000x3000 scenes as JPEGs (quality 92, as drone cameras write) into a temporary
folder, then runs the real command line on it with ``--read-ahead 256`` (the default when the model
runs on a GPU) and with ``--read-ahead 0`` (the default on the CPU),
alternating, so that load on a shared machine falls on both alike. Times are wall clock for the whole
command (interpreter start and model load included), divided by the number of photos; the per-photo
JPEG decode time comes from the records' ``timings_ms.read``.

    python benchmarks/bench_read_ahead.py --images 8 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from edgetile.train.synth import SceneConfig, make_scene

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "runtime" / "data" / "demo.onnx"


def run_detect(folder: Path, out: Path, model: Path, extra: list[str]) -> tuple[float, list[dict]]:
    cmd = [
        sys.executable,
        "-m",
        "edgetile.runtime.cli",
        "detect",
        str(folder),
        "--model",
        str(model),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return dt, json.loads((out / "detections.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX model (default: the demo model)")
    p.add_argument(
        "--images", type=int, default=8, help="synthetic 4000x3000 JPEGs in the folder (default: 8)"
    )
    p.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternating (default: 3)")
    a = p.parse_args(argv)

    print(
        f"machine: {platform.machine()}  {os.cpu_count()} cpu; python {platform.python_version()}; "
        f"model {a.model}"
    )
    with tempfile.TemporaryDirectory(prefix="edgetile-readahead-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(a.images):
            scene = make_scene(7000 + i, SceneConfig(width=4000, height=3000, person_px=(24, 130)))
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        modes = {
            "read ahead (--read-ahead 256)": ["--read-ahead", "256"],
            "in turn (--read-ahead 0)": ["--read-ahead", "0"],
        }
        wall: dict[str, list[float]] = {m: [] for m in modes}
        read_ms: dict[str, list[float]] = {m: [] for m in modes}
        outputs: dict[str, list] = {}
        for k in range(a.repeat):
            for m, extra in modes.items():
                dt, recs = run_detect(folder, Path(tmp) / f"out{k}{extra[1]}", a.model, extra)
                wall[m].append(dt / a.images)
                read_ms[m] += [r["timings_ms"]["read"] for r in recs]
                outputs[m] = [(r["image"], r["detections"]) for r in recs]
    print(f"\n{a.images} JPEG(s) of 4000x3000, {a.repeat} run(s) of each mode; whole command, wall clock")
    print(f"{'':28s} {'s/photo':>8s} {'decode ms':>10s}")
    for m in modes:
        print(f"{m:28s} {statistics.median(wall[m]):8.3f} {statistics.median(read_ms[m]):10.1f}")
    a_s, t_s = (statistics.median(wall[m]) for m in modes)
    print(
        f"\nread ahead / in turn: {a_s / t_s:.3f}  (decode is {statistics.median(read_ms['in turn (--read-ahead 0)']) / 1000 / t_s:.1%} "
        f"of a photo's time in turn)"
    )
    same = outputs["read ahead (--read-ahead 256)"] == outputs["in turn (--read-ahead 0)"]
    print(f"identical detections in both modes: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
