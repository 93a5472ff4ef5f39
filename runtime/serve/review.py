"""The review page's JSON API: the queue of detections, decisions, crops, the map, the live stream, exports.

Every route is under the daemon's token (app.py includes this router behind it); the shapes are in
docs/review.md (## API) and in /openapi.json. State-changing requests must be JSON
(``Content-Type: application/json``, which a cross-site HTML form cannot send without a CORS
preflight that this server never answers); those that the browser says come from another site are
refused before any route by the daemon's RequestGuard (:mod:`.guard`). Images are found by
detection or result id in the queue database, never by a path from the request.

The legend's smallest detectable person: a detector of this family needs about MIN_MODEL_PX pixels
of an object at its input to find it; a tile of T photo pixels is resized to the model's input of I
pixels, so the smallest object in photo pixels is MIN_MODEL_PX * T / I. A person of PERSON_M metres
stays above it while the ground sampling distance is at most PERSON_M / that size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import cv2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..geo.tracks import TrackBuilder
from ..images import ImageReadError, check_pixels, claimed_size, read_image
from .review_export import finds_csv, finds_geojson, finds_gpx, finds_kml, finds_png, numbered_finds
from .review_store import FINDS, SOURCES, STATUSES, ReviewQueue, public, review_counts
from .store import iso_utc

if TYPE_CHECKING:
    from .daemon import ChangeSignal, Daemon

log = logging.getLogger("edgetile.serve")

MIN_MODEL_PX = 10.0  # object size at the model's input below which detectors of this kind miss people
PERSON_M = 1.7
CROP_MAX = 512
CROP_MIN_CONTEXT = 32
OVERLAY_MAX = 1024
OVERLAY_CACHE = 256  # overlays kept encoded in memory (about 100 kB each)
CROP_CACHE = 1024  # crops kept encoded in memory (about 20 kB each)
PAGE_DEFAULT, PAGE_MAX = 200, 1000
SSE_TICK_S = 0.1  # how often a stream looks at the daemon's commit counter
SSE_POLL_S = 1.0  # and reads the database anyway (a commit it was not told about)
SSE_KEEPALIVE_S = 15.0
TRACK_RADIUS_M = 5.0


class Decision(BaseModel):
    id: str = Field(max_length=40, description="detection id: '{outcome_id}-{index}' or 'op-{n}'")
    status: Literal["unreviewed", "confirmed", "rejected", "flagged"]
    operator: str = Field(min_length=1, max_length=64, description="who decides (a label)")
    note: str | None = Field(None, max_length=2000)


class OperatorBox(BaseModel):
    outcome_id: int = Field(ge=1, description="the photo's result id")
    bbox: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in photo pixels")
    operator: str = Field(min_length=1, max_length=64)
    note: str | None = Field(None, max_length=2000)


def model_min_px(detector) -> float:
    """The smallest object the detector finds, in photo pixels (see the module's docstring)."""
    tile = getattr(getattr(detector, "config", None), "tile", None)
    try:
        input_side = min(detector.input_hw)
    except (AttributeError, TypeError, IndexError):
        input_side = None
    if not tile or not input_side:
        return MIN_MODEL_PX
    return MIN_MODEL_PX * float(tile) / float(input_side)


def legend(detector) -> dict:
    px = model_min_px(detector)
    return {
        "model_min_px": round(px, 2),
        "person_m": PERSON_M,
        "max_gsd_cm_detectable": round(PERSON_M * 100.0 / px, 2),
    }


def encode_cursor(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = json.loads(raw)
        if not (
            isinstance(key, list)
            and len(key) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in key)
        ):
            raise ValueError("not a key of four numbers")
        return tuple(key)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(
            422, f"after: expected the 'next' of a previous page, found {text[:80]!r}"
        ) from None


def sort_key(order: str, item: dict) -> tuple:
    when, kind, a, b = item["_order"]
    if order == "time":
        return (when, kind, a, b)
    score = 2.0 if item["score"] is None else item["score"]  # the operator's boxes first: people for sure
    return (-score, kind, a, b)


def split_values(values: list[str] | None, allowed: tuple[str, ...], name: str) -> set[str] | None:
    if not values:
        return None
    out = {v.strip() for s in values for v in s.split(",") if v.strip()}
    unknown = sorted(out - set(allowed))
    if unknown:
        raise HTTPException(422, f"{name}: expected values among {', '.join(allowed)}, found {unknown[0]!r}")
    return out


def json_only(request: Request) -> None:
    """Refuse a state-changing request that is not JSON (415).

    A cross-site HTML form can send a POST without a CORS preflight only as a form or as text, never
    as JSON. Requests that a browser marks as coming from another site are refused before any route
    by the daemon's RequestGuard (see :mod:`.guard`).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, f"expected Content-Type: application/json, found {ctype or 'none'!r}")


def review_router(daemon: Daemon, decoding: threading.BoundedSemaphore) -> APIRouter:
    """The review API over one daemon (its queue, hooks, detector and commit signal).

    Args:
        daemon: The running daemon.
        decoding: The semaphore that bounds concurrent photo decodes (shared with uploads).
    """
    review = _Review(daemon)
    r = APIRouter(prefix="", tags=["review"])
    r.include_router(_queue_routes(review))
    r.include_router(_image_routes(review, decoding))
    r.include_router(_map_routes(review))
    r.include_router(_event_routes(review))
    r.include_router(_export_routes(review))
    return r


class _Review:
    """What the review's routes share: the daemon, its queue database and the snapshot of it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.cfg = daemon.config
        self.snapshot = Snapshot()
        # the daemon's --track-radius and --appearance-min when it georeferences, else the tracks' defaults
        geo = getattr(daemon.hooks, "config", None)
        self.track_radius = getattr(geo, "track_radius_m", TRACK_RADIUS_M)
        self.appearance_min = getattr(geo, "appearance_min", None)

    def queue(self) -> ReviewQueue:
        return ReviewQueue(self.cfg.db_path, self.cfg.max_attempts, self.cfg.retry_after)

    def outbox_limit(self) -> int | None:
        return None if self.daemon.outbox is None else self.daemon.outbox.limit

    def finds(self, q: ReviewQueue) -> list[dict]:
        return numbered_finds(self.snapshot.sorted(q, "time"))

    def committed(self, item: dict) -> None:
        """After a decision or an operator's box: wake the live pages, and tell the team of a find."""
        self.daemon.changes.bump()
        if item["status"] not in FINDS:
            return
        if self.daemon.outbox is not None:
            self.daemon.outbox.wake.set()
        try:
            self.daemon.hooks.review(public(item))
        except Exception:  # noqa: BLE001 - the decision is committed; a link failing is logged whole
            log.exception("the decision on %s is kept, but telling the ground station failed", item["id"])


def _item_or_404(q: ReviewQueue, det_id: str) -> dict:
    try:
        item = q.review_item(det_id)
    except ValueError as exc:
        raise HTTPException(404, f"no detection {det_id[:80]!r}: {exc}") from None
    if item is None:
        raise HTTPException(404, f"no detection with id {det_id!r}")
    return item


def _photo_path(q: ReviewQueue, outcome_id: int) -> str:
    row = q.outcome(outcome_id)
    if row is None or not row["ok"]:
        raise HTTPException(404, f"no photo with result id {outcome_id}")
    if row["removed_at"] is not None:
        raise HTTPException(
            410,
            f"the image of result {outcome_id} was removed by the retention budget at "
            f"{iso_utc(row['removed_at'])}; its detections and decisions stay",
        )
    if not Path(row["path"]).is_file():
        raise HTTPException(404, f"the image of result {outcome_id} is no longer at {row['path']}")
    return row["path"]


@dataclass(frozen=True)
class ReviewFilter:
    """Which detections a page of the queue lists; None lets any through."""

    statuses: set[str] | None
    sources: set[str] | None
    outcome_id: int | None
    min_score: float | None
    max_score: float | None

    def wants(self, item: dict) -> bool:
        if self.statuses is not None and item["status"] not in self.statuses:
            return False
        if self.sources is not None and item["source"] not in self.sources:
            return False
        if self.outcome_id is not None and item["outcome_id"] != self.outcome_id:
            return False
        score = item["score"]
        if score is None:  # an operator's box: the score range is the model's
            return True
        return (self.min_score is None or score >= self.min_score) and (
            self.max_score is None or score <= self.max_score
        )


def page_of(
    items: list[dict], wanted: ReviewFilter, order: str, start: tuple | None, limit: int
) -> tuple[list[dict], str | None]:
    """The first ``limit`` wanted items after the sort key ``start``, and the cursor of the next page."""
    picked = []
    for it in items:
        if wanted.wants(it) and (start is None or sort_key(order, it) > start):
            picked.append(it)
            if len(picked) > limit:
                break
    nxt = encode_cursor(sort_key(order, picked[limit - 1])) if len(picked) > limit else None
    return picked[:limit], nxt


def _queue_routes(review: _Review) -> APIRouter:
    """The queue: pages of detections, counts, decisions with their history, the operator's boxes."""
    r = APIRouter()

    @r.get("/api/review/detections")
    def detections(
        status: Annotated[
            list[str] | None, Query(description="statuses, repeated or comma-separated")
        ] = None,
        min_score: float | None = Query(None, ge=0, le=1),
        max_score: float | None = Query(None, ge=0, le=1),
        source: Annotated[list[str] | None, Query(description="watch, video, upload, operator")] = None,
        outcome_id: int | None = Query(None, ge=1, description="only the detections of this photo"),
        order: Literal["score", "time"] = "score",
        after: str | None = Query(None, description="the 'next' of the previous page"),
        limit: int = Query(PAGE_DEFAULT, ge=1, le=PAGE_MAX),
    ) -> dict:
        """Detections with their decisions, filtered and paged; ``counts`` are over all of them.

        The score range applies to the model's detections only (an operator's box has no score).
        """
        wanted = ReviewFilter(
            split_values(status, STATUSES, "status"),
            split_values(source, SOURCES, "source"),
            outcome_id,
            min_score,
            max_score,
        )
        start = None if after is None else decode_cursor(after)
        with review.queue() as q:
            items = review.snapshot.sorted(q, order)
        picked, nxt = page_of(items, wanted, order, start, limit)
        return {"items": [public(it) for it in picked], "next": nxt, "counts": review_counts(items)}

    @r.get("/api/review/mode")
    def mode() -> dict:
        """Which server the page talks to: "daemon" (one drone's) or "station" (the ground station's)."""
        return {"mode": "daemon"}

    @r.get("/api/review/counts")
    def counts() -> dict:
        with review.queue() as q:
            return review_counts(review.snapshot.sorted(q, "time"))

    @r.post("/api/review/decisions", dependencies=[Depends(json_only)])
    def decide(body: Decision) -> dict:
        """Record a decision (kept with every earlier one; the latest counts) and return the Detection."""
        with review.queue() as q:
            _item_or_404(q, body.id)
            item, _decision_id = q.decide(
                body.id, body.status, body.operator, body.note, review.outbox_limit()
            )
        review.committed(item)
        return public(item)

    @r.get("/api/review/detections/{det_id}/history")
    def history(det_id: str) -> dict:
        with review.queue() as q:
            _item_or_404(q, det_id)
            return {"id": det_id, "history": q.history(det_id)}

    @r.post("/api/review/operator-boxes", status_code=201, dependencies=[Depends(json_only)])
    def operator_box(body: OperatorBox) -> JSONResponse:
        """A box around a person the model missed: a confirmed detection of origin operator."""
        x1, y1, x2, y2 = body.bbox
        with review.queue() as q:
            row = q.outcome(body.outcome_id)
            if row is None or not row["ok"]:
                raise HTTPException(404, f"no photo with result id {body.outcome_id}")
            width, height = q.conn.execute(
                "SELECT width, height FROM outcomes WHERE id=?", (body.outcome_id,)
            ).fetchone()
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise HTTPException(
                    422,
                    f"bbox: expected 0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height} (the photo), "
                    f"found {body.bbox}",
                )
            place = q.photo_geo(body.outcome_id)
            fix = review.daemon.hooks.locate_box(None if place is None else place["pose"], body.bbox)
            item, _ = q.add_operator_box(
                body.outcome_id, body.bbox, body.operator, body.note, fix, review.outbox_limit()
            )
        review.committed(item)
        return JSONResponse(public(item), status_code=201)

    return r


def encode_jpeg(image, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise HTTPException(500, "OpenCV could not encode the JPEG")
    return data.tobytes()


def jpeg_response(data: bytes) -> Response:
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def fit_image(image, longest: int):
    """The image scaled down (area averaging) so that its longer side is at most ``longest`` pixels."""
    side = max(image.shape[:2])
    if side <= longest:
        return image
    s = longest / side
    return cv2.resize(
        image,
        (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))),
        interpolation=cv2.INTER_AREA,
    )


def crop_image(image, bbox: list[float]):
    """The box at native resolution with max(box side, 32 px) of context, fitted into 512 px."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = bbox
    m = max(x2 - x1, y2 - y1, CROP_MIN_CONTEXT)
    left, top = max(0, int(x1 - m)), max(0, int(y1 - m))
    right, bottom = min(w, int(x2 + m + 0.999)), min(h, int(y2 + m + 0.999))
    return fit_image(image[top:bottom, left:right], CROP_MAX)


def _reduced_read(longest: int) -> int:
    """The imread flag decoding at 1/8, 1/4 or 1/2 where that still leaves OVERLAY_MAX pixels."""
    for factor, reduced in (
        (8, cv2.IMREAD_REDUCED_COLOR_8),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
    ):
        if longest / factor >= OVERLAY_MAX:
            return reduced
    return cv2.IMREAD_COLOR


def _image_routes(review: _Review, decoding: threading.BoundedSemaphore) -> APIRouter:
    """Crops and overlays, found by detection or result id only, encoded once and kept in memory."""
    r = APIRouter()
    # Encoded JPEGs kept in memory: the page shows a crop again on every step back and forth, and the
    # map asks for every overlay on each load; a decode of a 12 MP photo costs more than the page waits.
    overlays = ByteCache(OVERLAY_CACHE)
    crops = ByteCache(CROP_CACHE)

    @r.get("/api/review/crops/{det_id}", response_class=Response)
    def crop(det_id: str) -> Response:
        """The box at native resolution with max(box side, 32 px) of context, fitted into 512 px."""
        with review.queue() as q:
            item = _item_or_404(q, det_id)
            path = _photo_path(q, item["outcome_id"])  # every time: a photo the retention removed is 410
        cached = crops.get(det_id)
        if cached is not None:
            return jpeg_response(cached)
        with decoding:
            try:
                img = read_image(path, review.cfg.max_pixels)
            except ImageReadError as exc:
                raise HTTPException(409, f"result {item['outcome_id']}: {exc}") from None
        return jpeg_response(crops.put(det_id, encode_jpeg(crop_image(img, item["bbox"]))))

    @r.get("/api/review/overlays/{outcome_id}", response_class=Response)
    def overlay(outcome_id: int) -> Response:
        """The photo downscaled to fit 1024 px (decoded at 1/2, 1/4 or 1/8 where that is enough)."""
        with review.queue() as q:
            path = _photo_path(q, outcome_id)  # every time: a photo the retention removed is 410
            size = q.conn.execute("SELECT width, height FROM outcomes WHERE id=?", (outcome_id,)).fetchone()
        cached = overlays.get(outcome_id)
        if cached is not None:
            return jpeg_response(cached)
        flag = _reduced_read(max(size[0] or 0, size[1] or 0))
        with decoding:
            try:  # the file at the path may have been replaced since it was detected: its header first
                claimed = claimed_size(path)
                if claimed is not None:
                    check_pixels(*claimed, review.cfg.max_pixels, path)
            except (ImageReadError, OSError) as exc:
                raise HTTPException(409, f"result {outcome_id}: {exc}") from None
            img = cv2.imread(path, flag | cv2.IMREAD_IGNORE_ORIENTATION)  # as the boxes: pixels as stored
        if img is None:
            raise HTTPException(409, f"result {outcome_id}: the photo at its path is not a readable image")
        return jpeg_response(overlays.put(outcome_id, encode_jpeg(fit_image(img, OVERLAY_MAX), 80)))

    return r


def _map_routes(review: _Review) -> APIRouter:
    """The map's data, and the offline map tiles by z/x/y integers only."""
    r = APIRouter()
    tiles = review.cfg.tiles

    @r.get("/api/review/map")
    def map_data() -> dict:
        """Photo footprints with their GSD and overlay, tracks across photos, the legend, the tiles' URL."""
        with review.queue() as q:
            photos = q.map_photos()
            tracks = review.snapshot.tracks(q, review.track_radius, review.appearance_min)
        for p in photos:
            p["overlay"] = f"/api/review/overlays/{p['outcome_id']}"
        return {
            "photos": photos,
            "tracks": tracks,
            "legend": legend(review.daemon.detector),
            "tiles": None if tiles is None else "/tiles/{z}/{x}/{y}.png",
        }

    r.include_router(tile_router(tiles))
    return r


def tile_router(tiles: Path | None) -> APIRouter:
    """The offline map tiles of --tiles DIR, found by their z/x/y integers only, never by a path."""
    r = APIRouter()

    def tile(z: int, x: int, y: int, ext: str) -> FileResponse:
        if tiles is None:
            raise HTTPException(404, "no map tiles: start with --tiles DIR")
        if not (0 <= z <= 24 and 0 <= x < 2**z and 0 <= y < 2**z):
            raise HTTPException(404, f"no tile {z}/{x}/{y}: expected 0 <= z <= 24 and 0 <= x, y < 2^z")
        path = tiles / str(z) / str(x) / f"{y}.{ext}"
        if not path.is_file():
            raise HTTPException(404, f"no tile {z}/{x}/{y}.{ext} in --tiles")
        return FileResponse(path, media_type="image/png" if ext == "png" else "image/jpeg")

    @r.get("/tiles/{z}/{x}/{y}.png", response_class=FileResponse)
    def tile_png(z: int, x: int, y: int) -> FileResponse:
        return tile(z, x, y, "png")

    @r.get("/tiles/{z}/{x}/{y}.jpg", response_class=FileResponse)
    def tile_jpg(z: int, x: int, y: int) -> FileResponse:
        return tile(z, x, y, "jpg")

    return r


def _event_routes(review: _Review) -> APIRouter:
    """The live stream of new and newly decided detections."""
    r = APIRouter()
    daemon = review.daemon

    def changes(marks: tuple[int, int, int]) -> tuple[list[str], tuple[int, int, int]]:
        o_last, op_last, r_last = marks
        with review.queue() as q:
            new, o_last, op_last = q.items_after(o_last, op_last)
            decided, r_last = q.decisions_after(r_last)
            decided_items = [q.review_item(d) for d in decided]
        out = [sse("detection", public(it)) for it in new]
        out += [sse("decision", public(it)) for it in decided_items if it is not None]
        return out, (o_last, op_last, r_last)

    @r.get("/api/review/events", response_class=StreamingResponse)
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: ``detection`` (a new Detection) and ``decision`` (an updated one)."""

        def start() -> tuple[int, int, int]:
            with review.queue() as q:
                return q.review_marks()

        marks = await run_in_threadpool(start)

        return event_stream(request, daemon.stop, daemon.changes, changes, marks)

    return r


def event_stream(
    request: Request, stop: threading.Event, signal: ChangeSignal, read: Callable, mark: object
) -> StreamingResponse:
    """The review page's server-sent events, for the daemon and the station alike.

    ``read(mark)`` returns the events since ``mark`` and the new mark; it runs in the thread pool when
    ``signal`` says something changed, and at least every SSE_POLL_S. A keep-alive comment goes out
    after SSE_KEEPALIVE_S of silence; the stream ends with ``stop`` or when the client leaves.
    """

    async def stream():
        nonlocal mark
        yield "retry: 2000\n\n"
        seen = signal.version
        last_read = last_sent = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            version = signal.version
            if version != seen or now - last_read >= SSE_POLL_S:
                seen, last_read = version, now
                out, mark = await run_in_threadpool(read, mark)
                for e in out:
                    yield e
                if out:
                    last_sent = now
            if now - last_sent >= SSE_KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = now
            if await request.is_disconnected():
                break
            await asyncio.sleep(SSE_TICK_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def attachment(name: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def _export_routes(review: _Review) -> APIRouter:
    """The confirmed and flagged finds as GeoJSON, KML, GPX, CSV and a PNG map."""
    r = APIRouter()

    @r.get("/api/review/finds.geojson")
    def finds_as_geojson(request: Request) -> JSONResponse:
        with review.queue() as q:
            doc = finds_geojson(review.finds(q), base_url(request))
        return JSONResponse(doc, media_type="application/geo+json", headers=attachment("finds.geojson"))

    @r.get("/api/review/finds.kml", response_class=Response)
    def finds_as_kml(request: Request) -> Response:
        with review.queue() as q:
            text = finds_kml(review.finds(q), base_url(request))
        return Response(
            text, media_type="application/vnd.google-earth.kml+xml", headers=attachment("finds.kml")
        )

    @r.get("/api/review/finds.gpx", response_class=Response)
    def finds_as_gpx(request: Request) -> Response:
        with review.queue() as q:
            text = finds_gpx(review.finds(q), base_url(request))
        return Response(text, media_type="application/gpx+xml", headers=attachment("finds.gpx"))

    @r.get("/api/review/finds.csv", response_class=Response)
    def finds_as_csv(request: Request) -> Response:
        with review.queue() as q:
            text = finds_csv(review.finds(q), base_url(request))
        return Response(text, media_type="text/csv; charset=utf-8", headers=attachment("finds.csv"))

    @r.get("/api/review/finds.png", response_class=Response)
    def finds_as_png() -> Response:
        with review.queue() as q:
            found, photos = review.finds(q), q.map_photos()
        return Response(finds_png(found, photos), media_type="image/png", headers=attachment("finds.png"))

    return r


class Snapshot:
    """Every Detection, read again only when something was committed since (results, boxes, decisions).

    Outcome, operator-box and review ids only grow and their rows never change, so the three largest
    ids say whether what was read still holds; a queue of thousands is then read once per new result
    or box, not once per page, and new decisions only patch the detections they name. The lists
    handed out are shared: callers copy before they change an item.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: tuple[int, int, int] | None = None
        self._by_order: dict[str, list[dict]] = {}

    def sorted(self, q: ReviewQueue, order: str) -> list[dict]:
        marks = q.review_marks()
        with self._lock:
            old = self._marks
            if old is not None and marks != old and marks[:2] == old[:2]:
                # only decisions since: patch the detections they name (the orders do not change)
                marks, changed = q.decisions_since(old[2])
                if marks[:2] == old[:2]:
                    self._marks = marks
                    self._by_order = {
                        k: [{**it, **changed[it["id"]]} if it["id"] in changed else it for it in v]
                        for k, v in self._by_order.items()
                        if not k.startswith("_")  # the tracks leave out rejected detections: built again
                    }
            if marks != self._marks:
                self._marks, items = q.review_snapshot()
                self._by_order = {"time": sorted(items, key=lambda it: sort_key("time", it))}
            if order not in self._by_order:
                self._by_order[order] = sorted(self._by_order["time"], key=lambda it: sort_key(order, it))
            return self._by_order[order]

    def tracks(self, q: ReviewQueue, radius_m: float, appearance_min: float | None = None) -> list[dict]:
        """:func:`tracks_of` the current detections, built once per change (it compares every pair)."""
        items = self.sorted(q, "time")
        with self._lock:
            current = self._by_order.get("time") is items  # not replaced by a newer read meanwhile
            if current and "_tracks" in self._by_order:
                return self._by_order["_tracks"]
        tracks = tracks_of(items, radius_m, appearance_min)
        with self._lock:
            if self._by_order.get("time") is items:
                self._by_order["_tracks"] = tracks
        return tracks


class ByteCache:
    """A thread-safe least-recently-used map of encoded images.

    Args:
        size: Most entries kept.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key, data: bytes) -> bytes:
        with self._lock:
            self._items[key] = data
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def tracks_of(
    items: list[dict], radius_m: float = TRACK_RADIUS_M, appearance_min: float | None = None
) -> list[dict]:
    """Tracks (one person in several photos) of the located, not rejected detections, photo by photo.

    Args:
        items: Detections in commit order (a model's carry its record's embedding as ``_embedding``).
        radius_m: Ground radius of a track (TrackBuilder).
        appearance_min: Least appearance similarity to join a track (TrackBuilder); None: position alone.

    Returns:
        {"id", "points": [[lat, lon]...], "detections": [ids]} per track seen in two photos or more.
    """
    by_photo: dict[int, list[dict]] = {}
    for it in items:
        if it["status"] != "rejected" and it.get("lat") is not None:
            by_photo.setdefault(it["outcome_id"], []).append(it)
    builder = TrackBuilder(radius_m, appearance_min)
    members: dict[int, list[dict]] = {}
    for outcome_id, dets in by_photo.items():
        records = [
            {
                "lat": d["lat"],
                "lon": d["lon"],
                "error_m": d.get("error_m"),
                "class_name": d.get("class_name"),
                "score": 1.0 if d["score"] is None else d["score"],
                "embedding": d.get("_embedding"),
            }
            for d in dets
        ]
        for d, tid in zip(dets, builder.add_photo(str(outcome_id), records)):
            if tid is not None:
                members.setdefault(tid, []).append(d)
    out = []
    for t in builder.tracks:
        if len(t.photos) < 2:
            continue
        dets = members[t.track_id]
        out.append(
            {
                "id": f"track-{t.track_id}",
                "points": [[d["lat"], d["lon"]] for d in dets],
                "detections": [d["id"] for d in dets],
                "lat": round(t.lat, 8),
                "lon": round(t.lon, 8),
            }
        )
    return out
