"""`edgetile detect --ray` against a local `edgetile detect` on the same photos and the same machine.

Writes synthetic 4000x3000 scenes as JPEGs (quality 92) into a temporary folder, starts a Ray
cluster on this machine (a head and ``--nodes - 1`` worker nodes, one CPU each, on loopback; or uses
``--address`` of a running one), then runs the real command line alternately locally and with
``--ray``, so that load on a shared machine falls on both alike. Two figures per mode: photos per
second of the whole command (interpreter start, model load, joining the cluster and starting its
actors included), and photos per second of the detection loop alone (from the command's own summary
line, "N image(s) processed in T s"). The outputs of both modes are compared (detections.json less
timings, detections.csv byte for byte).

    python benchmarks/bench_detect_ray.py --images 8 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from edgetile.train.synth import SceneConfig, make_scene

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "runtime" / "data" / "demo.onnx"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def run_detect(
    folder: Path, out: Path, model: Path, extra: list[str]
) -> tuple[float, float, list[dict], bytes]:
    """(whole-command seconds, detection-loop seconds, records less timings, detections.csv)."""
    cmd = [*map(str, [sys.executable, "-m", "edgetile.runtime.cli", "detect", folder])]
    cmd += ["--model", str(model), "--out", str(out), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    m = re.search(r"image\(s\) processed in ([0-9.]+) s", r.stderr)
    if m is None:
        raise SystemExit(f"no summary line in the output of {' '.join(cmd)}: {r.stderr.strip()}")
    recs = json.loads((out / "detections.json").read_text())
    for rec in recs:
        rec.pop("timings_ms", None)
    return dt, float(m.group(1)), recs, (out / "detections.csv").read_bytes()


def start_cluster(nodes: int, temp: Path) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    head = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}"]
    subprocess.run(
        [*RAY, "start", *head, "--include-dashboard=false", *common], check=True, capture_output=True
    )
    for _ in range(nodes - 1):
        worker = [f"--address={address}", "--node-ip-address=127.0.0.1"]
        subprocess.run([*RAY, "start", *worker, *common], check=True, capture_output=True)
    return address


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX model (default: the demo model)")
    p.add_argument("--images", type=int, default=8, help="synthetic 4000x3000 JPEGs (default: 8)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternating (default: 2)")
    p.add_argument("--nodes", type=int, default=2, help="Ray nodes to start here, one CPU each (default: 2)")
    p.add_argument("--address", help="use this running Ray cluster instead of starting one")
    a = p.parse_args(argv)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

    print(
        f"machine: {platform.machine()}  {os.cpu_count()} cpu; python {platform.python_version()}; "
        f"model {a.model}"
    )
    with tempfile.TemporaryDirectory(prefix="edgetile-ray-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(a.images):
            scene = make_scene(7000 + i, SceneConfig(width=4000, height=3000, person_px=(24, 130)))
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        address = a.address or start_cluster(a.nodes, Path(tmp) / "ray")
        try:
            modes = {"local": [], f"--ray ({a.nodes if not a.address else '?'} nodes)": ["--ray", address]}
            whole: dict[str, list[float]] = {m: [] for m in modes}
            loop: dict[str, list[float]] = {m: [] for m in modes}
            outputs: dict[str, tuple] = {}
            for k in range(a.repeat):
                for j, (m, extra) in enumerate(modes.items()):
                    dt, loop_s, recs, csv = run_detect(folder, Path(tmp) / f"out{k}_{j}", a.model, extra)
                    whole[m].append(a.images / dt)
                    loop[m].append(a.images / loop_s)
                    outputs[m] = ([{**r, "image": Path(r["image"]).name} for r in recs], csv)
        finally:
            if not a.address:
                subprocess.run([*RAY, "stop", "--force"], capture_output=True)
    print(f"\n{a.images} JPEG(s) of 4000x3000, {a.repeat} run(s) of each mode; medians of photos per second")
    print(f"{'':22s} {'whole command':>14s} {'detection loop':>15s}")
    for m in modes:
        print(f"{m:22s} {statistics.median(whole[m]):14.3f} {statistics.median(loop[m]):15.3f}")
    same = len({json.dumps(o[0]) + o[1].decode() for o in outputs.values()}) == 1
    print(f"identical outputs in both modes (detections.json less timings, detections.csv): {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
