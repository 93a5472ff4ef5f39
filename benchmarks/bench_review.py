"""The review page under a real load, measured in Chromium: 5,000 detections over 500 photos.

A real `edgetile serve --geo` processes 500 drone photos (10 'people' each, the tests' red-blob
model) from a watched folder; then, in headless Chromium driven by Selenium, with times taken inside
the page (performance.now(), so the WebDriver's own latency is not counted):

* queue open: from navigation start to the queue listed, and to the first crop on screen;
* keystroke to the next crop on screen (`j`, and `c` which also saves a decision);
* the map: footprints, markers and tracks drawn; then pans and wheel zooms, each from the input
  event to the frame after Leaflet's moveend, and the long tasks (> 50 ms) the page ran meanwhile.

    python benchmarks/bench_review.py [--photos 500] [--per-photo 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from geo_photos import dji_values, write_photo  # noqa: E402
from review_browser import AGL, LAT0, LON0, PF, Browser, person_field  # noqa: E402
from serve_process import ServeProcess  # noqa: E402

from onnx_models import red_blob_model  # noqa: E402

M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = 62_650.0  # at 55.75 N


def survey(folder: Path, photos: int, per_photo: int) -> None:
    """Photos on a lawnmower grid 60 m apart, each with per_photo red blobs on the model's cells."""
    cols = max(1, int(round(photos**0.5 * 1.25)))
    for n in range(photos):
        row, col = divmod(n, cols)
        blobs = [
            (32 + 40 * (i % 10) + 8 * (n % 3), 48 + 64 * (i // 10) + 8 * (n % 4)) for i in range(per_photo)
        ]
        xmp = dji_values(rel_alt=AGL, abs_alt=180.0, pitch=-90.0, yaw=0.0, focal_px=PF)
        lat = LAT0 + row * 60 / M_PER_DEG_LAT
        lon = LON0 + col * 60 / M_PER_DEG_LON
        write_photo(folder / f"DJI_{n:04d}.JPG", person_field(blobs, seed=n), lat=lat, lon=lon, xmp=xmp)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p95_ms": round(pct(values, 0.95), 1),
        "max_ms": round(max(values), 1),
    }


def keystrokes(b: Browser, key: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        before = b.state("s.timing.shownAt")
        b.key(key)
        b.wait(
            f"s.shown === s.current && s.timing.shownAt > {before} && s.timing.shownAt >= s.timing.keyAt",
            what=f"the crop after {key!r}",
        )
        out.append(b.state("s.timing.shownAt - s.timing.keyAt"))
    return out


def map_moves(b: Browser) -> dict:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    b.driver.execute_script(
        """
        window.__inputAt = 0; window.__long = [];
        const el = document.getElementById('ground-map');
        for (const t of ['wheel', 'mouseup']) el.addEventListener(t, () => (window.__inputAt = performance.now()), true);
        new PerformanceObserver((l) => window.__long.push(...l.getEntries().map((e) => e.duration)))
          .observe({ type: 'longtask' });
        """
    )
    area = b.driver.find_element(By.ID, "ground-map")
    settle: dict[str, list[float]] = {"pan": [], "zoom": []}

    def measure(kind: str, act) -> None:
        before = b.state("s.timing.mapSettledAt")
        act()
        b.wait(
            f"s.timing.mapSettledAt > {before} && window.__inputAt > 0", what=f"the map to settle ({kind})"
        )
        time.sleep(0.4)  # let a wheel zoom's animation and any inertia finish before the next move
        settle[kind].append(
            b.driver.execute_script("return window.edgetileReview.timing.mapSettledAt - window.__inputAt")
        )

    for i in range(6):
        dx, dy = (160, 90) if i % 2 == 0 else (-160, -90)
        measure(
            "pan",
            lambda dx=dx, dy=dy: (
                ActionChains(b.driver)
                .move_to_element(area)
                .click_and_hold()
                .move_by_offset(dx // 2, dy // 2)
                .move_by_offset(dx // 2, dy // 2)
                .release()
                .perform()
            ),
        )
    for delta in (-300, -300, 300, 300, -300, 300):
        measure(
            "zoom",
            lambda delta=delta: ActionChains(b.driver).scroll_from_origin(_origin(area), 0, delta).perform(),
        )
    long_tasks = b.driver.execute_script("return window.__long")
    return {
        "pan": summary(settle["pan"]),
        "zoom": summary(settle["zoom"]),
        "long_tasks": len(long_tasks),
        "longest_task_ms": round(max(long_tasks, default=0), 1),
    }


def _origin(area):
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    return ScrollOrigin.from_element(area)


def server_times(d: ServeProcess) -> dict:
    """The daemon's own answer times for what the page asks most (the JSON twins, over HTTP)."""

    def timed(path: str, n: int = 3) -> float:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            status, _, _ = d.request(path, timeout=300)
            out.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {path}: HTTP {status}")
        return round(statistics.median(out), 1)

    return {
        "detections_page_200_ms": timed("/api/review/detections?limit=200"),
        "detections_page_1000_ms": timed("/api/review/detections?limit=1000&order=time"),
        "counts_ms": timed("/api/review/counts"),
        "map_ms": timed("/api/review/map", n=1),
        "crop_ms": timed("/api/review/crops/1-0"),
    }


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {len(__import__('os').sched_getaffinity(0))} CPUs, {platform.system()} {platform.release()}, {chromium}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--per-photo", type=int, default=10)
    ap.add_argument("--keys", type=int, default=60, help="keystrokes measured for each of j and c")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args(argv)
    result: dict = {"machine": machine(), "photos": args.photos}
    with tempfile.TemporaryDirectory(prefix="edgetile-bench-review-") as tmp:
        work = Path(tmp)
        drop = work / "drop"
        drop.mkdir()
        model = red_blob_model(work / "red.onnx")
        t0 = time.monotonic()
        survey(drop, args.photos, args.per_photo)
        d = ServeProcess(
            work,
            *("--model", model, "--tile", "256", "--watch", drop, "--state", work / "state"),
            *("--settle", "0", "--poll", "0.5", "--geo", "--ground-alt", "130", "--queue-batch", "16"),
        ).start()
        b = None
        try:
            d.wait_for(
                lambda: len(d.all_pages("/detections")) == args.photos,
                timeout=3600,
                interval=2,
                what="every photo processed",
            )
            counts = d.json("/api/review/counts")
            result["detections"] = counts["total"]
            result["fill_s"] = round(time.monotonic() - t0, 1)
            print(
                f"{counts['total']} detections over {args.photos} photos in {result['fill_s']} s", flush=True
            )

            b = Browser(size=(1400, 900), operator="bench")
            opens = []
            for i in range(3):
                if i == 0:
                    b.open(d.url, ready=False)
                else:
                    b.driver.refresh()
                b.wait("s.ready && s.shown !== null && s.shown === s.current", timeout=120, what="the queue")
                opens.append(b.state("[s.timing.readyAt, s.timing.shownAt]"))
            result["queue_open"] = {
                "listed_ms": [round(o[0]) for o in opens],
                "first_crop_ms": [round(o[1]) for o in opens],
            }
            print("queue open", result["queue_open"], flush=True)
            result["key_next"] = summary(keystrokes(b, "j", args.keys))
            result["key_confirm"] = summary(keystrokes(b, "c", args.keys))
            print("keys", result["key_next"], result["key_confirm"], flush=True)

            b.key("m")
            b.wait("s.mapReady", timeout=300, what="the map")
            result["map"] = {
                "ready_ms": round(b.state("s.timing.mapReadyAt - s.timing.mapAskedAt")),
                "markers_shown_ms": round(b.state("s.timing.mapMarkersAt - s.timing.mapAskedAt")),
                "map_json_ms": round(b.state("s.timing.mapDataAt - s.timing.mapAskedAt")),
                "footprints": b.state("s.footprints.length"),
                "markers": b.state("Object.keys(s.markers).length"),
                "tracks": b.state("s.tracks"),
            }
            result["map"].update(map_moves(b))
            result["map"]["overlays_loaded"] = b.state("s.overlaysLoaded")
            print("map", result["map"], flush=True)
            result["errors"] = b.state("s.errors")
            result["server"] = server_times(d)
            print("server", result["server"], flush=True)
        finally:
            if b is not None:
                b.close()
            d.kill()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
