"""The station's finds: the grouper of :mod:`edgetile.runtime.geo.finds` over the store, and the API's Find objects.

The grouper lives in memory and is rebuilt from the store at start (each sighting with the find it
was stored with, and the finds it was split from), so the finds after a restart are those before
it. New sightings join through :meth:`Finds.add` inside the transaction that records them.

Appearance: with embeddings on both sides, a sighting joins a find only when their appearance agrees
too (``FindGrouper``'s ``appearance_min``). Embeddings of two models are not comparable, so the rule
(:func:`appearance_rule`) follows what the drones announce in their photo messages (each drone's
embedding model by its hash and threshold): --appearance-min when given, else the announced model's
threshold when every drone that announced one announced the same model; with drones of different
models, position only. A rule that changes (a drone announcing later) applies to the sightings added
from then on: finds are never regrouped, their ids never change.

A Find of the API is shaped like a daemon's Detection (so the review page works unchanged) plus the
station's fields: its sightings (time order), drones and whether its best sighting's crop is here.
The best sighting is the one with the highest score (the earliest of equals); the find's position
is the grouper's (the inverse-variance mean of its sightings' positions).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass

from ..serve.review import sort_key
from ..serve.store import iso_utc
from .store import NewSighting, StationStore

UNREVIEWED = {"status": "unreviewed", "operator": None, "note": None, "decided_at": None}

log = logging.getLogger("edgetile.station")


@dataclass(frozen=True)
class AppearanceRule:
    """How sightings join finds: by position alone, or by position and appearance.

    Attributes:
        appearance_min: Least cosine similarity of two embeddings of one find; None: position only.
        source: Where the rule comes from, in words.
        conflict: The drones announce different embedding models (a warning, not a choice).
    """

    appearance_min: float | None
    source: str
    conflict: bool = False

    def describe(self) -> str:
        if self.appearance_min is None:
            return f"position only ({self.source})"
        return f"position and appearance, cosine >= {self.appearance_min:g} ({self.source})"

    def as_dict(self) -> dict:
        return {
            "by": "position" if self.appearance_min is None else "position and appearance",
            "appearance_min": self.appearance_min,
            "source": self.source,
        }


def appearance_rule(given: float | None, announced: dict[str, dict]) -> AppearanceRule:
    """The rule for --appearance-min ``given`` (or None) and each drone's announced embedding model.

    Args:
        given: --appearance-min, or None.
        announced: {drone id: {"sha256", "threshold"}} (``StationStore.embedders``).
    """
    models: dict[str, list[str]] = {}
    for drone, model in sorted(announced.items()):
        models.setdefault(model["sha256"], []).append(drone)
    if len(models) > 1:
        which = "; ".join(f"{name} by {', '.join(drones)}" for name, drones in models.items())
        return AppearanceRule(
            None,
            f"the drones announce different embedding models, whose embeddings are not comparable: {which}",
            conflict=True,
        )
    if given is not None:
        return AppearanceRule(given, "--appearance-min")
    if not models:
        return AppearanceRule(None, "no drone announced an embedding model")
    ((name, drones),) = models.items()
    threshold = announced[drones[0]]["threshold"]
    if threshold is None:
        return AppearanceRule(
            None, f"embedding model {name} of {', '.join(drones)} stores no threshold; give --appearance-min"
        )
    return AppearanceRule(
        float(threshold), f"the threshold of embedding model {name}, announced by {', '.join(drones)}"
    )


def _sighting(key: int, photo: int, drone_id: str, when: float, lat, lon, error_m, class_name, embedding):
    from ..geo.finds import Sighting

    return Sighting(
        key=int(key),
        photo=int(photo),
        drone_id=drone_id,
        time=float(when),
        lat=lat,
        lon=lon,
        error_m=error_m,
        class_name=class_name,
        embedding=embedding,
    )


class Finds:
    """The grouper and the lock that keeps the ingest's additions and the operators' splits apart.

    Args:
        window_s: Sightings further apart in time than this are not one find (--find-window-s).
        appearance_min: --appearance-min, or None (the drones' announced model decides).
    """

    def __init__(self, window_s: float, appearance_min: float | None = None) -> None:
        self.window_s = float(window_s)
        self.given = appearance_min
        self._lock = threading.RLock()
        self.rule = appearance_rule(appearance_min, {})
        self._grouper = self._new_grouper()

    def _new_grouper(self):
        from ..geo.finds import FindGrouper

        return FindGrouper(window_s=self.window_s, appearance_min=self.rule.appearance_min)

    def models(self, announced: dict[str, dict]) -> AppearanceRule:
        """Take the drones' announced embedding models; a new rule applies to sightings added from now on."""
        rule = appearance_rule(self.given, announced)
        with self._lock:
            if rule != self.rule:
                self.rule = rule
                self._grouper.appearance_min = rule.appearance_min
                (log.warning if rule.conflict else log.info)("finds: sightings join by %s", rule.describe())
        return rule

    def restore(self, store: StationStore) -> int:
        """Rebuild the grouper from the store (at start, or after a failed transaction); returns the sightings."""
        splits = store.splits()
        rows = store.sightings()
        announced = store.embedders()
        with self._lock:
            self.rule = appearance_rule(self.given, announced)
            self._grouper = self._new_grouper()
            for r in rows:
                if r["find_id"] is None:
                    raise RuntimeError(
                        f"sighting {r['id']}: expected the find stored with it, found none (a damaged store?)"
                    )
                self._grouper.restore(
                    _sighting(
                        r["id"],
                        r["photo_id"],
                        r["drone_id"],
                        r["time"],
                        r["lat"],
                        r["lon"],
                        r["error_m"],
                        r["class_name"],
                        r["embedding"],
                    ),
                    int(r["find_id"]),
                    splits.get(int(r["id"]), set()),
                )
        return len(rows)

    def add(self, s: NewSighting, key: int, photo_id: int) -> int:
        with self._lock:
            return self._grouper.add(
                _sighting(
                    key, photo_id, s.drone_id, s.time, s.lat, s.lon, s.error_m, s.class_name, s.embedding
                )
            )

    def split(self, key: int) -> tuple[int, int]:
        """(the new find, the find it left); ValueError when the sighting is alone in its find."""
        with self._lock:
            return self._grouper.split(int(key))

    def position(self, find_id: int) -> tuple[float | None, float | None, float | None]:
        with self._lock:
            return self._grouper.position(int(find_id))


def _round(v, digits: int):
    return None if v is None else round(float(v), digits)


def sighting_item(r: sqlite3.Row) -> dict:
    """One sighting as the API lists it under its find."""
    return {
        "id": f"s-{r['id']}",
        "drone_id": r["drone_id"],
        "detection_id": f"{r['outcome_id']}-{r['idx']}",  # the drone's own id of the detection
        "outcome_id": r["photo"],
        "image": r["image"],
        "time": iso_utc(r["time"]),
        "score": _round(r["score"], 5),
        "bbox": json.loads(r["bbox"]),
        "lat": r["lat"],
        "lon": r["lon"],
        "error_m": r["error_m"],
        "crop_ready": r["crop_state"] == "ready",
        # the size of this sighting's own photo (from PREFIX/photos; None until that message came), so
        # that the page places its box right while the photo itself is still on its drone
        "photo_width": r["width"],
        "photo_height": r["height"],
        "_time": r["time"],
        "_key": r["id"],
        "_index": r["idx"],
        "_find": r["find_id"],
        "_class": r["class_name"],
    }


def find_items(store: StationStore, finds: Finds) -> list[dict]:
    """Every find of the store as an API Find (plus its private ``_order``), in time order."""
    latest = store.latest_decisions()
    members: dict[int, list[dict]] = {}
    for r in store.sightings():
        members.setdefault(int(r["find_id"]), []).append(sighting_item(r))
    out = [find_item(fid, ms, latest.get(fid), finds) for fid, ms in members.items()]
    out.sort(key=lambda it: sort_key("time", it))
    return out


def find_item(find_id: int, members: list[dict], decision, finds: Finds) -> dict:
    members = sorted(members, key=lambda m: (m["_time"], m["_key"]))
    best = max(members, key=lambda m: (-1.0 if m["score"] is None else m["score"], -m["_key"]))
    lat, lon, error_m = finds.position(find_id)
    drones = list(dict.fromkeys(m["drone_id"] for m in members))
    decided = (
        UNREVIEWED
        if decision is None
        else {
            "status": decision["status"],
            "operator": decision["operator"],
            "note": decision["note"],
            "decided_at": iso_utc(decision["decided_at"]),
        }
    )
    return {
        "id": f"f-{find_id}",
        "outcome_id": best["outcome_id"],
        "index": best["_index"],
        "origin": "model",
        "image": best["image"],
        "image_id": best["outcome_id"],
        "source": "station",
        "time": members[0]["time"],
        "score": best["score"],
        "class_name": best["_class"],
        "bbox": best["bbox"],
        "lat": _round(lat, 8),
        "lon": _round(lon, 8),
        "error_m": _round(error_m, 2),
        **decided,
        "photo_width": best["photo_width"],
        "photo_height": best["photo_height"],
        "find_id": f"f-{find_id}",
        "drone_id": best["drone_id"],
        "drones": drones,
        "crop_ready": best["crop_ready"],
        "best_sighting": best["id"],
        "sightings": [{k: v for k, v in m.items() if not k.startswith("_")} for m in members],
        "_order": (members[0]["_time"], 0, find_id, 0),
    }
