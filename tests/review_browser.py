"""Debian's Chromium driven by Selenium, for the review page's tests, screenshots and benchmark.

Every browser starts with a fresh profile, no network features of its own (no sync, component
updates, QUIC, background requests), a host resolver that knows no host but 127.0.0.1, and Chrome's
performance log on, so a test can list every request the page made.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from geo_photos import dji_values, write_photo

CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # A trap for any request to another host: it cannot even be resolved.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (the dev extra: pip install -e '.[dev]')"
    if not CHROMEDRIVER.exists():
        return f"needs Chromium and its driver at {CHROMEDRIVER} (make test installs chromium and chromium-driver)"
    return None


class Browser:
    """One Chromium with its own profile (a separate browser context: own storage, own connections).

    Args:
        size: Window width and height in CSS pixels.
        operator: Operator name put in localStorage before the page runs (None: the page asks).
        token: Token put in sessionStorage before the page runs (None: the page asks if it must).
    """

    def __init__(self, size=(1400, 900), operator: str | None = "ana", token: str | None = None) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="edgetile-chromium-")
        opts = webdriver.ChromeOptions()
        for flag in [*FLAGS, f"--user-data-dir={self.profile}", f"--window-size={size[0]},{size[1]}"]:
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
        self.driver.set_script_timeout(60)
        # {"url", "method", "status", "type" (the response's MIME type), "authorization"} of every request
        self.requests: list[dict] = []
        setup = []
        if operator is not None:
            setup.append(f"localStorage.setItem('edgetile.operator', {json.dumps(operator)});")
        if token is not None:
            setup.append(f"sessionStorage.setItem('edgetile.token', {json.dumps(token)});")
        if setup:
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "".join(setup)})

    def open(self, url: str, ready: bool = True, timeout: float = 60.0) -> Browser:
        self.driver.get(url.rstrip("/") + "/")
        if ready:
            self.wait("s.ready", timeout, "the page to load its queue")
        return self

    def state(self, expr: str = "s"):
        """A JSON value computed from the page's window.edgetileReview (named s)."""
        text = self.driver.execute_script(f"const s = window.edgetileReview; return JSON.stringify({expr});")
        return None if text is None else json.loads(text)

    def wait(self, condition: str, timeout: float = 30.0, what: str | None = None):
        """Poll a JavaScript expression over s = window.edgetileReview until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.driver.execute_script(
                f"const s = window.edgetileReview; if (!s) return null; return JSON.stringify({condition});"
            )
            value = None if value is None else json.loads(value)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or condition}; the page holds "
                    f"{self.state('{view: s.view, ready: s.ready, items: s.items.length, counts: s.counts, pending: s.pending.length, live: s.live, errors: s.errors}')}"
                    f"; console: {self.console()[-5:]}"
                )
            time.sleep(0.05)

    def key(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        for k in keys:
            ActionChains(self.driver).send_keys(k).perform()

    def console(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser")]

    def network(self) -> list[dict]:
        """Every request so far, from Chrome's performance log (Network.requestWillBeSent/responseReceived)."""
        by_id: dict[str, dict] = {}
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            params = msg.get("params", {})
            if msg["method"] == "Network.requestWillBeSent":
                req = params["request"]
                by_id[params["requestId"]] = {
                    "url": req["url"],
                    "method": req["method"],
                    "status": None,
                    "type": None,
                    "authorization": next(
                        (v for k, v in req.get("headers", {}).items() if k.lower() == "authorization"), None
                    ),
                }
            elif msg["method"] == "Network.responseReceived" and params["requestId"] in by_id:
                by_id[params["requestId"]]["status"] = params["response"]["status"]
                by_id[params["requestId"]]["type"] = params["response"]["mimeType"]
        self.requests += by_id.values()
        return self.requests

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Photos of a nadir camera 50 m up: 512x384 px, focal 500 px, so about 10 cm per pixel, 51 x 38 m.
PW, PH, PF, AGL = 512, 384, 500.0, 50.0
LAT0, LON0 = 55.75, 37.62


def person_field(blobs: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """A green field with an 8x8 red 'person' at each (x, y) (multiples of 8: one detection each).

    A blob given as (x, y, red) has that red level (0..255, default 255): a dimmer red, a lower score.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((PH, PW, 3), np.uint8)
    img[...] = (60, 110, 70)
    img += rng.integers(0, 12, img.shape, dtype=np.uint8)
    for x, y, *red in blobs:
        img[y : y + 8, x : x + 8] = (0, 0, red[0] if red else 255)
    return img


def drone_photo(path: Path, n: int, blobs: list[tuple[int, int]], yaw: float = 0.0) -> Path:
    """Photo n of a survey: a GPS position 60 m further north than photo n-1, DJI pose in XMP."""
    xmp = dji_values(rel_alt=AGL, abs_alt=180.0, pitch=-90.0, yaw=yaw, focal_px=PF)
    return write_photo(path, person_field(blobs, seed=n), lat=LAT0 + n * 0.00054, lon=LON0, xmp=xmp)
