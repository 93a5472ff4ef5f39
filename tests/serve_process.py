"""Running `edgetile serve` as a real process on a free loopback port, and talking to it over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np

SERVE = [sys.executable, "-m", "edgetile.runtime.cli", "serve"]
LISTENING = re.compile(r"listening on (http://\S+)")


class ServeProcess:
    """One daemon process; its stderr goes to a log file that the tests read.

    Args:
        workdir: Folder for the log file.
        args: Options after ``edgetile serve`` (``--port 0`` is added unless a port is given).
        env: Extra environment variables.
        prelude: Python code the daemon's process runs before `edgetile serve` (see hold_detect).
    """

    def __init__(self, workdir: Path, *args, env: dict | None = None, prelude: str | None = None) -> None:
        self.args = [str(a) for a in args]
        if "--port" not in self.args:
            self.args += ["--port", "0"]
        self.log_path = Path(workdir) / f"serve-{uuid.uuid4().hex[:8]}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        # Test-only code run in the daemon's process before `edgetile serve` starts (e.g. hold_detect):
        # the daemon itself is the real one, with a place where the test decides when it goes on.
        self.command = (
            SERVE
            if prelude is None
            else [
                sys.executable,
                "-c",
                f"{prelude}\nimport sys\nfrom edgetile.runtime.cli import main\n"
                "sys.exit(main(['serve', *sys.argv[1:]]))",
            ]
        )

    def start(self, timeout: float = 90.0) -> ServeProcess:
        """Start the daemon and wait for its 'listening on' line."""
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*self.command, *self.args], stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log())
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgetile serve exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"edgetile serve did not start listening within {timeout} s:\n{self.log()}")

    def run_to_exit(self, timeout: float = 60.0) -> int:
        """Start the daemon expecting it to stop by itself (a refused start); returns the exit code.

        Raises:
            subprocess.TimeoutExpired: It was still running after ``timeout`` s; it is killed and
                reaped first, so no daemon outlives the test.
        """
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*self.command, *self.args], stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the daemon now, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line in /proc/PID/status")

    def request(
        self,
        path: str,
        method: str = "GET",
        data: bytes | None = None,
        headers: dict | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one HTTP request; HTTP errors are returned, not raised."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, token: str | None = None, expect: int = 200):
        status, _, body = self.request(path, token=token)
        if status != expect:
            raise AssertionError(f"GET {path}: expected HTTP {expect}, found {status}: {body[:300]!r}")
        return json.loads(body)

    def wait_for(self, predicate, timeout: float = 90.0, what: str = "condition", interval: float = 0.1):
        """Poll until predicate() is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = predicate()
            if v:
                return v
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) while waiting for {what}:\n{self.log()}"
                )
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.log()[-3000:]}")

    def all_pages(self, endpoint: str, token: str | None = None, limit: int = 1000) -> list[dict]:
        items, since = [], 0
        while True:
            page = self.json(f"{endpoint}?since={since}&limit={limit}", token=token)
            items += page["items"]
            if not page["items"]:
                return items
            since = page["next"]

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for an exit already asked for (a signal sent with proc.send_signal); the exit code."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def hold_detect(call: int, release: Path, *more: tuple[int, Path]) -> str:
    """A prelude for ServeProcess: the daemon's ``call``-th photo waits in Detector.detect until the
    file ``release`` exists (and so on for each further (call, release) pair), so that a test can act
    while that photo is in hand, however fast or slow the machine is."""
    holds = {int(call): str(release), **{int(c): str(r) for c, r in more}}
    return (
        "import os, time\n"
        "from edgetile.runtime.detector import Detector\n"
        f"_detect, _calls, _holds = Detector.detect, [0], {holds!r}\n"
        "def detect(self, image, timings=None):\n"
        "    _calls[0] += 1\n"
        "    while _calls[0] in _holds and not os.path.exists(_holds[_calls[0]]):\n"
        "        time.sleep(0.01)\n"
        "    return _detect(self, image, timings)\n"
        "Detector.detect = detect\n"
    )


def person_photo(seed: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A small grey-green photo with one red 'person' whose place depends on the seed (distinct bytes)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    img[..., 2] = np.minimum(img[..., 2], 90)
    x, y = int(rng.integers(8, w - 40)), int(rng.integers(8, h - 56))
    img[y : y + 40, x : x + 24] = (0, 0, 255)
    return img


def write_jpeg(path: Path, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    data = buf.tobytes()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # the camera/FTP convention the watcher relies on with a short --settle
    return data


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/jpeg") -> tuple[bytes, dict]:
    """A multipart/form-data body with one file field, as curl -F sends it."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
