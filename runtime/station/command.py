"""``edgetile station`` on the command line: its options, its registration, and the command itself.

Registration is cheap (argparse only); FastAPI, uvicorn and paho load only when the station runs.
"""

from __future__ import annotations

import argparse
import sys

from ..argtypes import add_max_pixels_option, finite_number, int_at_least, number_in, positive_number
from ..options import EXIT_USAGE
from ..options.files import ConfigError
from .config import DEFAULT_DRONE_NETWORKS


def drone_network(text: str):
    """--drone-networks: one CIDR network (an address alone is that one host)."""
    import ipaddress

    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a network such as 192.168.1.0/24 or fd00::/8 (or one address), found {text!r}"
        ) from None


DEFAULT_PORT = 8766
DEFAULT_STATE = "edgetile-station"


def add_station_options(p: argparse.ArgumentParser) -> None:
    """The station's options: the broker, the state folder, the review page's HTTP, the drones' API."""
    p.add_argument(
        "--mqtt",
        metavar="HOST[:PORT]",
        required=True,
        help="the MQTT broker the drones publish to (their --mqtt), usually Mosquitto on this laptop: "
        "127.0.0.1 or 127.0.0.1:1883. Give the broker 'persistence true' so that a restart of the "
        "broker keeps what waits for the station",
    )
    p.add_argument(
        "--state",
        metavar="DIR",
        default=DEFAULT_STATE,
        help="folder for the station's database (every drone's photos, detections, finds and decisions), "
        f"the fetched crops and photos; on the laptop's disk, kept between runs (default: ./{DEFAULT_STATE})",
    )
    g = p.add_argument_group("MQTT")
    g.add_argument(
        "--mqtt-prefix",
        metavar="PREFIX",
        default="edgetile",
        help="the drones' topic prefix (their --mqtt-topic): the station reads PREFIX/photos, "
        "PREFIX/detections and PREFIX/status/+ and publishes decisions on PREFIX/reviews (default: edgetile)",
    )
    g.add_argument(
        "--mqtt-client-id",
        metavar="ID",
        default="edgetile-station",
        help="the station's fixed MQTT client id: the broker keeps this session's messages while the "
        "station is down; two stations on one broker need two ids (default: edgetile-station)",
    )
    g.add_argument(
        "--mqtt-buffer",
        metavar="N",
        type=number_in("--mqtt-buffer", 1, 10_000_000),
        default=100_000,
        help="decision messages kept in the station's database until the broker acknowledges them "
        "(default: 100000)",
    )
    g.add_argument(
        "--mqtt-user",
        metavar="NAME",
        help="the station's user name on the broker, for a broker with 'allow_anonymous false' and a "
        "password file (mosquitto_passwd); used by its subscriber and its decisions publisher "
        "(default: anonymous)",
    )
    g.add_argument(
        "--mqtt-password-file",
        metavar="FILE",
        help="file whose first line is the password of --mqtt-user; never on the command line, where it "
        "would show in the process list (default: no password)",
    )
    g = p.add_argument_group("the drones' daemons")
    g.add_argument(
        "--daemon-token-file",
        metavar="FILE",
        help="file whose first line is the drones' token (their --token-file), sent as "
        "'Authorization: Bearer' when crops and photos are fetched from them; never on the command line, "
        "where it would show in the process list (default: no token)",
    )
    g.add_argument(
        "--drone-networks",
        nargs="+",
        metavar="CIDR",
        type=drone_network,
        default=None,
        help="the only networks crops and photos are fetched from, with the drones' token: a message's "
        "'api' must be an address inside them, or a name whose every address is; anything else is "
        "refused (logged, counted in /api/station/status), so that whoever can publish to the broker "
        "cannot send the station, and the token, elsewhere. Redirects are never followed (default: "
        f"loopback and the private, link-local and carrier-grade NAT ranges: {' '.join(DEFAULT_DRONE_NETWORKS)})",
    )
    g.add_argument(
        "--crop-max-age-s",
        metavar="SECONDS",
        type=finite_number("--crop-max-age-s", 1.0),
        default=3600.0,
        help="fetching a crop is tried again after 1, 2, 4 ... 60 s while its drone is out of reach, and "
        "given up (counted in /api/station/status) this long after its detection arrived (default: 3600)",
    )
    g = p.add_argument_group("finds")
    g.add_argument(
        "--find-window-s",
        metavar="SECONDS",
        type=finite_number("--find-window-s", 1.0),
        default=1800.0,
        help="sightings whose ground positions agree within their combined error are one find only when "
        "they are at most this far apart in time: a person may walk off in half an hour (default: 1800)",
    )
    g.add_argument(
        "--appearance-min",
        metavar="COS",
        type=positive_number("--appearance-min", 1.0),
        default=None,
        help="when the drones run an appearance embedding model (their --embed), two sightings that agree "
        "in place are one find only if the cosine similarity of their embeddings is at least this, so two "
        "people standing close together stay two finds; sightings without an embedding join by place "
        "alone. Embeddings of different models are not comparable: drones announcing different models "
        "are grouped by place alone (default: the threshold stored in the model the drones announce with "
        "their photos, else place alone; GET /api/station/status says which rule applies)",
    )
    g.add_argument(
        "--mavlink-out",
        metavar="URL",
        help="also send each confirmed or flagged find once as a MAVLink STATUSTEXT, e.g. "
        "udpout:127.0.0.1:14550 for a ground control station on this laptop (default: no MAVLink)",
    )
    g = p.add_argument_group("HTTP (the review page)")
    g.add_argument(
        "--host",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address to serve the review page on; anything but loopback needs --token-file "
        "(default: 127.0.0.1)",
    )
    g.add_argument(
        "--port",
        metavar="PORT",
        type=int_at_least("--port", 0),
        default=DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one and logs it (default: {DEFAULT_PORT})",
    )
    g.add_argument(
        "--token-file",
        metavar="FILE",
        help="file whose first line is the station's own token: every request but /health and the "
        "page's shell then needs 'Authorization: Bearer TOKEN' (default: none, loopback only)",
    )
    g.add_argument(
        "--allowed-hosts",
        nargs="+",
        action="extend",
        metavar="NAME",
        default=[],
        help="without a token: further names clients may use in the Host header (as edgetile serve)",
    )
    g.add_argument(
        "--tiles",
        metavar="DIR",
        help="map tiles downloaded before the search (an XYZ folder: DIR/Z/X/Y.png or .jpg) shown under "
        "the map; nothing is fetched from the internet (default: no background)",
    )
    add_max_pixels_option(g)
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="info logs start, stop, the broker's and the drones' comings and goings (default: info)",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``station`` subcommand to the ``edgetile`` parser; imports nothing heavy."""
    s = subparsers.add_parser(
        "station",
        help="run the ground station: every drone's detections over MQTT in one review page",
        description="Gather the detections that several drones' daemons (edgetile serve --mqtt BROKER\n"
        "--drone-id NAME --geo) publish to one MQTT broker into a durable store (STATE/station.sqlite3),\n"
        "fetch each detection's crop from its drone's HTTP API, group the sightings of one person by\n"
        "several photos and drones into one find, and serve the same review page as edgetile serve.\n"
        "Each message is recorded once, across restarts of the station, of the drones and of the broker.\n"
        "Decisions on finds go out once per find on PREFIX/reviews (and as MAVLink STATUSTEXT).",
        epilog="Exit codes: 0 stopped by SIGTERM/SIGINT, 1 a part of the station failed, 2 usage error.\n"
        "Example: edgetile station --mqtt 127.0.0.1:1883 --state ~/search-2024-05-01 "
        "--daemon-token-file ~/drones.token\n"
        "With a broker that asks for accounts: --mqtt-user station --mqtt-password-file ~/station.mqtt\n"
        "Then open http://127.0.0.1:8766/ . See docs/station.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_station_options(s)
    s.set_defaults(func=station_command)
    return s


def station_command(a: argparse.Namespace) -> int:
    """``edgetile station``: check the options, run the station until SIGTERM/SIGINT."""
    from .config import StationConfig

    try:
        config = StationConfig.from_options(a)
    except ConfigError as exc:
        print(f"edgetile station: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        import fastapi  # noqa: F401
        import paho.mqtt.client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(
            f"edgetile station: error: needs the serve and mqtt extras (pip install 'edgetile[serve,mqtt]'): {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from ..serve.command import setup_logging

    installed = setup_logging(config.log_level, "station", "edgetile.station", more=("edgetile.serve",))
    try:
        from .station import Station

        try:
            return Station(config).run()
        except ConfigError as exc:
            print(f"edgetile station: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        for logger, handler in installed:
            logger.removeHandler(handler)
