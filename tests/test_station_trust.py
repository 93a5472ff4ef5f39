"""What the station trusts, with real processes: broker accounts, and where the drones' token goes.

* MQTT accounts: a Mosquitto with ``allow_anonymous false`` and a password file made by
  mosquitto_passwd; a daemon and a station with their accounts get a detection through, a station
  with a wrong password says the refusal once and gets nothing.
* --drone-networks: a message's ``api`` outside them gets no request at all (a counting HTTP server
  on loopback), the refusal is logged once per drone, counted and shown in the crop's 404.
* Redirects: a server answering 302 towards another one; the second never hears from the station.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from mqtt_broker import Broker, Subscriber, password_file
from serve_process import ServeProcess
from station_process import StationProcess, survey_photo, wait_until

from onnx_models import red_blob_model

CLI = [sys.executable, "-m", "edgetile.runtime.cli"]
FAST = ["--settle", "0", "--poll", "0.1", "--tile", "256"]
DRONE_TOKEN = "drone-secret"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_passwords_come_from_files_and_bad_ones_are_usage_errors(tmp_path, model):
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    missing = tmp_path / "missing.pw"
    station = ["station", "--mqtt", "127.0.0.1:1", "--state", tmp_path / "s"]
    cases = [
        # a password file that is not there, named
        ([*station, "--mqtt-user", "st", "--mqtt-password-file", missing], f"cannot read {missing}"),
        # an empty first line is no password
        (
            [*station, "--mqtt-user", "st", "--mqtt-password-file", empty],
            f"first line of {empty}, found none",
        ),
        # MQTT sends no password without a user name
        ([*station, "--mqtt-password-file", empty], "expected --mqtt-user NAME as well"),
        # a network that is not one
        ([*station, "--drone-networks", "10.0.0.0/33"], "expected a network such as"),
    ]
    for args, words in cases:
        out = run(*args)
        assert out.returncode == 2 and words in out.stderr, (args, out.stderr)
    serve = ["serve", "--model", model, "--state", tmp_path / "d", "--mqtt", "127.0.0.1:1"]
    out = run(*serve, "--mqtt-user", "d1", "--mqtt-password-file", missing)
    assert out.returncode == 2 and f"--mqtt-password-file: cannot read {missing}" in out.stderr, out.stderr
    # the daemon's configuration file takes the same keys
    config = tmp_path / "serve.yaml"
    config.write_text(f"mqtt-user: d1\nmqtt-password-file: {empty}\n")
    out = run(*serve, "--config", config)
    assert out.returncode == 2 and f"first line of {empty}, found none" in out.stderr, out.stderr
    out = run("station", "--help")
    flat = " ".join(out.stdout.split())
    for words in ("--mqtt-user NAME", "--mqtt-password-file FILE", "--drone-networks CIDR", "100.64.0.0/10"):
        assert words in flat, words
    assert "--mqtt-password-file FILE" in " ".join(run("serve", "--help").stdout.split())


@pytest.mark.parametrize(
    "host,addresses,allowed",
    [
        ("10.1.2.3", None, True),  # an address inside
        ("8.8.8.8", None, False),  # an address outside
        ("::ffff:192.168.1.5", None, True),  # IPv4-mapped IPv6 counts as its IPv4 address
        ("fd12::5", None, True),  # unique local IPv6
        ("drone.local", ["192.168.1.7"], True),  # a name whose every address is inside
        ("drone.evil", ["192.168.1.7", "203.0.113.9"], False),  # one address outside is enough
    ],
)
def test_drone_networks_check_addresses_and_every_address_of_a_name(host, addresses, allowed):
    from edgetile.runtime.station.config import DEFAULT_DRONE_NETWORKS
    from edgetile.runtime.station.fetch import DroneNetworks, FetchRefused

    def resolve(name, port, type=0):  # what a resolver answers for the names of this table
        return [(socket.AF_INET, type, 6, "", (a, port)) for a in addresses]

    nets = DroneNetworks([ipaddress.ip_network(n) for n in DEFAULT_DRONE_NETWORKS], resolve=resolve)
    if allowed:
        assert nets.address(host, 80) in (host, *(addresses or []))
    else:
        with pytest.raises(FetchRefused, match="outside --drone-networks"):
            nets.address(host, 80)


@pytest.mark.slow
def test_broker_accounts_let_the_daemon_and_station_through_and_refuse_a_wrong_password(tmp_path, model):
    passwords = password_file(tmp_path / "mosquitto.passwd", {"alpha": "a-pass", "station": "s-pass"})
    broker = Broker(tmp_path / "broker", ["allow_anonymous false", f"password_file {passwords}"]).start()
    (tmp_path / "drone.token").write_text(DRONE_TOKEN + "\n")
    (tmp_path / "alpha.pw").write_text("a-pass\n")
    (tmp_path / "station.pw").write_text("s-pass\n")
    (tmp_path / "wrong.pw").write_text("not-the-password\n")
    mqtt = ["--mqtt", f"127.0.0.1:{broker.port}", "--mqtt-prefix", "search"]
    station = StationProcess(
        tmp_path,
        *mqtt,
        "--state",
        tmp_path / "station",
        "--daemon-token-file",
        tmp_path / "drone.token",
        "--mqtt-user",
        "station",
        "--mqtt-password-file",
        tmp_path / "station.pw",
    )
    intruder = StationProcess(
        tmp_path,
        *mqtt,
        "--state",
        tmp_path / "intruder",
        "--mqtt-client-id",
        "intruder",
        "--mqtt-user",
        "station",
        "--mqtt-password-file",
        tmp_path / "wrong.pw",
    )
    config = tmp_path / "alpha.yaml"  # the daemon's account from its configuration file
    config.write_text(f"mqtt-user: alpha\nmqtt-password-file: {tmp_path / 'alpha.pw'}\n")

    def drone(name: str, *account) -> tuple[ServeProcess, object]:
        drop = tmp_path / f"drop-{name}"
        drop.mkdir()
        d = ServeProcess(
            tmp_path,
            "--model",
            model,
            "--watch",
            drop,
            "--state",
            tmp_path / f"state-{name}",
            *FAST,
            "--token-file",
            tmp_path / "drone.token",
            "--geo",
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "--mqtt-topic",
            "search",
            "--drone-id",
            name,
            *account,
        )
        return d, drop

    alpha, drop = drone("alpha", "--config", config)
    # bravo has alpha's user name and a wrong password
    bravo, drop_b = drone("bravo", "--mqtt-user", "alpha", "--mqtt-password-file", tmp_path / "wrong.pw")
    try:
        station.start()
        station.wait_subscribed()
        intruder.start()
        alpha.start()
        bravo.start()
        survey_photo(drop / "A_0001.JPG", 0.0, [(256, 80)], seed=1)
        survey_photo(drop_b / "B_0001.JPG", 300.0, [(256, 80)], seed=2)

        def arrived():
            finds = station.finds()
            return len(finds) == 1 and finds[0]["crop_ready"] and finds

        (find,) = wait_until(arrived, 90, "alpha's detection and its crop at the station")
        assert find["drones"] == ["alpha"]
        assert "refused" not in alpha.log() and "refused" not in station.log()
        # the broker refused the intruder and bravo at several tries each by now; each said it once
        wait_until(lambda: broker.log().count("not authorised") >= 6, 60, "six refused tries")
        wait_until(
            lambda: len(bravo.json("/detections", token=DRONE_TOKEN)["items"]) == 1, 60, "bravo's photo"
        )
        (refusal,) = [line for line in bravo.log().splitlines() if "refused" in line]
        assert (
            f"edgetile serve WARNING: MQTT broker 127.0.0.1:{broker.port} refused client edgetile-" in refusal
        )
        assert "Not authorized" in refusal and "--mqtt-password-file" in refusal
        assert [f["drones"] for f in station.finds()] == [["alpha"]]  # nothing from bravo
        refusals = [
            line for line in intruder.log().splitlines() if "refused client intruder (the station)" in line
        ]
        assert len(refusals) == 1, intruder.log()
        assert f"MQTT broker 127.0.0.1:{broker.port} refused client intruder (the station)" in refusals[0]
        assert "Not authorized" in refusals[0] and "--mqtt-password-file" in refusals[0]
        assert " lost " not in intruder.log()  # the disconnections after each refusal are not news
        status = intruder.status()
        assert status["mqtt"]["connected"] is False and status["sightings"] == 0 and intruder.finds() == []
    finally:
        for proc in (station, intruder, alpha, bravo):
            proc.kill()
        broker.stop()


class CountingServer:
    """An HTTP server on loopback that records every request it gets (path and Authorization header).

    Args:
        host: The loopback address to listen on.
        redirect: Answer every request with 302 to this URL; otherwise 200 with a tiny JPEG-like body.
    """

    def __init__(self, host: str = "127.0.0.1", redirect: str | None = None) -> None:
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"\xff\xd8\xff\xd9"
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def detection(drone: str, api: str, outcome_id: int, index: int = 0) -> str:
    """A PREFIX/detections message as a daemon (or anyone who can publish to the broker) writes it."""
    return json.dumps(
        {
            "drone_id": drone,
            "api": api,
            "outcome_id": outcome_id,
            "index": index,
            "image": f"/data/{drone}_{outcome_id}.JPG",
            "bbox": [10, 10, 20, 30],
            "score": 0.9,
            "class_name": "person",
            "lat": 55.75,
            "lon": 37.61,
            "error_m": 3.0,
            "committed_at": time.time(),
        }
    )


@pytest.mark.slow
def test_the_token_goes_only_inside_the_drone_networks_and_never_along_a_redirect(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    (tmp_path / "drone.token").write_text(DRONE_TOKEN + "\n")
    outside = CountingServer()  # on 127.0.0.1, outside the networks the station is given
    target = CountingServer("127.0.0.2")  # where the redirect points
    redirecting = CountingServer("127.0.0.3", redirect=target.url)
    station = StationProcess(
        tmp_path,
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--state",
        tmp_path / "station",
        "--daemon-token-file",
        tmp_path / "drone.token",
        "--drone-networks",
        "10.0.0.0/8",
        "127.0.0.2/32",
        "127.0.0.3/32",
    )
    pub = Subscriber(broker.port, "edgetile/none", client_id="anyone", clean=True)
    try:
        station.start()
        station.wait_subscribed()
        for n in (1, 2):  # two sightings of one drone whose api is outside: one log line
            pub.client.publish("edgetile/detections", detection("mallory", outside.url, n), qos=1)
        pub.client.publish("edgetile/detections", detection("bravo", redirecting.url, 1), qos=1)

        def settled():
            crops = station.status()["crops"]
            return crops["refused"] == 2 and crops["given_up"] == 1 and crops

        crops = wait_until(settled, 60, "two crops refused and one given up")
        assert crops["pending"] == 0 and crops["ready"] == 0
        assert outside.requests == []  # no request at all, so no token
        sightings = {s["drone_id"]: s for f in station.finds() for s in f["sightings"]}
        status, _, body = station.request(f"/api/review/crops/{sightings['mallory']['id']}")
        detail = json.loads(body)
        assert status == 404 and detail["crop_state"] == "refused", detail
        assert (
            "127.0.0.1 is outside --drone-networks (10.0.0.0/8 127.0.0.2/32 127.0.0.3/32)" in detail["detail"]
        )
        photo = sightings["mallory"]["outcome_id"]
        status, _, body = station.request(f"/images/{photo}")
        assert status == 502 and "refused" in json.loads(body)["detail"] and outside.requests == []
        lines = [line for line in station.log().splitlines() if "crops of drone mallory refused" in line]
        assert len(lines) == 1 and "token not sent" in lines[0], station.log()

        # the redirect: the drone's api heard the request (inside the networks), its target never did
        assert [auth for _, auth in redirecting.requests] == [f"Bearer {DRONE_TOKEN}"]
        status, _, body = station.request(f"/api/review/crops/{sightings['bravo']['id']}")
        detail = json.loads(body)
        assert status == 404 and detail["crop_state"] == "given_up"
        assert "HTTP 302 redirect to" in detail["detail"] and "not followed" in detail["detail"]
        photo = sightings["bravo"]["outcome_id"]
        status, _, body = station.request(f"/images/{photo}")
        assert status == 502 and "HTTP 302" in json.loads(body)["detail"]
        assert len(redirecting.requests) == 2 and target.requests == []
    finally:
        station.kill()
        pub.close()
        for server in (outside, target, redirecting):
            server.close()
        broker.stop()
