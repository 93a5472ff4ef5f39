"""The station's review API: the daemon's review routes over finds instead of detections.

The shapes are those of the daemon (docs/review.md, ## API) with the station's fields (see
docs/station.md and :mod:`.grouping`): ``/api/review/detections`` lists finds (``f-N``), each with
its sightings (``s-N``); a decision applies to a find; ``/api/review/finds/split`` takes a sighting
out of its find. The helpers (paging cursor, filters, JPEG crops and overlays, the live stream's
framing, the exports, the tiles) are the daemon's own, from :mod:`edgetile.runtime.serve.review`
and :mod:`edgetile.runtime.serve.review_export`.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import threading
from typing import TYPE_CHECKING, Annotated, Literal

import cv2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..images import ImageReadError, check_pixels, claimed_size
from ..serve.review import (
    OVERLAY_CACHE,
    OVERLAY_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    ByteCache,
    Decision,
    ReviewFilter,
    attachment,
    base_url,
    decode_cursor,
    encode_jpeg,
    event_stream,
    fit_image,
    jpeg_response,
    json_only,
    legend,
    page_of,
    split_values,
    sse,
    tile_router,
)
from ..serve.review_export import finds_csv, finds_geojson, finds_gpx, finds_kml, finds_png, numbered_finds
from ..serve.review_store import FINDS, STATUSES, public, review_counts
from ..serve.store import iso_utc
from .fetch import FetchError, FetchRefused, cached_photo, crop_path
from .grouping import find_item, find_items, sighting_item
from .store import REFUSED, StationStore

if TYPE_CHECKING:
    from .station import Station

log = logging.getLogger("edgetile.station")

STATION_SOURCES = ("station",)
# Drone colours by first-seen order: distinct on a map and for colour-blind eyes (Okabe-Ito, then Tol)
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#332288",
    "#882255",
    "#117733",
)
_FIND = re.compile(r"^f-([0-9]{1,18})$")
_SIGHTING = re.compile(r"^s-([0-9]{1,18})$")


class Split(BaseModel):
    sighting: str = Field(max_length=40, description="the sighting to take out of its find: 's-N'")
    operator: str = Field(min_length=1, max_length=64)


def parse_id(text: str) -> tuple[str, int]:
    """("find", N) or ("sighting", N); 404 for anything else."""
    m = _FIND.match(text)
    if m:
        return "find", int(m.group(1))
    m = _SIGHTING.match(text)
    if m:
        return "sighting", int(m.group(1))
    raise HTTPException(404, f"expected a find id 'f-N' or a sighting id 's-N', found {text[:80]!r}")


def drone_item(r, now: float | None = None) -> dict:
    """A drone as /api/review/map lists it (and the ``drone`` event sends it)."""
    last = None
    if r["last_lat"] is not None:
        last = {"lat": r["last_lat"], "lon": r["last_lon"], "time": iso_utc(r["last_time"])}
    return {
        "id": r["drone_id"],
        "color": PALETTE[int(r["seq"]) % len(PALETTE)],
        "online": bool(r["online"]),
        "api": r["api"],
        "last": last,
    }


class FindSnapshot:
    """Every find, built again only when something was committed since (the store's last change id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mark: int | None = None
        self._by_order: dict[str, list[dict]] = {}

    def sorted(self, store: StationStore, station: Station, order: str) -> list[dict]:
        from ..serve.review import sort_key

        mark = store.last_change()
        with self._lock:
            if mark != self._mark:
                self._by_order = {"time": find_items(store, station.finds)}
                self._mark = mark
            if order not in self._by_order:
                self._by_order[order] = sorted(self._by_order["time"], key=lambda it: sort_key(order, it))
            return self._by_order[order]


def build_find(store: StationStore, station: Station, find_id: int) -> dict | None:
    """One find as it stands (also inside a write transaction: it sees that transaction's rows)."""
    rows = store.find_sightings(find_id)
    if not rows:
        return None
    return find_item(find_id, [sighting_item(r) for r in rows], store.latest_decision(find_id), station.finds)


def station_router(station: Station) -> APIRouter:
    """Every route of the station's review API, behind its token (see app.py)."""
    r = APIRouter(tags=["station"])
    snapshot = FindSnapshot()
    r.include_router(_queue_routes(station, snapshot))
    r.include_router(_image_routes(station))
    r.include_router(_map_routes(station, snapshot))
    r.include_router(_event_routes(station))
    r.include_router(_export_routes(station, snapshot))
    r.include_router(tile_router(station.config.tiles))
    return r


def _find_id(store: StationStore, text: str) -> int:
    kind, n = parse_id(text)
    if kind == "sighting":
        row = store.sighting(n)
        if row is None:
            raise HTTPException(404, f"no sighting {text}")
        return int(row["find_id"])
    if not store.find_sightings(n):
        raise HTTPException(404, f"no find {text}")
    return n


def _queue_routes(station: Station, snapshot: FindSnapshot) -> APIRouter:
    r = APIRouter()

    @r.get("/api/review/mode")
    def mode() -> dict:
        """Which server the page talks to: "station" here (the daemon answers "daemon")."""
        return {"mode": "station"}

    @r.get("/api/review/detections")
    def detections(
        status: Annotated[
            list[str] | None, Query(description="statuses, repeated or comma-separated")
        ] = None,
        min_score: float | None = Query(None, ge=0, le=1),
        max_score: float | None = Query(None, ge=0, le=1),
        source: Annotated[list[str] | None, Query(description="'station'")] = None,
        outcome_id: int | None = Query(None, ge=1, description="only the finds seen in this station photo"),
        order: Literal["score", "time"] = "score",
        after: str | None = Query(None, description="the 'next' of the previous page"),
        limit: int = Query(PAGE_DEFAULT, ge=1, le=PAGE_MAX),
    ) -> dict:
        """Finds with their decisions and sightings, filtered and paged; ``counts`` are over all finds."""
        wanted = ReviewFilter(
            split_values(status, STATUSES, "status"),
            split_values(source, STATION_SOURCES, "source"),
            None,
            min_score,
            max_score,
        )
        start = None if after is None else decode_cursor(after)
        with station.store() as store:
            items = snapshot.sorted(store, station, order)
        if outcome_id is not None:
            items = [it for it in items if any(s["outcome_id"] == outcome_id for s in it["sightings"])]
        picked, nxt = page_of(items, wanted, order, start, limit)
        return {"items": [public(it) for it in picked], "next": nxt, "counts": review_counts(items)}

    @r.get("/api/review/counts")
    def counts() -> dict:
        with station.store() as store:
            return review_counts(snapshot.sorted(store, station, "time"))

    @r.post("/api/review/decisions", dependencies=[Depends(json_only)])
    def decide(body: Decision) -> dict:
        """A decision on a find (a sighting's id means its find); confirmed/flagged go out once per find."""
        with station.store() as store:
            find_id = _find_id(store, body.id)

            def message(decision_id: int) -> dict:
                find = build_find(store, station, find_id)
                return {**public(find or {}), "decision_id": decision_id}

            _decision_id, first = store.decide(
                find_id, body.status, body.operator, body.note, message, station.outbox_limit, FINDS
            )
            find = build_find(store, station, find_id)
        station.changes.bump()
        if first and find is not None:
            station.announce(public(find))
        return public(find or {})

    @r.post("/api/review/finds/split", dependencies=[Depends(json_only)])
    def split(body: Split) -> dict:
        """Take a sighting out of its find: a find of its own, never grouped back with the one it left."""
        kind, n = parse_id(body.sighting)
        if kind != "sighting":
            raise HTTPException(422, f"sighting: expected a sighting id 's-N', found {body.sighting!r}")
        with station.store() as store:
            if store.sighting(n) is None:
                raise HTTPException(404, f"no sighting {body.sighting}")
            try:
                new, old = store.split(n, body.operator, lambda: station.finds.split(n))
            except ValueError as exc:
                raise HTTPException(409, f"{body.sighting}: {exc}") from None
            except BaseException:
                station.finds.restore(store)  # the commit failed after the grouper split: as the store says
                raise
            out = {"find": build_find(store, station, new), "from": build_find(store, station, old)}
        station.changes.bump()
        return {k: None if v is None else public(v) for k, v in out.items()}

    @r.get("/api/review/detections/{det_id}/history")
    def history(det_id: str) -> dict:
        with station.store() as store:
            find_id = _find_id(store, det_id)
            rows = store.history(find_id)
        return {
            "id": f"f-{find_id}",
            "history": [
                {
                    "status": h["status"],
                    "operator": h["operator"],
                    "note": h["note"],
                    "time": iso_utc(h["decided_at"]),
                }
                for h in rows
            ],
        }

    @r.post("/api/review/operator-boxes", status_code=201, dependencies=[Depends(json_only)])
    def operator_box() -> JSONResponse:
        raise HTTPException(
            405,
            "the station draws no boxes: an operator's box belongs to the drone's daemon, whose photo it is "
            "(open that daemon's page)",
        )

    return r


def _crop(station: Station, det_id: str) -> Response:
    kind, n = parse_id(det_id)
    with station.store() as store:
        if kind == "find":
            find = build_find(store, station, n)
            if find is None:
                raise HTTPException(404, f"no find {det_id}")
            n = int(find["best_sighting"][2:])
        row = store.sighting(n)
    if row is None:
        raise HTTPException(404, f"no sighting s-{n}")
    if row["crop_state"] != "ready":
        state, error = row["crop_state"], row["crop_error"] or ""
        if state == "pending":
            detail = f"crop not fetched yet ({row['crop_tries']} tries so far)"
        elif error.startswith(REFUSED):
            state, detail = "refused", f"crop refused, nothing was fetched: {error[len(REFUSED) :]}"
        else:
            detail = f"crop given up: {error}"
        return JSONResponse({"detail": detail, "crop_state": state}, status_code=404)
    try:
        data = crop_path(station.config.state, n).read_bytes()
    except OSError as exc:
        raise HTTPException(404, f"crop of s-{n} is missing from the state folder: {exc.strerror}") from None
    return jpeg_response(data)


def _image_routes(station: Station) -> APIRouter:
    r = APIRouter()
    overlays = ByteCache(OVERLAY_CACHE)
    decoding = threading.BoundedSemaphore(2)

    @r.get("/api/review/crops/{det_id}", response_class=Response)
    def crop(det_id: str) -> Response:
        """The crop fetched from the drone (a find's: its best sighting's); 404 while it has not arrived."""
        return _crop(station, det_id)

    def photo_file(photo_id: int):
        with station.store() as store:
            try:
                return cached_photo(station.config.state, store, station.client, photo_id)
            except KeyError:
                raise HTTPException(404, f"no station photo {photo_id}") from None
            except FetchRefused as exc:
                raise HTTPException(502, f"photo {photo_id}: refused, nothing was fetched: {exc}") from None
            except FetchError as exc:
                raise HTTPException(502, f"photo {photo_id}: its drone cannot be reached: {exc}") from None

    @r.get("/images/{photo_id}", response_class=FileResponse)
    def image(photo_id: int) -> FileResponse:
        """The photo, fetched from its drone the first time, then from the station's cache."""
        path = photo_file(photo_id)
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @r.get("/api/review/overlays/{photo_id}", response_class=Response)
    def overlay(photo_id: int) -> Response:
        cached = overlays.get(photo_id)
        if cached is not None:
            return jpeg_response(cached)
        path = photo_file(photo_id)
        with decoding:
            try:
                claimed = claimed_size(path)
                if claimed is not None:
                    check_pixels(*claimed, station.config.max_pixels, path)
            except (ImageReadError, OSError) as exc:
                raise HTTPException(409, f"photo {photo_id}: {exc}") from None
            img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise HTTPException(409, f"photo {photo_id}: the fetched file is not a readable image")
        return jpeg_response(overlays.put(photo_id, encode_jpeg(fit_image(img, OVERLAY_MAX), 80)))

    return r


def _map_photos(store: StationStore) -> list[dict]:
    out = []
    for p in store.photos():
        when = p["taken_at"] or p["committed_at"] or p["received_at"]
        out.append(
            {
                "outcome_id": p["id"],
                "image": p["image"],
                "time": iso_utc(when),
                "footprint": None if p["footprint"] is None else _json(p["footprint"]),
                "gsd_cm": p["gsd_cm"],
                "overlay": f"/api/review/overlays/{p['id']}",
                "drone_id": p["drone_id"],
            }
        )
    return out


def _json(text: str):
    import json

    return json.loads(text)


def _map_routes(station: Station, snapshot: FindSnapshot) -> APIRouter:
    r = APIRouter()

    @r.get("/api/review/map")
    def map_data() -> dict:
        """Every drone's photo footprints, the drones with their colour and last position, legend, tiles."""
        with station.store() as store:
            photos = _map_photos(store)
            drones = [drone_item(d) for d in store.drones()]
        return {
            "photos": photos,
            "tracks": [],
            "legend": legend(None),
            "tiles": None if station.config.tiles is None else "/tiles/{z}/{x}/{y}.png",
            "drones": drones,
        }

    @r.get("/api/station/status")
    def status() -> dict:
        """What the station has heard and fetched: messages, crops (pending, ready, given up), the outbox."""
        with station.store() as store:
            return station.status(store)

    return r


def _changes(station: Station, mark: int) -> tuple[list[str], int]:
    out: list[str] = []
    with station.store() as store:
        rows = store.changes_after(mark)
        seen: set[tuple[str, str]] = set()
        for row in rows:
            key = (row["kind"], row["ref"])
            if key in seen:
                continue
            seen.add(key)
            if row["kind"] == "drone":
                d = store.drone(row["ref"])
                if d is not None:
                    out.append(sse("drone", drone_item(d)))
            else:
                find = build_find(store, station, int(row["ref"]))
                if find is not None:
                    out.append(sse(row["kind"], public(find)))
    return out, (rows[-1]["id"] if rows else mark)


def _event_routes(station: Station) -> APIRouter:
    r = APIRouter()

    @r.get("/api/review/events", response_class=StreamingResponse)
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: ``detection``, ``decision``, ``crop`` (each a Find) and ``drone``."""

        def start() -> int:
            with station.store() as store:
                return store.last_change()

        mark = await run_in_threadpool(start)

        return event_stream(request, station.stop, station.changes, lambda m: _changes(station, m), mark)

    return r


def _export_routes(station: Station, snapshot: FindSnapshot) -> APIRouter:
    """The confirmed and flagged finds, one row each (with its sightings and drones), as the daemon's files."""
    r = APIRouter()

    def found() -> list[dict]:
        with station.store() as store:
            return numbered_finds(snapshot.sorted(store, station, "time"))

    @r.get("/api/review/finds.geojson")
    def finds_as_geojson(request: Request) -> JSONResponse:
        doc = finds_geojson(found(), base_url(request))
        return JSONResponse(doc, media_type="application/geo+json", headers=attachment("finds.geojson"))

    @r.get("/api/review/finds.kml", response_class=Response)
    def finds_as_kml(request: Request) -> Response:
        text = finds_kml(found(), base_url(request))
        return Response(
            text, media_type="application/vnd.google-earth.kml+xml", headers=attachment("finds.kml")
        )

    @r.get("/api/review/finds.gpx", response_class=Response)
    def finds_as_gpx(request: Request) -> Response:
        return Response(
            finds_gpx(found(), base_url(request)),
            media_type="application/gpx+xml",
            headers=attachment("finds.gpx"),
        )

    @r.get("/api/review/finds.csv", response_class=Response)
    def finds_as_csv(request: Request) -> Response:
        return Response(
            finds_csv(found(), base_url(request)),
            media_type="text/csv; charset=utf-8",
            headers=attachment("finds.csv"),
        )

    @r.get("/api/review/finds.png", response_class=Response)
    def finds_as_png() -> Response:
        finds = found()
        with station.store() as store:
            photos = _map_photos(store)
        png = finds_png(finds, photos, title="edgetile station finds")
        return Response(png, media_type="image/png", headers=attachment("finds.png"))

    return r
