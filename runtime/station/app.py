"""The station's HTTP API (FastAPI): /health, the review page's shell, and the review API behind the token.

With a token (``--token-file``), every route but /health and the page's shell (which carries no
data) needs ``Authorization: Bearer TOKEN``; the same RequestGuard as the daemon's checks Host,
cross-site writes and framing before any route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .._version import __version__
from ..serve.guard import RequestGuard, token_check
from ..serve.page import mount_page
from .routes import station_router

if TYPE_CHECKING:
    from .station import Station

MAX_BODY = 64 * 1024  # decisions and splits are small JSON objects


def create_app(station: Station) -> FastAPI:
    """The station's API over its store."""
    cfg = station.config
    app = FastAPI(
        title="edgetile station", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.add_middleware(
        RequestGuard, allowed_hosts=cfg.allowed_hosts, max_body=MAX_BODY, check_host=cfg.token is None
    )

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{e['loc'][-1]}: {e['msg'].lower()}, found {e.get('input')!r}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        ing = station.ingest
        return {
            "status": "ok",
            "version": __version__,
            "mqtt_connected": bool(ing is not None and ing.connected.is_set()),
            "stopping": station.stop.is_set(),
        }

    mount_page(app)
    api = APIRouter(dependencies=[Depends(token_check(cfg.token, "the station's token"))])

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    api.include_router(station_router(station))
    app.include_router(api)
    return app
