"""Crops and photos from the drones' daemons, over their HTTP API, with the daemons' token.

Every new sighting's crop (``{api}/api/review/crops/{outcome_id}-{index}``) is fetched by one
background thread as soon as it is recorded. While a drone's radio link is down the fetch fails;
it is tried again after 1 s, then 2, 4 ... up to ``max_delay_s`` between tries, and given up
(counted, shown in ``/api/station/status``) once the sighting is older than ``max_age_s``. Where
each fetch stands is in the store, so a restart resumes the pending ones. Crops are files under
STATE/crops/, named by the sighting's id.

A photo is fetched when the operator opens it (``{api}/images/{outcome_id}``) and kept under
STATE/photos/.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..files import write_atomic
from .store import StationStore

log = logging.getLogger("edgetile.station")

MAX_CROP_BYTES = 8 << 20
MAX_PHOTO_BYTES = 512 << 20
BATCH = 16


class FetchError(Exception):
    """A fetch from a daemon failed; the message is one line. ``permanent``: trying again cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class DaemonClient:
    """GET requests to the drones' daemons with their bearer token.

    Args:
        token: The daemons' token (--daemon-token-file), or None.
        timeout_s: Seconds a request may take to connect and to answer.
    """

    def __init__(self, token: str | None, timeout_s: float = 10.0) -> None:
        self.token = token
        self.timeout_s = float(timeout_s)

    def get(self, url: str, max_bytes: int) -> tuple[bytes, str]:
        """(body, content type) of a 200 answer.

        Raises:
            FetchError: No answer, another status (410 Gone is permanent), or a body over max_bytes.
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                body = r.read(max_bytes + 1)
                ctype = r.headers.get("content-type", "application/octet-stream")
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").replace("\n", " ")
            raise FetchError(f"{url}: HTTP {exc.code} {detail}", permanent=exc.code == 410) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"{url}: {reason}") from None
        if len(body) > max_bytes:
            raise FetchError(f"{url}: expected at most {max_bytes} bytes, found more", permanent=True)
        return body, ctype


def crop_path(state: Path, sighting_id: int) -> Path:
    return state / "crops" / f"{int(sighting_id)}.jpg"


class CropFetcher:
    """The background thread that fetches every sighting's crop.

    Args:
        state: The station's state folder (crops go to STATE/crops/).
        client: The daemons' HTTP client.
        on_crop: Called after a crop is stored (wakes the live pages).
        min_delay_s: First wait after a failure; it doubles after each.
        max_delay_s: Longest wait between tries.
        max_age_s: A crop not fetched this long after its sighting arrived is given up.
    """

    def __init__(
        self,
        state: Path,
        client: DaemonClient,
        on_crop,
        min_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        max_age_s: float = 3600.0,
    ) -> None:
        self.state = Path(state)
        self.client = client
        self.on_crop = on_crop
        self.min_delay_s = float(min_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.max_age_s = float(max_age_s)
        self.wake = threading.Event()
        self._down: set[str] = set()  # drones whose last fetch failed: said once, and once when back

    def delay(self, tries: int) -> float:
        """Seconds before the next try after ``tries`` failures (1, 2, 4 ... max_delay_s)."""
        return min(self.max_delay_s, self.min_delay_s * 2.0 ** max(0, min(tries, 30)))

    def run(self, db: Path, stop: threading.Event) -> None:
        (self.state / "crops").mkdir(parents=True, exist_ok=True)
        with StationStore(db) as store:
            while not stop.is_set():
                try:
                    due = store.crops_due(time.time(), BATCH)
                    for row in due:
                        if stop.is_set():
                            break
                        self._fetch(store, row)
                    if due:
                        continue
                    nxt = store.next_crop_due()
                except Exception:  # noqa: BLE001 - e.g. a busy database: logged whole, tried again
                    log.exception("crop fetcher: trying again in 1 s")
                    nxt = time.time() + 1.0
                wait = 5.0 if nxt is None else min(5.0, max(0.05, nxt - time.time()))
                self.wake.wait(wait)
                self.wake.clear()

    def _fetch(self, store: StationStore, row) -> None:
        drone = row["drone_id"]
        if not row["api"]:
            error = FetchError(f"drone {drone} has not said where its API is (no 'api' in its messages)")
        else:
            url = f"{row['api'].rstrip('/')}/api/review/crops/{row['outcome_id']}-{row['idx']}"
            try:
                body, _ = self.client.get(url, MAX_CROP_BYTES)
                write_atomic(crop_path(self.state, row["id"]), body)
                store.crop_fetched(row["id"], row["find_id"])
                if drone in self._down:
                    self._down.discard(drone)
                    log.info("crops of drone %s are fetched again", drone)
                self.on_crop()
                return
            except FetchError as exc:
                error = exc
        now = time.time()
        next_try = now + self.delay(row["crop_tries"])
        if error.permanent or next_try - row["received_at"] > self.max_age_s:
            store.crop_failed(row["id"], str(error), None)
            log.warning("crop of sighting s-%d given up: %s", row["id"], error)
            return
        store.crop_failed(row["id"], str(error), next_try)
        if drone not in self._down:
            self._down.add(drone)
            log.warning("crop of drone %s not fetched (%s); trying again with backoff", drone, error)


def photo_suffix(image: str) -> str:
    suffix = Path(image).suffix.lower()
    return suffix if suffix in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp") else ".jpg"


def cached_photo(state: Path, store: StationStore, client: DaemonClient, photo_id: int) -> Path:
    """The photo's file under STATE/photos/, fetched from its daemon on first demand.

    Raises:
        KeyError: No such photo.
        FetchError: Its daemon cannot be reached or refused.
    """
    row = store.photo(photo_id)
    if row is None:
        raise KeyError(photo_id)
    path = state / "photos" / f"{int(photo_id)}{photo_suffix(row['image'])}"
    if path.is_file():
        return path
    api = row["fetch_api"]
    if not api:
        raise FetchError(f"drone {row['drone_id']} has not said where its API is")
    body, _ = client.get(f"{api.rstrip('/')}/images/{row['outcome_id']}", MAX_PHOTO_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, body)
    os.chmod(path, 0o644)
    return path
