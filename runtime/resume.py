"""What ``edgetile detect --resume`` keeps of an earlier run in the same output folder.

Every run of detect writes DIR/run.json before its first photo: the detection settings (models by
SHA-256, thresholds, tiling, merging, output formats) and the identity of each input photo. A rerun
with ``--resume`` keeps an earlier record when the settings are the same, the photo is among this
run's inputs, its record holds no error, and the photo's identity is unchanged.

A photo's identity is its size and modification time (nanoseconds), not a hash of its contents: an
archive reprocessed after a search runs to tens of thousands of photos and tens of gigabytes, and
hashing them all again would cost a large part of what resuming saves. A photo edited or replaced in
place changes its size or mtime; a copy made with ``cp -p`` or ``rsync -t`` keeps both, and also its
contents. The models are small and are hashed: a model retrained into the same file name is a
different setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .files import write_json_atomic

RUN_FILE = "run.json"
RUN_KIND = "edgetile detect run"


def photo_identity(path: str | os.PathLike) -> list[int] | None:
    """[size in bytes, modification time in ns] of a photo file, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def write_run(out_dir: str | os.PathLike, settings: Mapping[str, object], inputs: Sequence[str]) -> Path:
    """Record this run's settings and its inputs' identities in DIR/run.json (atomically)."""
    path = Path(out_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": RUN_KIND,
        "settings": dict(settings),
        "photos": {p: photo_identity(p) for p in inputs},
    }
    write_json_atomic(path, doc)
    return path


def _flat(settings: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """What differs, as 'conf 0.25 -> 0.3' (a nested setting by its dotted name)."""
    a, b = _flat(old), _flat(new)
    out = []
    for k in dict.fromkeys([*b, *a]):
        if a.get(k, ...) == b.get(k, ...):
            continue
        if k == "models":
            out.append("models: other model files (by SHA-256)")
        else:
            out.append(f"{k.removeprefix('detect.')} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}")
    return out


def kept_records(
    out_dir: str | os.PathLike, settings: Mapping[str, object], inputs: Sequence[str]
) -> dict[str, dict]:
    """The earlier run's records that this run keeps, by photo path.

    Args:
        out_dir: The output folder of both runs.
        settings: This run's settings, as :func:`write_run` records them (JSON values).
        inputs: This run's photo paths, as detections.json names them.

    Returns:
        Path -> record, for each photo done without error whose identity is unchanged; empty when the
        folder holds no detections.json (nothing to resume).

    Raises:
        ValueError: detections.json without run.json, an unreadable file, or other settings; one
            line, naming the settings that differ.
    """
    out = Path(out_dir)
    results, run = out / "detections.json", out / RUN_FILE
    if not results.is_file():
        return {}
    try:
        doc = json.loads(run.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"--resume: expected {run} beside {results.name}, found none: those results were not written "
            "by an edgetile detect that records its settings; run without --resume to start over"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--resume: {run}: expected a run record in JSON, cannot read it: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != RUN_KIND or not isinstance(doc.get("settings"), dict):
        raise ValueError(f"--resume: {run}: expected a run record of edgetile detect, found something else")
    # A JSON round trip, so that tuples and lists, ints and floats compare as the file holds them.
    new = json.loads(json.dumps(dict(settings)))
    diff = _differences(doc["settings"], new)
    if diff:
        raise ValueError(
            f"--resume: the results in {out} were made with other settings ({'; '.join(diff)}); "
            "run with the same settings, or without --resume (or with another --out) to start over"
        )
    try:
        records = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--resume: {results}: expected a JSON list of records, cannot read it: {exc}"
        ) from None
    if not isinstance(records, list):
        raise ValueError(
            f"--resume: {results}: expected a JSON list of records, found {type(records).__name__}"
        )
    photos = doc["photos"] if isinstance(doc.get("photos"), dict) else {}
    wanted = set(inputs)
    kept: dict[str, dict] = {}
    for r in records:
        if not isinstance(r, dict) or "error" in r or not isinstance(r.get("detections"), list):
            continue
        path = r.get("image")
        if path in wanted and photos.get(path) is not None and photos[path] == photo_identity(path):
            kept[path] = r
    return kept
