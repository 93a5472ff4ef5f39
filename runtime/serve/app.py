"""The HTTP API of ``edgetile serve`` (FastAPI).

GET /health, GET /metrics, GET /detections?since=ID&limit=N, GET /failed?since=ID&limit=N,
GET /inputs/{sha256}, GET /images/{id}, GET /images/{id}/annotated, POST /images, GET /openapi.json,
and the review page's API under /api/review/ (see :mod:`.review`).

Ids are outcome ids: each input gets exactly one outcome (its detections, or the error it was parked
with), numbered in commit order, so ``since`` paging never misses a result. With a token, every
route but /health needs ``Authorization: Bearer TOKEN`` (health checks of Docker and systemd carry no
secret; /health reveals only whether the daemon works and its queue depth).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from .._version import __version__
from ..images import ImageReadError, ImageTooLarge, read_image
from ..outputs import draw_detections
from ..results import Detections
from .guard import RequestGuard, token_check
from .page import mount_page
from .retention import MIB, human_bytes
from .review import review_router
from .store import PhotoQueue, iso_utc
from .telemetry import read_sensors, render_prometheus
from .uploads import UploadTooLarge, store_upload

if TYPE_CHECKING:
    from .daemon import Daemon

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the photo
PAGE_MAX = 1000
ID_MAX = 2**63 - 1  # SQLite's largest integer: a larger id is a client's mistake (422), never a 500
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def create_app(daemon: Daemon) -> FastAPI:  # noqa: C901 - the routes are closures over the daemon, each short; mccabe counts them as one function
    """The API over one daemon's queue, configuration and measurements."""
    cfg = daemon.config
    app = FastAPI(
        title="edgetile serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    # Host, cross-site writes, framing, and body bytes counted as they arrive
    app.add_middleware(
        RequestGuard,
        allowed_hosts=cfg.allowed_hosts,
        max_body=cfg.max_upload_bytes + MULTIPART_OVERHEAD,
        check_host=cfg.token is None,  # a token is what a rebinding page cannot send
    )

    # Checking an upload decodes it (a 12 MP photo is 36 MB of pixels): two at a time bounds memory
    # however many clients upload at once.
    decoding = threading.BoundedSemaphore(2)

    def store(src, client_name):
        with decoding:
            return _store(src, client_name, cfg)

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a list of objects; a field user reads one line: what, expected, found.
        parts = [f"{e['loc'][-1]}: {e['msg'].lower()}, found {e.get('input')!r}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    def queue() -> PhotoQueue:
        return PhotoQueue(cfg.db_path, cfg.max_attempts, cfg.retry_after)

    check_token = token_check(cfg.token, "the daemon's token")

    @app.get("/health")
    def health() -> JSONResponse:
        with queue() as q:
            depth = q.depth()
        alive = daemon.worker_alive()
        problems = daemon.problems()
        body: dict[str, object] = {
            "status": "worker stopped" if not alive else "degraded" if problems else "ok",
            "version": __version__,
            "queue_depth": depth,
            "stopping": daemon.stop.is_set(),
        }
        if problems:  # the worker runs, but photos are not being found: say what fails
            body["problems"] = problems
        return JSONResponse(body, status_code=200 if alive else 503)

    mount_page(app)  # the review page's shell: no data in it, so no token

    api = APIRouter(dependencies=[Depends(check_token)])

    @api.get("/metrics")
    def metrics() -> PlainTextResponse:
        with queue() as q:
            counts = q.counts()
            storage = {
                **q.copies(),
                "free_bytes": daemon.floor.free_bytes(),
                "frames_skipped": daemon.floor.skipped,
            }
            mqtt = None
            if daemon.outbox is not None:
                mqtt = {
                    **q.outbox_counts(),
                    "published": daemon.outbox.published,
                    "connected": int(daemon.outbox.publisher.connected),
                }
        text = render_prometheus(
            counts,
            daemon.histograms,
            read_sensors(cfg.sysfs),
            daemon.retries,
            daemon.started_at,
            __version__,
            storage,
            mqtt,
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/detections")
    def detections(
        since: int = Query(
            0, ge=0, le=ID_MAX, description="return results after this id (the previous 'next')"
        ),
        limit: int = Query(100, ge=1, le=PAGE_MAX),
    ) -> dict:
        with queue() as q:
            items, nxt = q.detections(since, limit)
        return {"items": items, "next": nxt}

    @api.get("/failed")
    def failed(since: int = Query(0, ge=0, le=ID_MAX), limit: int = Query(100, ge=1, le=PAGE_MAX)) -> dict:
        with queue() as q:
            items, nxt = q.failed(since, limit)
        return {"items": items, "next": nxt}

    @api.get("/inputs/{sha256}")
    def input_status(sha256: str) -> dict:
        if not _SHA256.match(sha256):
            raise HTTPException(422, f"expected a 64-digit lowercase hex SHA-256, found {sha256[:80]!r}")
        with queue() as q:
            found = q.lookup(sha256)
        if found is None:
            raise HTTPException(404, f"no input with SHA-256 {sha256}")
        return found

    def outcome_or_404(outcome_id: int):
        if not 0 <= outcome_id <= ID_MAX:
            raise HTTPException(422, f"id: expected an integer in 0..{ID_MAX}, found {outcome_id}")
        with queue() as q:
            row = q.outcome(outcome_id)
        if row is None:
            raise HTTPException(404, f"no result with id {outcome_id}")
        if row["removed_at"] is not None:
            raise HTTPException(
                410,
                f"the image of result {outcome_id} was removed by the retention budget "
                f"(--keep-inputs-gb, --keep-days or --min-free-mb) at "
                f"{iso_utc(row['removed_at'])}; its detections stay in /detections",
            )
        if not Path(row["path"]).is_file():
            raise HTTPException(404, f"the image of result {outcome_id} is no longer at {row['path']}")
        return row

    def gone_meanwhile(outcome_id: int, row) -> HTTPException:
        """The answer for a file that vanished after outcome_or_404 found it (the retention's race)."""
        outcome_or_404(outcome_id)  # raises 410 once the retention has committed its mark
        return HTTPException(404, f"the image of result {outcome_id} is no longer at {row['path']}")

    @api.get("/images/{outcome_id}")
    def image(outcome_id: int) -> StreamingResponse:
        row = outcome_or_404(outcome_id)
        if not row["ok"]:  # bytes that never decoded as an image may be anything: never sent back
            raise HTTPException(
                409, f"result {outcome_id} is a failed input ({row['error']}); only decoded photos are served"
            )
        media = mimetypes.guess_type(row["path"])[0] or "application/octet-stream"
        # Opened here, not by a FileResponse later: a copy the retention deletes while it is sent
        # stays readable through this handle, so the answer is never cut short.
        try:
            fd = os.open(row["path"], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise gone_meanwhile(outcome_id, row) from None
        except OSError as exc:  # ELOOP: the photo was replaced by a link since it was read
            raise HTTPException(
                409, f"the image of result {outcome_id} is no longer a plain file ({exc.strerror or exc})"
            ) from None
        f = os.fdopen(fd, "rb")  # closed by the generator when the body is sent
        size = os.fstat(f.fileno()).st_size

        def body() -> Iterator[bytes]:
            with f:
                while chunk := f.read(1 << 20):
                    yield chunk

        return StreamingResponse(body(), media_type=media, headers={"Content-Length": str(size)})

    @api.get("/images/{outcome_id}/annotated")
    def annotated(outcome_id: int) -> Response:
        row = outcome_or_404(outcome_id)
        if not row["ok"]:
            raise HTTPException(
                409, f"result {outcome_id} is a failed input ({row['error']}); nothing to draw"
            )
        records = json.loads(row["detections"])
        dets = Detections.from_records(records)
        names = {r["class_id"]: r["class_name"] for r in records}
        with decoding:  # the uploads' bound: parallel requests for a large photo wait their turn
            try:
                img = read_image(row["path"], cfg.max_pixels)
            except ImageReadError as exc:
                if not Path(row["path"]).exists():
                    raise gone_meanwhile(outcome_id, row) from None
                raise HTTPException(409, f"result {outcome_id}: {exc}") from None
            ok, jpeg = cv2.imencode(".jpg", draw_detections(img, dets, names), [cv2.IMWRITE_JPEG_QUALITY, 90])
            del img
        if not ok:
            raise HTTPException(500, f"result {outcome_id}: OpenCV could not encode the annotated JPEG")
        return Response(jpeg.tobytes(), media_type="image/jpeg")

    # a page on another site cannot make a browser upload: RequestGuard refuses cross-site writes
    @api.post("/images", status_code=201)
    async def upload(request: Request, name: str = Query("", description="file name for a raw-body upload")):
        limit = cfg.max_upload_bytes
        length = request.headers.get("content-length")
        if length is None:
            raise HTTPException(411, "expected a Content-Length header (chunked uploads are not accepted)")
        if not length.isdigit():
            raise HTTPException(400, f"expected a numeric Content-Length, found {length[:40]!r}")
        if int(length) > limit + MULTIPART_OVERHEAD:
            raise HTTPException(
                413, f"upload too large: expected at most {limit} bytes (--max-upload-mb), found {length}"
            )
        free = daemon.floor.short()
        if free is None and daemon.floor.min_free_bytes:
            # the body is spooled, then copied: twice its size must fit above the floor
            room = daemon.floor.free_bytes()
            if room - 2 * int(length) < daemon.floor.min_free_bytes:
                raise HTTPException(
                    507,
                    f"the state folder has {human_bytes(room)} free: expected room for twice the "
                    f"upload ({length} bytes) above --min-free-mb {daemon.floor.min_free_bytes / MIB:g}",
                )
        if free is not None:
            raise HTTPException(
                507,
                f"the state folder has {human_bytes(free)} free, below --min-free-mb "
                f"{daemon.floor.min_free_bytes / MIB:g}: expected room for the upload; try "
                "again when finished copies have been removed",
            )
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=8)
            try:
                part = form.get("file")
                if not isinstance(part, UploadFile):
                    raise HTTPException(
                        422, "expected the photo in a multipart file field named 'file', found none"
                    )
                stored = await run_in_threadpool(store, part.file, part.filename)
            finally:
                await form.close()
        else:
            spool = tempfile.SpooledTemporaryFile(max_size=1 << 20, dir=str(cfg.tmp_dir))
            try:
                async for chunk in request.stream():
                    spool.write(chunk)
                spool.seek(0)
                stored = await run_in_threadpool(store, spool, name)
            finally:
                spool.close()
        with queue() as q:
            _item_id, created = q.add(stored.sha256, "upload", stored.name, stored.path, size=stored.size)
            status = q.lookup(stored.sha256)
            assert status is not None  # added just above on this connection
            if not created and stored.new_file and not q.holds_copy(stored.sha256, stored.path):
                # known content whose copy is elsewhere or was removed by the retention: this one is nobody's
                stored.path.unlink(missing_ok=True)
        if created:
            daemon.wake.set()
        body = {**status, "width": stored.width, "height": stored.height, "duplicate": not created}
        return JSONResponse(body, status_code=201 if created else 200)

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        # FastAPI's own /openapi.json would be served without the token
        return JSONResponse(app.openapi())

    api.include_router(review_router(daemon, decoding))  # the review page's data (see review.py)
    api.include_router(daemon.hooks.routes(queue))  # e.g. GeoJSON/KML/CSV, tracks, thumbnails
    app.include_router(api)
    return app


def _store(src, client_name, cfg):
    try:
        return store_upload(
            src, client_name, cfg.uploads_dir, cfg.tmp_dir, cfg.max_upload_bytes, cfg.max_pixels
        )
    except UploadTooLarge as exc:
        raise HTTPException(413, f"{exc} (--max-upload-mb)") from None
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except ImageReadError as exc:
        raise HTTPException(415, f"expected a readable image: {exc}") from None
    except OSError as exc:
        raise HTTPException(
            507, f"cannot store the upload: {exc.strerror or exc} (is {os.fspath(cfg.state)} full?)"
        ) from None
