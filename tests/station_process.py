"""Running `edgetile station` as a real process, drones' daemons beside it, and photos of overlapping sectors."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from geo_photos import dji_values, write_photo
from review_browser import AGL, LAT0, LON0, PF, person_field
from serve_process import ServeProcess

STATION = [sys.executable, "-m", "edgetile.runtime.cli", "station"]
M_PER_DEG_LAT = 111_320.0


class StationProcess(ServeProcess):
    """One `edgetile station` process (the daemon's helper, with the station's command)."""

    def __init__(self, workdir: Path, *args, env: dict | None = None, prelude: str | None = None) -> None:
        super().__init__(workdir, *args, env=env)
        self.command = (
            STATION
            if prelude is None
            else [
                sys.executable,
                "-c",
                f"{prelude}\nimport sys\nfrom edgetile.runtime.cli import main\n"
                "sys.exit(main(['station', *sys.argv[1:]]))",
            ]
        )
        self.log_path = self.log_path.with_name(self.log_path.name.replace("serve-", "station-"))

    def post(self, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
        status, _, data = self.request(
            path, "POST", json.dumps(body).encode(), {"Content-Type": "application/json"}, token=token
        )
        return status, json.loads(data)

    def finds(self, token: str | None = None) -> list[dict]:
        return self.json("/api/review/detections?order=time&limit=1000", token=token)["items"]

    def status(self, token: str | None = None) -> dict:
        return self.json("/api/station/status", token=token)

    def wait_subscribed(self, timeout: float = 60.0) -> None:
        """Until the broker has the station's subscription: what drones publish from then on waits for it."""
        self.wait_for(lambda: "MQTT: subscribed" in self.log(), timeout, "the station's subscription")


def hold_record(call: int, mark: Path) -> str:
    """A prelude for StationProcess: the station's ``call``-th new detection message is received and
    then held before it is recorded (``mark`` is created then), until the test kills the process."""
    return (
        "import time\n"
        "from edgetile.runtime.station.store import StationStore\n"
        "_record, _calls = StationStore.record_sighting, [0]\n"
        "def record_sighting(self, s, assign):\n"
        "    _calls[0] += 1\n"
        f"    if _calls[0] == {int(call)}:\n"
        f"        open({str(mark)!r}, 'w').close()\n"
        "        while True:\n"
        "            time.sleep(0.01)\n"
        "    return _record(self, s, assign)\n"
        "StationStore.record_sighting = record_sighting\n"
    )


def survey_photo(
    path: Path, north_m: float, blobs: list[tuple[int, int]], seed: int, east_m: float = 0.0
) -> Path:
    """A nadir photo 50 m up (10 cm per pixel, 51 x 38 m, north up), its centre ``north_m`` north of LAT0.

    A person on the ground at row y of a photo is at row y + 10 * d in a photo taken d metres further
    north (y grows southwards): the same person photographed from two places.
    """
    xmp = dji_values(rel_alt=AGL, abs_alt=180.0, pitch=-90.0, yaw=0.0, focal_px=PF)
    lat = LAT0 + north_m / M_PER_DEG_LAT
    lon = LON0 + east_m / (M_PER_DEG_LAT * 0.5640)  # cos(55.75 degrees)
    return write_photo(path, person_field(blobs, seed=seed), lat=lat, lon=lon, xmp=xmp)


def wait_until(cond, timeout: float = 60.0, what: str = "condition", interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
