"""Request guards of ``edgetile serve``: checks every request passes before any route sees it.

An ASGI middleware (so that it also stands before streaming bodies and uploads):

* **Host.** A web page can make the operator's browser talk to the daemon through a name it
  controls (DNS rebinding: ``rebind.attacker.example`` first resolves to the attacker, then to
  127.0.0.1), and then read the answers as its own. The Host header must therefore name this daemon:
  the address the connection was accepted on, a loopback name for a loopback connection, the
  machine's own host name, or one of ``--allowed-hosts``; anything else is refused (400). With a
  token the check is off: a rebinding page cannot add the Authorization header, so it reads nothing,
  while a port mapping (Docker ``-p``), NAT or a proxy gives every legitimate client a Host of its own.
* **Cross-site writes.** A page on another site can still *send* a form or a ``fetch`` to the
  daemon (the answer is unreadable, the upload is not): a state-changing request (POST, PUT, PATCH,
  DELETE) that a browser marks as coming from another site (``Sec-Fetch-Site: cross-site`` or
  ``same-site``, or an ``Origin`` that is not the daemon) is refused (403). Programs (curl, Python,
  a ground station) send neither header and are not affected.
* **Framing.** A request with both Content-Length and Transfer-Encoding is refused (400): the two
  disagree about where the body ends (request smuggling, and an upload that passes a size check on
  one while sending more on the other). Body bytes are counted as they arrive, whatever the headers
  said, and reading stops with 413 past ``max_body``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request  # at module level: FastAPI reads token_check's annotation here

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def split_host(value: str) -> str:
    """The host part of a Host header or an origin's authority, lower case, without port or brackets.

    Examples: "127.0.0.1:8765" -> "127.0.0.1"; "[::1]:8765" -> "::1"; "Drone.local" -> "drone.local".
    """
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value.rstrip(".")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def own_names() -> frozenset[str]:
    """This machine's host name, with and without its domain and as ``NAME.local`` (mDNS).

    From ``gethostname()`` alone: ``getfqdn()`` asks DNS, which on a drone without a network can
    block the start for the resolver's whole timeout.
    """
    name = socket.gethostname().lower().rstrip(".")
    if not name:
        return frozenset()
    short = name.split(".")[0]
    return frozenset({name, short, f"{short}.local"})


class RequestGuard:
    """ASGI middleware refusing requests whose Host, origin or framing is not this daemon's.

    Args:
        app: The ASGI app behind the guard.
        allowed_hosts: Further host names or addresses clients may use (``--allowed-hosts``), e.g. a
            name a reverse proxy forwards; ``*`` turns the Host check off.
        max_body: Most body bytes of any request (the largest upload and its multipart framing);
            None for no limit.
        check_host: False turns the Host check off (the daemon requires a token).
    """

    def __init__(
        self, app, allowed_hosts: Iterable[str] = (), max_body: int | None = None, check_host: bool = True
    ) -> None:
        self.app = app
        self.max_body = max_body
        hosts = {split_host(h) for h in allowed_hosts if h.strip()}
        self.any_host = "*" in hosts or not check_host
        self.allowed = frozenset(hosts - {"*"}) | own_names()

    def host_allowed(self, host: str, server_host: str | None) -> bool:
        """True when ``host`` (from the Host header) names this daemon on this connection."""
        if self.any_host or host in self.allowed:
            return True
        if server_host is not None and host == split_host(server_host):
            return True  # the very address the client connected to
        return _is_loopback(host) and (server_host is None or _is_loopback(split_host(server_host)))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            name = k.decode("latin-1").lower()
            if name in headers and name in ("host", "content-length", "origin"):
                await _refuse(send, 400, f"expected one {name} header, found several")
                return
            headers[name] = v.decode("latin-1")
        if "content-length" in headers and "transfer-encoding" in headers:
            await _refuse(
                send,
                400,
                "expected Content-Length or Transfer-Encoding, found both "
                f"(Content-Length {headers['content-length'][:20]!r}, Transfer-Encoding "
                f"{headers['transfer-encoding'][:20]!r})",
            )
            return
        server = scope.get("server")
        server_host = str(server[0]) if server else None
        host = split_host(headers.get("host", ""))
        if not self.host_allowed(host, server_host):
            await _refuse(
                send,
                400,
                f"expected a Host header naming this daemon (the address connected to, localhost, "
                f"this machine's name or one of --allowed-hosts), found {headers.get('host', '')[:100]!r}",
            )
            return
        if scope["method"] in STATE_CHANGING:
            why = self.cross_site(headers)
            if why:
                await _refuse(send, 403, why)
                return
        if self.max_body is not None:
            receive = _counted(receive, self.max_body)
        await self.app(scope, receive, send)

    def cross_site(self, headers: dict[str, str]) -> str | None:
        """Why a state-changing request comes from another site's page, or None."""
        fetch_site = headers.get("sec-fetch-site", "").strip().lower()
        if fetch_site in ("cross-site", "same-site"):
            return f"expected a request from this daemon's own pages or a program, found Sec-Fetch-Site: {fetch_site}"
        origin = headers.get("origin")
        if origin is None:
            return None
        parts = urlsplit(origin.strip())
        same = (
            parts.scheme in ("http", "https")
            and parts.netloc.lower() == headers.get("host", "").strip().lower()
        )
        if same or (parts.hostname is not None and split_host(parts.netloc) in self.allowed):
            return None
        return f"expected a request from this daemon's own pages or a program, found Origin: {origin[:100]!r}"


def _counted(receive, limit: int):
    """``receive`` that counts body bytes and raises 413 (through the app's handler) past ``limit``."""
    seen = 0

    async def counted_receive():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(
                    413, f"request body too large: expected at most {limit} bytes, found more"
                )
        return message

    return counted_receive


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def guarded_h11_protocol(max_connections: int, header_timeout: float):
    """uvicorn's h11 protocol with a header-read timeout and a cap on open connections.

    uvicorn arms no timer until a first answer has been sent, and its ``limit_concurrency`` answers
    503 only once a request's headers are in: a client that opens connections and sends half a
    request (slowloris) holds each one for ever, until the process runs out of file descriptors and
    even /health cannot be accepted. Here:

    * a connection with no request in progress ``header_timeout`` seconds after it opened, or after
      its last answer, is closed (a request whose headers are in may take its time over the body:
      its size is bounded by the upload limit);
    * past ``max_connections`` open connections, the oldest one without a request in progress is
      closed to make room, so a new client (a health check, an operator) is always served; when
      every connection is busy with a request, the newcomer gets 503 and is closed.

    Returns:
        A protocol class for ``uvicorn.Config(http=...)``.
    """
    import time

    from uvicorn.protocols.http.h11_impl import H11Protocol

    if int(max_connections) < 1 or not header_timeout > 0:
        raise ValueError(
            f"expected max_connections >= 1 and header_timeout > 0, found {max_connections}, {header_timeout}"
        )
    busy_body = json.dumps({"detail": f"expected at most {max_connections} connections, all busy"}).encode()
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(busy_body), busy_body)
    )

    class GuardedH11Protocol(H11Protocol):
        def idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.opened_at = time.monotonic()
            self.header_timer = self.loop.call_later(header_timeout, self.header_timeout)
            if len(self.connections) > max_connections:
                idle = [c for c in self.connections if c is not self and getattr(c, "idle", lambda: False)()]
                if idle:
                    oldest = min(idle, key=lambda c: getattr(c, "opened_at", 0.0))
                    oldest.transport.close()
                else:
                    transport.write(busy)
                    transport.close()

        def header_timeout(self) -> None:
            if self.idle() and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.header_timer.cancel()
            if not self.transport.is_closing():
                self.header_timer = self.loop.call_later(header_timeout, self.header_timeout)

        def connection_lost(self, exc) -> None:
            self.header_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def token_check(token: str | None, whose: str):
    """A FastAPI dependency refusing (401) a request without ``Authorization: Bearer TOKEN``; None: no check.

    Args:
        token: The token, or None when none is required.
        whose: Named in the refusal, e.g. "the daemon's token".
    """

    def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(
                401,
                f"expected the header 'Authorization: Bearer TOKEN' with {whose}",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
