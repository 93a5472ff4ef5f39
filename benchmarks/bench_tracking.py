"""Tracks on synthetic flights: purity and completeness, position only against position and appearance.

Synthetic flight lines (``train/synth.py``'s ``render_flight``: the same people in consecutive
overlapping photos, groups of alike-dressed people 1-2.5 m apart, walkers, person-like distractors)
are detected (``--detector gt``: the annotated boxes, a perfect detector; ``demo``: the bundled demo
model through the tiled runtime, so its false positives on distractors are tracked too), georeferenced
with the pose each photo records (off by GNSS, attitude and altimeter errors as a drone's is), and
grouped into tracks by ``TrackBuilder`` per flight.

Definitions (each detection counts once; a detection matched to no person is labelled "distractor"):

- purity: for each track, the share of its detections that belong to its most frequent label; averaged
  over detections (sum over tracks of the majority's count / all detections). 1: no track mixes people.
- completeness: for each person, the share of their detections in the track that holds most of them;
  averaged over the people's detections. 1: nobody is split over several tracks.
- mixed tracks: tracks holding detections of two or more people.

Tracking, one row each per detector:

- position only.
- position + appearance UPPER BOUND: NOT A MODEL. An UPPER BOUND from the ground truth: every person has a random unit vector,
  group members vectors near their group's (cosine about ``--group-cos``), each sighting that vector
  plus noise (same-person cosine about ``--same-cos``); detections of no person a random vector each.
  It says what appearance could give with an embedding of that quality, never what a model gives.
- position + appearance MODEL (``--embedder MODEL``): the appearance embedding model from ``edgetile train-embedder``
  (``edgetile.runtime.embedder``) on every detection's crop of the photo as written (JPEG), tracked
  with its stored threshold (or ``--model-appearance-min``): the model's own figure.

    python benchmarks/bench_tracking.py --flights 12 --detector gt
    python benchmarks/bench_tracking.py --flights 12 --detector gt demo --json tracking.json
    python benchmarks/bench_tracking.py --flights 12 --detector gt demo --embedder embedder.onnx

Prints one table row per (detector, embeddings) setting and one JSON line (``--json`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.embedding import DIM, encode_embedding
from edgetile.runtime.geo import ErrorModel, TrackBuilder, locate_boxes
from edgetile.train.synth import FlightConfig, flight_jpeg, render_flight

DEMO_MODEL = Path(__file__).resolve().parents[1] / "runtime" / "data" / "demo.onnx"
DISTRACTOR = "distractor"


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes a (N, 4) and b (M, 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def match_labels(found: np.ndarray, truth: np.ndarray, labels: list[str], min_iou: float = 0.3) -> list[str]:
    """Each found box's person, by greedy IoU matching with the annotated boxes; unmatched: distractor."""
    iou = iou_matrix(found, truth)
    out = [DISTRACTOR] * len(found)
    used: set[int] = set()
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < min_iou:
            break
        if out[i] == DISTRACTOR and j not in used:
            out[i] = labels[j]
            used.add(int(j))
    return out


def truth_embeddings(flight, same_cos: float, group_cos: float, seed: int):
    """The upper bound's embedding maker: person label -> a noisy sighting of their vector.

    Noise of norm s on a unit vector gives two sightings a cosine of about 1 / (1 + s^2); a member
    drawn as the group's vector plus a part of norm g has a cosine of about 1 / (1 + g^2) with another.
    """
    rng = np.random.default_rng([seed, 11])

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    s = math.sqrt(1.0 / same_cos - 1.0)
    g = math.sqrt(1.0 / group_cos - 1.0)
    groups = {k: unit(rng.normal(size=DIM)) for k in {p.group for p in flight.people if p.group is not None}}
    base = {}
    for p in flight.people:
        own = unit(rng.normal(size=DIM))
        base[flight.identity_name(p.identity)] = own if p.group is None else unit(groups[p.group] + g * own)

    def sighting(label: str) -> str:
        if label == DISTRACTOR:
            return encode_embedding(rng.normal(size=DIM))
        return encode_embedding(base[label] + s * unit(rng.normal(size=DIM)))

    return sighting


def scores(tracks_labels: list[list[str]]) -> dict:
    """Purity, completeness and counts of tracks given the labels of each track's detections."""
    total = sum(len(t) for t in tracks_labels)
    majority = sum(Counter(t).most_common(1)[0][1] for t in tracks_labels if t)
    per_person: dict[str, Counter] = {}
    for k, t in enumerate(tracks_labels):
        for label in t:
            if label != DISTRACTOR:
                per_person.setdefault(label, Counter())[k] += 1
    people_dets = sum(sum(c.values()) for c in per_person.values())
    largest = sum(max(c.values()) for c in per_person.values())
    return {
        "detections": total,
        "people_detections": people_dets,
        "people": len(per_person),
        "tracks": len(tracks_labels),
        "purity": majority / total if total else 1.0,
        "completeness": largest / people_dets if people_dets else 1.0,
        "mixed_tracks": sum(1 for t in tracks_labels if len({x for x in t if x != DISTRACTOR}) >= 2),
        "tracks_per_person": sum(len(c) for c in per_person.values()) / max(len(per_person), 1),
    }


def detections_of(
    flights, images, detector: str, model: str, conf: float
) -> list[list[tuple[np.ndarray, list[str]]]]:
    """Per flight, per photo: (boxes (N, 4), the person label of each box)."""
    out = []
    det = None
    if detector == "demo":
        from edgetile.runtime.detector import DetectConfig, Detector

        det = Detector(model, config=DetectConfig(tile=1024, conf=conf))
    try:
        for f, written in zip(flights, images):
            per_photo = []
            for ph, image in zip(f.photos, written):
                labels = [f.identity_name(int(i)) for i in ph.identities]
                if det is None:
                    per_photo.append((ph.boxes.astype(np.float64), labels))
                else:
                    found = det.detect(image).xyxy.astype(np.float64)
                    per_photo.append((found, match_labels(found, ph.boxes.astype(np.float64), labels)))
            out.append(per_photo)
    finally:
        if det is not None:
            det.close()
    return out


def model_embeddings(path: str, images, found) -> tuple[list, float | None, float]:
    """Per flight, per photo, per detection the model's embedding text; its stored threshold; ms per photo."""
    try:
        from edgetile.runtime.embedder import Embedder
    except ImportError as exc:
        raise SystemExit(
            f"--embedder: expected edgetile.runtime.embedder (the embedding model's runtime), found none: {exc}"
        ) from None
    out = []
    spent, photos = 0.0, 0
    with Embedder(path) as emb:
        for written, per_photo in zip(images, found):
            flight = []
            for image, (boxes, _labels) in zip(written, per_photo):
                t0 = time.perf_counter()
                flight.append([encode_embedding(v) for v in emb.vectors(image, boxes)])
                spent += time.perf_counter() - t0
                photos += 1
            out.append(flight)
        return out, emb.threshold, 1000 * spent / max(photos, 1)


def run(flights, found, radius_m: float, appearance_min: float | None, embeddings) -> dict:
    """Track every flight on its own; the scores over all flights' detections, and ms per photo tracking.

    embeddings: per flight, per photo, the embedding text of each detection; None: position only.
    """
    tracks_labels: list[list[str]] = []
    spent, photos = 0.0, 0  # in TrackBuilder.add_photo only (the embeddings' decoding included)
    for k, (f, per_photo) in enumerate(zip(flights, found)):
        builder = TrackBuilder(radius_m, appearance_min)
        labels_of: dict[int, list[str]] = {}
        for j, (ph, (boxes, labels)) in enumerate(zip(f.photos, per_photo)):
            records = []
            for n, fix in enumerate(locate_boxes(ph.recorded, boxes, ErrorModel())):
                r = {"class_name": "person", "score": 1.0}
                if fix is not None:
                    r.update(lat=fix.lat, lon=fix.lon, error_m=fix.error_m)
                if embeddings is not None:
                    r["embedding"] = embeddings[k][j][n]
                records.append(r)
            t0 = time.perf_counter()
            ids = builder.add_photo(f.photo_stem(ph.index), records)
            spent += time.perf_counter() - t0
            photos += 1
            for tid, label in zip(ids, labels):
                if tid is not None:
                    labels_of.setdefault(tid, []).append(label)
        tracks_labels += list(labels_of.values())
    return {**scores(tracks_labels), "track_ms_per_photo": round(1000 * spent / max(photos, 1), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flights", type=int, default=12, help="synthetic flights (default: 12)")
    p.add_argument("--seed", type=int, default=70_000, help="first flight's seed (default: 70000)")
    p.add_argument("--photos", type=int, default=8, help="photos per flight (default: 8)")
    p.add_argument("--detector", choices=("gt", "demo"), nargs="+", default=["gt"], help="default: gt")
    p.add_argument(
        "--model", default=str(DEMO_MODEL), help="detector for --detector demo (default: the demo model)"
    )
    p.add_argument("--conf", type=float, default=0.1, help="its threshold (default: 0.1)")
    p.add_argument("--radius", type=float, default=5.0, help="track radius in metres (default: 5, detect's)")
    p.add_argument(
        "--same-cos", type=float, default=0.85, help="upper bound: same person's cosine (default: 0.85)"
    )
    p.add_argument(
        "--group-cos",
        type=float,
        default=0.6,
        help="upper bound: alike-dressed people's cosine (default: 0.6)",
    )
    p.add_argument(
        "--appearance-min",
        type=float,
        default=None,
        help="upper bound's threshold (default: midway between --same-cos and --group-cos)",
    )
    p.add_argument(
        "--embedder",
        metavar="ONNX",
        help="appearance embedding model (train-embedder): the model's own figure",
    )
    p.add_argument(
        "--model-appearance-min",
        type=float,
        default=None,
        help="its threshold (default: the one stored in it)",
    )
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    thr = a.appearance_min if a.appearance_min is not None else (a.same_cos + a.group_cos) / 2

    config = FlightConfig(photos=a.photos, groups=(2, 4), group_size=(2, 4), people=(3, 6))
    t0 = time.perf_counter()
    flights = [render_flight(s, config) for s in range(a.seed, a.seed + a.flights)]
    render_s = time.perf_counter() - t0
    # what detect reads: each photo as written (JPEG with its XMP), decoded
    images = [
        [cv2.imdecode(np.frombuffer(flight_jpeg(ph), np.uint8), cv2.IMREAD_COLOR) for ph in f.photos]
        for f in flights
    ]
    rows = []
    for detector in a.detector:
        t0 = time.perf_counter()
        found = detections_of(flights, images, detector, a.model, a.conf)
        detect_s = time.perf_counter() - t0
        truth = []
        for f, per_photo in zip(flights, found):
            sighting = truth_embeddings(f, a.same_cos, a.group_cos, f.seed)
            truth.append([[sighting(label) for label in labels] for _boxes, labels in per_photo])
        settings: list[tuple[str, float | None, list | None, float | None]] = [
            ("position only", None, None, None),
            (f"position + appearance UPPER BOUND (truth + noise, thr {thr:.3f})", thr, truth, None),
        ]
        if a.embedder:
            embedded, stored, ms = model_embeddings(a.embedder, images, found)
            model_thr = a.model_appearance_min if a.model_appearance_min is not None else stored
            if model_thr is None:
                raise SystemExit("--embedder: the model stores no threshold: expected --model-appearance-min")
            name = f"position + appearance MODEL {Path(a.embedder).name} (thr {model_thr:.3f})"
            settings.append((name, model_thr, embedded, ms))
        for name, appearance_min, embeddings, ms in settings:
            row = {"detector": detector, "tracking": name}
            row.update(run(flights, found, a.radius, appearance_min, embeddings))
            row["detect_s"] = round(detect_s, 1)
            if ms is not None:
                row["embed_ms_per_photo"] = round(ms, 1)
            rows.append(row)
    result = {
        "bench": "tracking",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "command": "python benchmarks/bench_tracking.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "flights": a.flights,
        "photos_per_flight": a.photos,
        "flight_config": {
            "altitude_m": config.altitude_m,
            "overlap": config.overlap,
            "groups": config.groups,
            "group_size": config.group_size,
            "group_spacing_m": config.group_spacing_m,
            "gps_sigma_m": config.gps_sigma_m,
            "angle_sigma_deg": config.angle_sigma_deg,
            "alt_sigma_m": config.alt_sigma_m,
        },
        "upper_bound_embeddings": {"same_cos": a.same_cos, "group_cos": a.group_cos, "appearance_min": thr},
        "render_s": round(render_s, 1),
        "rows": rows,
    }
    print(
        f"{'detector':8} {'tracking':70} {'purity':>7} {'complete':>8} {'mixed':>5} {'tracks':>6} {'people':>6}"
    )
    for r in rows:
        print(
            f"{r['detector']:8} {r['tracking']:70} {r['purity']:7.3f} {r['completeness']:8.3f} "
            f"{r['mixed_tracks']:5d} {r['tracks']:6d} {r['people']:6d}"
        )
    line = json.dumps(result)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
