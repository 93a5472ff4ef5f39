"""CPU training with Ultralytics' own thread count against every core (edgetile's callback), side by side.

Ultralytics sets torch to ``cpu_count - 1`` threads for CPU training (one on a 2-core machine);
edgetile's trainings register ``use_every_cpu_core``, which sets every core the process may use. This
trains the same YOLOv8n on the same synthetic tiles for the same epochs both ways, taking turns
(A B A B ...), each training in its own process, and prints the wall times and their ratio.

    python benchmarks/bench_cpu_threads.py --out runs/bench_threads --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ONE = """
import sys, time
import torch
from ultralytics import YOLO
from edgetile.train.training import add_cpu_threads_callback
data, imgsz, epochs, every, project, name = sys.argv[1:7]
model = YOLO("yolov8n.yaml")
if every == "1":
    add_cpu_threads_callback(model)
seen = {}
model.add_callback("on_train_start", lambda t: seen.setdefault("threads", torch.get_num_threads()))
t0 = time.perf_counter()
model.train(data=data, imgsz=int(imgsz), epochs=int(epochs), batch=16, device="cpu", workers=0, seed=0,
            amp=False, plots=False, val=False, verbose=False, project=project, name=name, exist_ok=True)
print("RESULT", time.perf_counter() - t0, seen["threads"])
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_threads"))
    p.add_argument("--scenes", type=int, default=12, help="2048x1536 training scenes (default: 12)")
    p.add_argument("--imgsz", type=int, default=320, help="tile and input size (default: 320)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="trainings per arm, taken in turns (default: 2)")
    a = p.parse_args(argv)
    from edgetile.train.demo_model import build_dataset, training_renderers

    a.out.mkdir(parents=True, exist_ok=True)
    data = a.out / "tiles" / "data.yaml"
    if not data.exists():
        data = build_dataset(a.out, a.scenes, 2, 1000, 8, training_renderers("limbs"), 1, a.imgsz)
    tiles = sum(1 for _ in (a.out / "tiles").glob("part*/images/train/*"))
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    times: dict[str, list[float]] = {"ultralytics": [], "every_core": []}
    threads: dict[str, int] = {}
    for r in range(a.repeats):
        for arm, every in (("ultralytics", "0"), ("every_core", "1")):
            cmd = [
                sys.executable,
                "-c",
                ONE,
                str(data),
                str(a.imgsz),
                str(a.epochs),
                every,
                str(a.out.resolve()),
                f"{arm}{r}",
            ]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(
                    f"{arm}: expected a training, found exit {done.returncode}: {done.stderr[-2000:]}"
                )
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
            _, seconds, n = line.split()
            times[arm].append(float(seconds))
            threads[arm] = int(n)
            print(
                f"{arm} run {r + 1}: {float(seconds):.1f} s training ({time.perf_counter() - t0:.1f} s process), torch threads {n}",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "command": "python benchmarks/bench_cpu_threads.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu_count": os.cpu_count(),
        "train_tiles": tiles,
        "threads": threads,
        "seconds": times,
        "median_s": med,
        "speedup": round(med["ultralytics"] / med["every_core"], 2),
    }
    (a.out / "threads.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
