"""The review page's shell: ``/`` and ``/static/...``, plain files shipped inside the package.

The shell carries no data, so it is served without the token; the page asks the operator for the
token and sends it as a header on every request it makes. The Content-Security-Policy keeps the page
on this daemon: scripts, styles, images and connections from its own origin (and blob: images that the
page made from fetched bytes), nothing from any other host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

SHELL_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """StaticFiles with the shell's headers on every file (a page's scripts revalidate after an upgrade)."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update({k: v for k, v in SHELL_HEADERS.items() if k != "Content-Security-Policy"})
        return response


def mount_page(app: FastAPI) -> None:
    """Serve the review page at ``/`` and its files at ``/static/``."""
    if not (STATIC / "index.html").is_file():
        raise RuntimeError(f"expected the review page at {STATIC / 'index.html'}, found no such file")
    router = APIRouter()

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=SHELL_HEADERS)

    app.include_router(router)
    app.mount("/static", _StaticFiles(directory=STATIC), name="static")
