"""A real Mosquitto broker on a free loopback port, and a subscriber that collects what it hears."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"  # the same Debian package as the broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def needs_mosquitto():
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip(
            f"needs the Mosquitto broker at {MOSQUITTO} (Debian: apt-get install mosquitto; "
            "`make test` installs it)"
        )


class Broker:
    """Mosquitto with persistence (so that a restart keeps subscriptions and queued messages).

    Args:
        workdir: Folder of its configuration, persistence database and log.
        extra: Further configuration lines, e.g. ``["allow_anonymous false", "password_file P"]``;
            a setting named here replaces the default one (``allow_anonymous true``).
    """

    def __init__(self, workdir: Path, extra: list[str] | tuple[str, ...] = ()) -> None:
        needs_mosquitto()
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        named = {line.split()[0] for line in extra if line.strip()}
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir}/mosquitto.log",
        ]
        lines = [line for line in lines if line.split()[0] not in named] + list(extra)
        # as root, mosquitto would switch to user 'mosquitto', who cannot write here
        self.conf.write_text("\n".join(lines) + "\n" + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen | None = None

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: {self.proc.stderr.read()!r}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence database
            self.proc.wait(timeout=20)
        self.proc = None


def password_file(path: Path, accounts: dict[str, str]) -> Path:
    """A Mosquitto password file with these user names and passwords (made by mosquitto_passwd)."""
    if not os.access(MOSQUITTO_PASSWD, os.X_OK):
        pytest.skip(f"needs {MOSQUITTO_PASSWD} (Debian: apt-get install mosquitto)")
    for n, (user, password) in enumerate(accounts.items()):
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", *(["-c"] if n == 0 else []), str(path), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    path.chmod(0o600)  # mosquitto warns about a password file others can read
    return path


class Subscriber:
    """A paho client that keeps its session across broker restarts and queues every message."""

    def __init__(
        self,
        port: int,
        topic: str = "edgetile/#",
        client_id: str = "test-subscriber",
        clean: bool = False,
        auth: tuple[str, str] | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.messages: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        # A message published before the broker acknowledged the subscription would never reach us.
        if not self.subscribed.wait(15):
            self.close()
            raise TimeoutError(
                f"the broker on port {port} did not acknowledge the subscription to {topic!r} in 15 s"
            )

    def get(self, timeout: float = 15.0):
        return self.messages.get(timeout=timeout)

    def collect(self, n: int, topic: str, timeout: float = 20.0) -> list[dict]:
        """The JSON payloads of the next n messages on `topic` (others are skipped)."""
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if m.topic == topic:
                out.append((json.loads(m.payload), m))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, state: str, timeout: float = 20.0) -> dict:
    """The retained status on a topic once it has the given state, as a fresh client sees it.

    A probe that connects while the state changes may hear the change live (not retained); it
    then tries again, so what is returned was delivered as a retained message.
    """
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        sub = Subscriber(port, topic, client_id=f"probe-{time.monotonic_ns()}", clean=True)
        try:
            m = sub.get(2.0)
            payload = json.loads(m.payload)
            seen.append((payload.get("state"), m.retain))
            if m.retain and payload.get("state") == state:
                return payload
        except queue.Empty:
            seen.append(None)
        finally:
            sub.close()
        time.sleep(0.1)
    raise AssertionError(f"no retained {state!r} on {topic} within {timeout} s; probes saw {seen}")
