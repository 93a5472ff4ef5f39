"""The HTTP API's geographic views of the results (with ``edgetile serve --geo``).

GET /detections.geojson, /tracks.geojson, /detections.kml, /detections_geo.csv and /thumbs/NAME.
Tracks are built at request time from all committed results in commit order, so they are the same
after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..geo.writers import GeoDocuments

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .store import PhotoQueue

THUMB_NAME = re.compile(r"^[0-9a-f]{16}_[0-9]{3}\.jpg$")
PAGE = 1000  # results read from the queue at a time


def geo_documents(
    queue: Callable[[], PhotoQueue], track_radius_m: float, appearance_min: float | None = None
) -> GeoDocuments:
    """GeoJSON/KML/CSV of every committed result, tracks built in commit order."""
    photos = []
    since = 0
    with queue() as q:
        while True:
            items, nxt = q.detections(since, PAGE)
            if not items:
                break
            photos += [(it["image"], it["detections"]) for it in items]
            since = nxt
    return GeoDocuments(photos, track_radius_m=track_radius_m, appearance_min=appearance_min)


def geo_router(
    queue: Callable[[], PhotoQueue],
    thumbs_dir: Path,
    track_radius_m: float,
    appearance_min: float | None = None,
) -> APIRouter:
    """FastAPI routes for the geographic views of the results and the thumbnails.

    Args:
        queue: Opens the daemon's queue.
        thumbs_dir: Where the worker writes the thumbnails (STATE/thumbs).
        track_radius_m: Sightings in different photos closer than this on the ground join one track.
        appearance_min: ... and whose appearance embeddings agree this much (None: position alone).
    """
    from fastapi import APIRouter, HTTPException, Response
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse

    r = APIRouter()

    async def docs() -> GeoDocuments:
        return await run_in_threadpool(geo_documents, queue, track_radius_m, appearance_min)

    @r.get("/detections.geojson")
    async def detections_geojson() -> JSONResponse:
        return JSONResponse((await docs()).geojson(), media_type="application/geo+json")

    @r.get("/tracks.geojson")
    async def tracks_geojson() -> JSONResponse:
        return JSONResponse((await docs()).tracks_geojson(), media_type="application/geo+json")

    @r.get("/detections.kml")
    async def detections_kml() -> Response:
        return Response((await docs()).kml(), media_type="application/vnd.google-earth.kml+xml")

    @r.get("/detections_geo.csv")
    async def detections_csv() -> Response:
        return Response((await docs()).csv_text(), media_type="text/csv; charset=utf-8")

    @r.get("/thumbs/{name}")
    def thumbnail(name: str) -> FileResponse:
        if not THUMB_NAME.match(name):
            raise HTTPException(
                422, f"expected a thumbnail name like 0123456789abcdef_000.jpg, found {name[:80]!r}"
            )
        path = thumbs_dir / name
        if not path.is_file():
            raise HTTPException(404, f"no thumbnail {name}")
        return FileResponse(path, media_type="image/jpeg")

    return r
