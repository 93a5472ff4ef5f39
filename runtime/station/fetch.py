"""Crops and photos from the drones' daemons, over their HTTP API, with the daemons' token.

Every new sighting's crop (``{api}/api/review/crops/{outcome_id}-{index}``) is fetched by one
background thread as soon as it is recorded. While a drone's radio link is down the fetch fails;
it is tried again after 1 s, then 2, 4 ... up to ``max_delay_s`` between tries, and given up
(counted, shown in ``/api/station/status``) once the sighting is older than ``max_age_s``. Where
each fetch stands is in the store, so a restart resumes the pending ones. Crops are files under
STATE/crops/, named by the sighting's id.

A photo is fetched when the operator opens it (``{api}/images/{outcome_id}``) and kept under
STATE/photos/.

Where the token goes: the ``api`` comes from the drones' messages, which anyone who can publish to
the broker can write. A request goes only to an address inside ``--drone-networks`` (a host name is
resolved at fetch time, every address it has must be inside, and the connection goes to the
address that was checked, so a name cannot resolve elsewhere between the check and the request).
Anything else is refused before a connection is opened: the sighting's crop is given up as
``refused`` (logged once per drone). Redirects are never followed: a 3xx is an error naming the
status, so neither the token nor the request goes where the drone's answer points.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from ..files import write_atomic
from .store import REFUSED, StationStore

log = logging.getLogger("edgetile.station")

MAX_CROP_BYTES = 8 << 20
MAX_PHOTO_BYTES = 512 << 20
BATCH = 16


class FetchError(Exception):
    """A fetch from a daemon failed; the message is one line. ``permanent``: trying again cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class FetchRefused(FetchError):
    """The station will not send a request there (outside --drone-networks, not http/https)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DroneNetworks:
    """The networks the drones' APIs may be in (--drone-networks).

    Args:
        networks: CIDR networks; an IPv4-mapped IPv6 address (::ffff:10.0.0.7) counts as its IPv4 one.
        resolve: ``socket.getaddrinfo``'s signature (for tests of names).
    """

    def __init__(self, networks: Iterable[Network | str], resolve=socket.getaddrinfo) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.resolve = resolve

    def __str__(self) -> str:
        return " ".join(str(n) for n in self.networks)

    def contains(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in self.networks)

    def address(self, host: str, port: int) -> str:
        """The checked address to connect to for ``host``.

        Raises:
            FetchRefused: The address, or one of the name's addresses, is outside the networks.
            FetchError: The name does not resolve now (tried again later).
        """
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            if not self.contains(literal):
                raise FetchRefused(f"{host} is outside --drone-networks ({self})")
            return host
        try:
            infos = self.resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"{host} does not resolve: {exc}") from None
        found = [str(info[4][0]) for info in infos]
        if not found:
            raise FetchError(f"{host} does not resolve: no addresses")
        for a in found:
            if not self.contains(ipaddress.ip_address(a.split("%", 1)[0])):
                raise FetchRefused(f"{host} resolves to {a}, outside --drone-networks ({self})")
        return found[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address; the Host header keeps the URL's name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address; the certificate is checked against the URL's name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class DaemonClient:
    """GET requests to the drones' daemons with their bearer token, only inside the drones' networks.

    Args:
        token: The daemons' token (--daemon-token-file), or None.
        networks: Where requests may go (--drone-networks); None: anywhere (for tools, not the station).
        timeout_s: Seconds a request may take to connect and to answer.
    """

    def __init__(
        self, token: str | None, networks: DroneNetworks | None = None, timeout_s: float = 10.0
    ) -> None:
        self.token = token
        self.networks = networks
        self.timeout_s = float(timeout_s)

    def get(self, url: str, max_bytes: int) -> tuple[bytes, str]:
        """(body, content type) of a 200 answer; redirects are not followed.

        Raises:
            FetchRefused: The URL's host is outside the networks, or its scheme is not http/https
                (no connection is opened).
            FetchError: No answer, another status (410 Gone and 3xx are permanent), or a body over
                max_bytes.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchRefused(f"{url[:200]}: not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(f"{url[:200]}: expected an http:// or https:// URL with a host")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        host = parts.hostname
        address = host if self.networks is None else self.networks.address(host, port)
        conn_type = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = conn_type(host, port, address, self.timeout_s)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request("GET", target, headers=headers)
            r = conn.getresponse()
            if 300 <= r.status < 400:
                location = (r.getheader("location") or "nowhere")[:200]
                raise FetchError(
                    f"{url}: HTTP {r.status} redirect to {location} not followed (a daemon does not "
                    "redirect; the token is not sent on)",
                    permanent=True,
                )
            if r.status != 200:
                detail = r.read(300).decode("utf-8", "replace").replace("\n", " ")
                raise FetchError(f"{url}: HTTP {r.status} {detail}", permanent=r.status == 410)
            body = r.read(max_bytes + 1)
            ctype = r.getheader("content-type") or "application/octet-stream"
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(
                f"{url}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
            ) from None
        finally:
            conn.close()
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
        self._refused: set[str] = set()  # drones whose api was refused: said once per drone

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
                write_atomic(crop_path(self.state, row["id"]), body, mode=0o600)
                store.crop_fetched(row["id"], row["find_id"])
                if drone in self._down:
                    self._down.discard(drone)
                    log.info("crops of drone %s are fetched again", drone)
                self.on_crop()
                return
            except FetchError as exc:
                error = exc
        if isinstance(error, FetchRefused):
            store.crop_failed(row["id"], f"{REFUSED}{error}", None)
            if drone not in self._refused:
                self._refused.add(drone)
                log.warning("crops of drone %s refused, its token not sent: %s", drone, error)
            return
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
    write_atomic(path, body, mode=0o600)  # photos of people: the station's user only
    return path
