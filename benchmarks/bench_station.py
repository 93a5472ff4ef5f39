"""The ground station under a search's load: simulated drones -> Mosquitto -> `edgetile station` -> the page.

Three simulated drones each publish one photo every 2 s with 0-5 detections for 10 minutes of
simulated time (``--speed`` times faster than real time), exactly as a daemon does (station contract:
``PREFIX/status/DRONE_ID`` retained, then per photo ``PREFIX/photos`` followed by its
``PREFIX/detections``, QoS 1), to a real Mosquitto broker started here, into a real ``edgetile
station`` process. Each drone's ``api`` points at a small real HTTP server here that serves crops and
photos as a daemon does, so the station's crop fetching runs too. A client reads the station's
``/api/review/events`` as the page does and timestamps each event on arrival.

Measured:

* end-to-end latency of each detection, from its message's ``committed_at`` (the simulated daemon's
  commit, stamped just before it is published) to the first event that carries its sighting in the
  browser's stream: median, 99th percentile, max;
* the same to the first event that shows that sighting's crop as fetched (``crop_ready``);
* the station's resident memory (VmRSS from /proc/PID/status): peak while the drones publish and
  at the end, once everything arrived.

And the grouping's own throughput (runtime/geo/finds.py): sightings per second for 20,000 sightings
of a simulated search, through ``FindGrouper.add`` and through ``FindGrouper.restore`` (a station's
start), with ``--grouping-only`` alone (no broker, no station).

    python benchmarks/bench_station.py [--speed 10] [--minutes 10] [--json out.json]
    python benchmarks/bench_station.py --grouping-only [--sightings 20000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mqtt_broker import Broker, free_port  # noqa: E402

from edgetile.runtime.geo.finds import FindGrouper, Sighting  # noqa: E402

LAT0, LON0 = 55.75, 37.61
M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(LAT0))
PHOTO_W, PHOTO_H = 4000, 3000
FOOT_W, FOOT_H = 80.0, 60.0  # metres on the ground: a 4000x3000 photo at about 50 m
PREFIX = "edgetile"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = [1000.0 * s for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p99_ms": round(pct(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
    }


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    cv2.circle(img, (width // 2, height // 2), max(2, min(width, height) // 6), (40, 40, 220), -1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("cv2.imencode could not encode a JPEG")
    return buf.tobytes()


class DaemonApi:
    """A drone's HTTP API as far as a station uses it: crops, photos, overlays; counts what was asked."""

    def __init__(self, drone_id: str) -> None:
        crop, photo = jpeg(96, 96, 1), jpeg(1024, 768, 2)
        counts = self.counts = {"crops": 0, "images": 0, "overlays": 0, "other": 0}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?")[0]
                if path.startswith("/api/review/crops/"):
                    kind, body, media = "crops", crop, "image/jpeg"
                elif path.startswith("/images/"):
                    kind, body, media = "images", photo, "image/jpeg"
                elif path.startswith("/api/review/overlays/"):
                    kind, body, media = "overlays", photo, "image/jpeg"
                elif path == "/api/review/mode":
                    kind, body, media = "other", b'{"mode": "daemon"}', "application/json"
                elif path == "/health":
                    kind, body, media = (
                        "other",
                        json.dumps({"drone_id": drone_id}).encode(),
                        "application/json",
                    )
                else:
                    self.send_error(404, f"no {path} on this simulated daemon")
                    return
                with lock:
                    counts[kind] += 1
                self.send_response(200)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # quiet: thousands of crops
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def to_latlon(north_m: float, east_m: float) -> tuple[float, float]:
    return LAT0 + north_m / M_PER_DEG_LAT, LON0 + east_m / M_PER_DEG_LON


class SimulatedDrone:
    """One drone flying a lawnmower over its sector; the people in the area are shared with the others.

    Sectors are 300 m wide and 250 m apart, so that neighbours overlap by 50 m at their edges.
    """

    def __init__(self, index: int, api: str, people: list[tuple[float, float]], seed: int) -> None:
        self.drone_id = f"drone-{chr(ord('a') + index)}"
        self.api = api
        self.people = people
        self.rng = random.Random(seed)
        self.east0 = 250.0 * index
        self.outcome = 0
        self.client = None

    def position(self, n: int) -> tuple[float, float]:
        """The camera's north/east metres at photo n: 10 m/s, 20 m per photo, lanes 60 m apart."""
        lane_len = 300.0
        along = 20.0 * n
        lane, pos = divmod(along, lane_len)
        east = self.east0 + (pos if int(lane) % 2 == 0 else lane_len - pos)
        return 60.0 * lane, east

    def photo(self, n: int, taken_at: float) -> tuple[dict, list[dict]]:
        """The photos message and the detection messages of photo n (committed_at filled in by the caller)."""
        self.outcome += 1
        north, east = self.position(n)
        image = f"{self.drone_id}_DJI_{n:05d}.JPG"
        sha = f"{self.drone_id}-{n:05d}".encode().hex().ljust(64, "0")[:64]
        corners = [
            (FOOT_H / 2, -FOOT_W / 2),
            (FOOT_H / 2, FOOT_W / 2),
            (-FOOT_H / 2, FOOT_W / 2),
            (-FOOT_H / 2, -FOOT_W / 2),
        ]
        footprint = [list(to_latlon(north + dn, east + de)) for dn, de in corners]
        in_view = [p for p in self.people if abs(p[0] - north) < FOOT_H / 2 and abs(p[1] - east) < FOOT_W / 2]
        count = self.rng.randint(0, 5)
        dets = []
        for k in range(count):
            if k < len(in_view):  # a person in view (with this photo's own error), else a rock or a bush
                pn, pe = in_view[k]
            else:
                pn = north + self.rng.uniform(-FOOT_H / 2, FOOT_H / 2)
                pe = east + self.rng.uniform(-FOOT_W / 2, FOOT_W / 2)
            error = self.rng.uniform(2.5, 6.0)
            pn += self.rng.gauss(0, error / 1.41)
            pe += self.rng.gauss(0, error / 1.41)
            lat, lon = to_latlon(pn, pe)
            u = PHOTO_W / 2 + (pe - east) / FOOT_W * PHOTO_W
            v = PHOTO_H / 2 - (pn - north) / FOOT_H * PHOTO_H
            x1 = round(min(max(u - 20, 0), PHOTO_W - 41) + 0.01 * k, 2)  # unique per detection
            y1 = round(min(max(v - 60, 0), PHOTO_H - 61), 2)
            dets.append(
                {
                    "image": image,
                    "sha256": sha,
                    "bbox": [x1, y1, round(x1 + 40, 2), round(y1 + 60, 2)],
                    "score": round(self.rng.uniform(0.3, 0.95), 5),
                    "class_id": 0,
                    "class_name": "person",
                    "lat": round(lat, 8),
                    "lon": round(lon, 8),
                    "ground_alt_m": 120.0,
                    "error_m": round(error, 2),
                    "distance_m": round(math.hypot(pn - north, pe - east), 2),
                    "id": f"{self.outcome}-{k}",
                    "outcome_id": self.outcome,
                    "index": k,
                    "taken_at": taken_at,
                    "drone_id": self.drone_id,
                    "api": self.api,
                }
            )
        lat, lon = to_latlon(north, east)
        photo = {
            "drone_id": self.drone_id,
            "api": self.api,
            "outcome_id": self.outcome,
            "image": image,
            "sha256": sha,
            "width": PHOTO_W,
            "height": PHOTO_H,
            "taken_at": taken_at,
            "detections": len(dets),
            "footprint": [[round(a, 8), round(b, 8)] for a, b in footprint],
            "gsd_cm": 2.0,
            "position": {"lat": round(lat, 8), "lon": round(lon, 8), "alt_m": 170.0},
            "error_m": 3.1,
        }
        return photo, dets

    def connect(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{self.drone_id}", clean_session=False
        )
        status = {"state": "online", "drone_id": self.drone_id, "api": self.api, "time": time.time()}
        c.will_set(f"{PREFIX}/status/{self.drone_id}", json.dumps({**status, "state": "offline"}), 1, True)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        c.publish(f"{PREFIX}/status/{self.drone_id}", json.dumps(status), qos=1, retain=True)
        self.client = c

    def publish(self, topic: str, message: dict):
        return self.client.publish(f"{PREFIX}/{topic}", json.dumps(message), qos=1)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


def sighting_key(drone_id: str, image: str, bbox: list[float]) -> tuple:
    return (drone_id, image, tuple(round(float(v), 2) for v in bbox))


class EventReader:
    """The page's view: reads /api/review/events and timestamps each sighting's first appearance."""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.seen: dict[tuple, float] = {}  # sighting key -> arrival (unix s)
        self.crop: dict[tuple, float] = {}  # sighting key -> first event showing its crop fetched
        self.events: dict[str, int] = {}
        self.unparsed = 0
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: str | None = None
        self.conn = http.client.HTTPConnection(host, port, timeout=600)
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.conn.request("GET", "/api/review/events", headers=headers)
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise RuntimeError(
                f"/api/review/events: expected HTTP 200, found {self.resp.status}: {self.resp.read(300)!r}"
            )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        event, data = "message", []
        try:
            while not self.stop.is_set():
                raw = self.resp.readline()
                if not raw:
                    self.error = "the station closed the event stream"
                    return
                now = time.time()
                self.ready.set()
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line:
                    if data:
                        self._handle(event, "\n".join(data), now)
                    event, data = "message", []
        except (OSError, http.client.HTTPException) as exc:
            if not self.stop.is_set():
                self.error = f"event stream: {exc}"

    def _handle(self, event: str, data: str, now: float) -> None:
        self.events[event] = self.events.get(event, 0) + 1
        if event not in ("detection", "decision", "crop"):
            return
        try:
            find = json.loads(data)
        except json.JSONDecodeError:
            self.unparsed += 1
            return
        for s in find.get("sightings") or []:
            key = sighting_key(s.get("drone_id"), s.get("image"), s.get("bbox") or [])
            self.seen.setdefault(key, now)
            if s.get("crop_ready"):
                self.crop.setdefault(key, now)

    def close(self) -> None:
        self.stop.set()
        self.conn.close()


def vm_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


class RssSampler:
    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            rss = vm_rss_mb(self.pid)
            if rss is not None:
                self.peak = max(self.peak, rss)
            time.sleep(self.every_s)

    def close(self) -> float:
        self.stop.set()
        self.thread.join(5)
        return self.peak


def start_station(work: Path, broker_port: int, extra: list[str]) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = work / "station.log"
    cmd = [
        sys.executable,
        "-m",
        "edgetile.runtime.cli",
        "station",
        "--mqtt",
        f"127.0.0.1:{broker_port}",
        "--state",
        str(work / "station-state"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edgetile station exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/review/mode")
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200:
                mode = json.loads(body).get("mode")
                if mode != "station":
                    raise RuntimeError(f"/api/review/mode: expected 'station', found {mode!r}")
                return proc, port, log
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait(30)
    raise RuntimeError(
        f"edgetile station did not answer /api/review/mode within 90 s:\n{log.read_text()[-3000:]}"
    )


def fly(drones: list[SimulatedDrone], photos_each: int, args: argparse.Namespace) -> tuple[dict, float]:
    """Publish the photos at the simulated pace; returns each detection's commit time, and the wall time."""
    committed: dict[tuple, float] = {}
    sim_t0 = time.time() - args.minutes * 60  # the flight took place over the last minutes
    wall_t0 = time.monotonic()
    step = args.period / args.speed
    pending = []
    for n in range(photos_each):
        wait = wall_t0 + n * step - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        for d in drones:
            photo, dets = d.photo(n, round(sim_t0 + n * args.period, 3))
            committed_at = round(time.time(), 3)  # the daemon commits, then its outbox sends
            pending.append(d.publish("photos", {**photo, "committed_at": committed_at}))
            for m in dets:
                committed[sighting_key(d.drone_id, m["image"], m["bbox"])] = committed_at
                pending.append(d.publish("detections", {**m, "committed_at": committed_at}))
    publish_s = time.monotonic() - wall_t0
    for info in pending:
        info.wait_for_publish(60)
    return committed, publish_s


def drain(reader: EventReader, proc: subprocess.Popen, log: Path, committed: dict, deadline: float) -> None:
    """Wait until every detection, then every crop, reached the event stream (or the deadline)."""
    while time.monotonic() < deadline and not all(k in reader.seen for k in committed):
        if proc.poll() is not None:
            raise RuntimeError(f"edgetile station exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    while time.monotonic() < deadline and not all(k in reader.crop for k in committed):
        time.sleep(0.2)


def run_station(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    photos_each = int(args.minutes * 60 / args.period)
    area_e = 250.0 * (args.drones - 1) + 300.0  # the sectors side by side
    area_n = 60.0 * math.ceil(20.0 * photos_each / 300.0)  # the lanes flown (see SimulatedDrone.position)
    people = [(rng.uniform(0, area_n), rng.uniform(0, area_e)) for _ in range(args.people)]
    with tempfile.TemporaryDirectory(prefix="bench-station-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker").start()
        apis = [DaemonApi(f"drone-{chr(ord('a') + i)}") for i in range(args.drones)]
        drones = [SimulatedDrone(i, apis[i].url, people, args.seed + 1 + i) for i in range(args.drones)]
        proc = reader = sampler = None
        try:
            proc, port, log = start_station(work, broker.port, args.station_arg or [])
            reader = EventReader("127.0.0.1", port)
            if not reader.ready.wait(15):
                raise RuntimeError(
                    "the station's event stream sent nothing in 15 s (not even its retry line)"
                )
            for d in drones:
                d.connect(broker.port)
            sampler = RssSampler(proc.pid)
            rss_start = vm_rss_mb(proc.pid)
            committed, publish_s = fly(drones, photos_each, args)
            drain(reader, proc, log, committed, time.monotonic() + args.drain_s)
            time.sleep(2.0)  # settle before the end figure
            rss_end = vm_rss_mb(proc.pid)
            peak = sampler.close()
            arrived = [reader.seen[k] - t for k, t in committed.items() if k in reader.seen]
            crops = [reader.crop[k] - t for k, t in committed.items() if k in reader.crop]
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/api/review/counts")
            counts = json.loads(c.getresponse().read())
            c.close()
            return {
                "drones": args.drones,
                "photos": photos_each * args.drones,
                "detections": len(committed),
                "simulated_minutes": args.minutes,
                "speed": args.speed,
                "publish_s": round(publish_s, 1),
                "arrived": len(arrived),
                "missing": len(committed) - len(arrived),
                "latency_commit_to_browser": summary_ms(arrived),
                "latency_commit_to_crop_in_browser": summary_ms(crops),
                "crops_missing": len(committed) - len(crops),
                "rss_mb": {
                    "start": None if rss_start is None else round(rss_start, 1),
                    "peak": round(peak, 1),
                    "end": None if rss_end is None else round(rss_end, 1),
                },
                "events": reader.events,
                "event_stream_error": reader.error,
                "daemon_requests": [a.counts for a in apis],
                "station_counts": counts,
            }
        finally:
            if sampler is not None:
                sampler.close()
            if reader is not None:
                reader.close()
            for d in drones:
                d.close()
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
            for a in apis:
                a.close()
            broker.stop()


def search_sightings(n: int, seed: int) -> list[Sighting]:
    """n sightings of a search in time order: 3 drones, people and false positives over 1.5 km x 1.5 km."""
    rng = random.Random(seed)
    people = [(rng.uniform(0, 1500), rng.uniform(0, 1500)) for _ in range(max(1, n // 10))]
    out = []
    t = 1_780_000_000.0
    for key in range(1, n + 1):
        t += rng.uniform(0.0, 0.5)
        if rng.random() < 0.6:
            north, east = rng.choice(people)
        else:
            north, east = rng.uniform(0, 1500), rng.uniform(0, 1500)
        error = rng.uniform(2.0, 8.0) if rng.random() < 0.95 else rng.uniform(20, 300)
        lat, lon = to_latlon(north + rng.gauss(0, error / 1.41), east + rng.gauss(0, error / 1.41))
        out.append(Sighting(key, key // 3, "abc"[key % 3], t, lat, lon, error, "person"))
    return out


def run_grouping(args: argparse.Namespace) -> dict:
    stream = search_sightings(args.sightings, args.seed)
    g = FindGrouper(window_s=1800.0)
    t0 = time.perf_counter()
    ids = [g.add(s) for s in stream]
    add_s = time.perf_counter() - t0
    stored = [(s, f) for s, f in zip(stream, ids)]
    random.Random(0).shuffle(stored)
    r = FindGrouper(window_s=1800.0)
    t0 = time.perf_counter()
    for s, f in stored:
        r.restore(s, f, set())
    restore_s = time.perf_counter() - t0
    return {
        "sightings": len(stream),
        "finds": len(set(ids)),
        "add_s": round(add_s, 3),
        "add_per_s": round(len(stream) / add_s),
        "restore_s": round(restore_s, 3),
        "restore_per_s": round(len(stream) / restore_s),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drones", type=int, default=3, help="simulated drones (default 3)")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated flight time (default 10)")
    p.add_argument("--period", type=float, default=2.0, help="simulated seconds between photos (default 2)")
    p.add_argument("--speed", type=float, default=10.0, help="times faster than real time (default 10)")
    p.add_argument("--people", type=int, default=150, help="people in the search area (default 150)")
    p.add_argument(
        "--drain-s", type=float, default=120.0, help="longest wait for the last events (default 120)"
    )
    p.add_argument("--sightings", type=int, default=20000, help="sightings for the grouping (default 20000)")
    p.add_argument("--grouping-only", action="store_true", help="only the grouping's throughput")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--station-arg", action="append", help="one more argument for edgetile station (repeat the option)"
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "grouping": run_grouping(args),
    }
    print(json.dumps({"grouping": out["grouping"]}), flush=True)
    if not args.grouping_only:
        out["station"] = run_station(args)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
