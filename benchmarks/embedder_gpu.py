"""Train the appearance embedder on a lent GPU machine, several recipes side by side, same crops.

The crops are rendered once (many people: an embedding generalises to new people only from many),
then each recipe trains by train/embedder.py's train_embedder with a time limit, and every run's
report and ONNX land in OUT. Run from the repository root where edgetile is importable:

    python benchmarks/embedder_gpu.py --out OUT --people 4000 --val-people 300 --workers 16 \
        --recipes triplet:semihard arcface --minutes 2.5
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from edgetile.train.embedder import EmbedderOptions, render_identities, train_embedder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/embedder-gpu")
    p.add_argument("--people", type=int, default=4000)
    p.add_argument("--val-people", type=int, default=300)
    p.add_argument("--sightings", type=int, default=8)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--recipes", nargs="+", default=["triplet:semihard", "arcface"])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--minutes", type=float, default=2.5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda:0")
    a = p.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = render_identities(work / "train", a.people, a.sightings, seed=1, workers=a.workers)
    val = render_identities(work / "val", a.val_people, a.sightings, seed=2, workers=a.workers)
    print(
        f"rendered {a.people} + {a.val_people} people x {a.sightings} in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    summary = {}
    for recipe in a.recipes:
        loss, _, miner = recipe.partition(":")
        opt = EmbedderOptions(
            loss=loss,
            miner=miner or "semihard",
            epochs=a.epochs,
            batch=a.batch,
            max_minutes=a.minutes,
            device=a.device,
        )
        name = recipe.replace(":", "-")
        r = train_embedder(
            work / name,
            opt,
            train_crops=train,
            val_crops=val,
            log=lambda s, name=name: print(name, s, flush=True),
        )
        print(r.summary(), flush=True)
        shutil.copy(r.onnx, out / f"{name}.onnx")
        shutil.copy(r.out / "embedder_report.json", out / f"{name}.json")
        summary[name] = r.verification
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
