"""The station's configuration, checked before start (from the parsed options of ``edgetile station``)."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..images import MAX_PIXELS
from ..links.mqtt import parse_host_port, read_password_file
from ..options.files import ConfigError
from ..serve.config import is_loopback

# Where the drones' APIs may be (--drone-networks): loopback and the private, link-local and
# carrier-grade NAT ranges of a field network.
DEFAULT_DRONE_NETWORKS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def read_token(path: str, option: str) -> str:
    """The token on the first line of a file; ConfigError in one line otherwise."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    token = lines[0].strip() if lines else ""
    if not token or any(c.isspace() for c in token):
        raise ConfigError(
            f"{option}: expected a token without spaces on the first line of {path}, found none"
        )
    return token


@dataclass(frozen=True)
class StationConfig:
    """Everything ``edgetile station`` needs.

    Attributes:
        state: Folder of the station's database, crops and photos.
        mqtt_host: The broker the drones publish to.
        mqtt_port: Its port.
        mqtt_prefix: The drones' topic prefix (their --mqtt-topic).
        client_id: The fixed MQTT client id of the station's persistent session.
        mqtt_user: The station's user name on the broker, or None (anonymous).
        mqtt_password: Its password (from --mqtt-password-file), or None.
        host: Address the review page is served on.
        port: TCP port (0: any free one).
        token: The station's own bearer token, or None (loopback only).
        daemon_token: The daemons' bearer token, for crops and photos, or None.
        drone_networks: The only networks crops and photos are fetched from.
        allowed_hosts: Host header names accepted besides the address, localhost and the host name.
        mavlink_out: pymavlink connection string for STATUSTEXT of confirmed/flagged finds, or None.
        find_window_s: Sightings further apart in time are not one find.
        appearance_min: Least cosine similarity of two sightings' appearance embeddings for one find, or
            None: the threshold of the embedding model the drones announce (position only without one).
        crop_max_age_s: A crop not fetched this long after its sighting arrived is given up.
        mqtt_buffer: Review messages kept until the broker acknowledges them.
        tiles: An XYZ folder of map tiles, or None.
        max_pixels: Largest photo (header pixels) decoded for an overlay; None for no limit.
        log_level: Logging level name.
    """

    state: Path
    mqtt_host: str
    mqtt_port: int = 1883
    mqtt_prefix: str = "edgetile"
    client_id: str = "edgetile-station"
    mqtt_user: str | None = None
    mqtt_password: str | None = None
    host: str = "127.0.0.1"
    port: int = 8766
    token: str | None = None
    daemon_token: str | None = None
    drone_networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_DRONE_NETWORKS)
    allowed_hosts: tuple[str, ...] = ()
    mavlink_out: str | None = None
    find_window_s: float = 1800.0
    appearance_min: float | None = None
    crop_max_age_s: float = 3600.0
    mqtt_buffer: int = 100_000
    tiles: Path | None = None
    max_pixels: int | None = MAX_PIXELS
    log_level: str = "info"

    @property
    def db_path(self) -> Path:
        return self.state / "station.sqlite3"

    @classmethod
    def from_options(cls, a: argparse.Namespace) -> StationConfig:
        """Check the options; every problem is a ConfigError in one line."""
        try:
            host, port = parse_host_port(a.mqtt)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        prefix = a.mqtt_prefix
        if not prefix or any(c in prefix for c in "#+") or prefix.endswith("/"):
            raise ConfigError(
                f"--mqtt-prefix: expected a topic without wildcards or trailing '/', found {prefix!r}"
            )
        user, password = getattr(a, "mqtt_user", None), None
        if user is not None and not user:
            raise ConfigError("--mqtt-user: expected a user name, found an empty one")
        if getattr(a, "mqtt_password_file", None):
            if not user:
                raise ConfigError(
                    "--mqtt-password-file: expected --mqtt-user NAME as well (MQTT sends no password alone), "
                    "found none"
                )
            try:
                password = read_password_file(a.mqtt_password_file)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        networks = getattr(a, "drone_networks", None)
        if networks is None:
            networks = [ipaddress.ip_network(n) for n in DEFAULT_DRONE_NETWORKS]
        token = read_token(a.token_file, "--token-file") if a.token_file else None
        if not is_loopback(a.host) and not token:
            raise ConfigError(
                f"--host {a.host}: serving the review page beyond this machine needs --token-file "
                "(requests then need 'Authorization: Bearer TOKEN')"
            )
        if a.port > 65535:
            raise ConfigError(f"--port: expected 0..65535, found {a.port}")
        state = Path(a.state)
        if state.exists() and not state.is_dir():
            raise ConfigError(f"--state: expected a folder, found a file at {a.state}")
        tiles = a.tiles
        if tiles is not None and not Path(tiles).is_dir():
            raise ConfigError(f"--tiles: expected a folder of map tiles (Z/X/Y.png), found none at {tiles}")
        return cls(
            state=state.resolve(),
            mqtt_host=host,
            mqtt_port=port,
            mqtt_prefix=prefix,
            client_id=a.mqtt_client_id,
            mqtt_user=user,
            mqtt_password=password,
            host=a.host,
            port=a.port,
            token=token,
            daemon_token=read_token(a.daemon_token_file, "--daemon-token-file")
            if a.daemon_token_file
            else None,
            drone_networks=tuple(networks),
            allowed_hosts=tuple(a.allowed_hosts),
            mavlink_out=a.mavlink_out,
            find_window_s=a.find_window_s,
            appearance_min=getattr(a, "appearance_min", None),
            crop_max_age_s=a.crop_max_age_s,
            mqtt_buffer=a.mqtt_buffer,
            tiles=None if tiles is None else Path(tiles).resolve(),
            max_pixels=a.max_pixels,
            log_level=a.log_level,
        )
