"""The review page's screenshots for docs/review.md and the README, taken in Chromium.

A survey of 12 overlapping nadir photos is cut from one synthetic landscape (fields, a track, trees,
people in red and orange jackets, a red tent), written with a DJI pose, and processed by a real
`edgetile serve --geo` with the tests' red-blob model; an operator then reviews a few detections with
the keyboard and the queue, the photo view and the map are saved as PNGs (palette-reduced to stay small).

    python benchmarks/review_screenshots.py --out docs/img
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from geo_photos import dji_values, write_photo  # noqa: E402
from review_browser import Browser  # noqa: E402
from serve_process import ServeProcess  # noqa: E402

from onnx_models import red_blob_model  # noqa: E402

W, H, FOCAL, AGL = 1024, 768, 800.0, 50.0  # 6.25 cm per pixel, a 64 x 48 m footprint
GSD = AGL / FOCAL
LAT0, LON0 = 55.75, 37.62
M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = M_PER_DEG_LAT * np.cos(np.radians(LAT0))
COLS, ROWS, STEP_X, STEP_Y = 4, 3, 820, 600  # about 20% overlap along and across the flight lines


def landscape(rng: np.random.Generator) -> np.ndarray:
    """A BGR landscape of (ROWS-1)*STEP_Y+H by (COLS-1)*STEP_X+W pixels, north up."""
    h, w = (ROWS - 1) * STEP_Y + H, (COLS - 1) * STEP_X + W

    def noise(cells: int, size=(h, w)) -> np.ndarray:
        small = rng.random((max(2, size[0] // cells), max(2, size[1] // cells))).astype(np.float32)
        return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)

    meadow = np.array([70, 130, 95], np.float32)  # BGR
    dry = np.array([95, 150, 160], np.float32)
    mix = np.clip(noise(300) * 1.3 - 0.15, 0, 1)[..., None]
    img = meadow * (1 - mix) + dry * mix
    img *= (0.85 + 0.3 * noise(12))[..., None]
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    # a dirt track winding north to south
    ys = np.arange(h)
    xs = (w * 0.45 + 260 * np.sin(ys / 420.0) + 90 * np.sin(ys / 130.0)).astype(int)
    for y, x in zip(ys, xs):
        img[y, max(0, x - 22) : x + 22] = (95, 125, 150) + rng.normal(
            0, 8, (len(range(max(0, x - 22), x + 22)), 3)
        )
    # trees: dark crowns with a shadow to the south-east
    for _ in range(260):
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(14, 34))
        if abs(cx - xs[min(cy, h - 1)]) < r + 30:
            continue
        cv2.circle(img, (cx + r // 2, cy + r // 2), r, (35, 60, 45), -1)
        cv2.circle(img, (cx, cy), r, (40, 85, 50), -1)
        cv2.circle(img, (cx - r // 4, cy - r // 4), r // 2, (50, 105, 60), -1)
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (3, 3), 0)
    # people: a jacket of 10 x 14 px (60 x 90 cm), a head, a shadow; redness sets the model's score
    people = [
        (500, 300, (20, 20, 225)),
        (1250, 820, (30, 40, 210)),
        (2210, 420, (40, 90, 235)),
        (3010, 1320, (25, 30, 200)),
        (860, 1500, (60, 100, 210)),
        (1980, 1660, (30, 30, 190)),
        (2640, 910, (70, 110, 220)),
        (3300, 300, (20, 25, 215)),
    ]
    for x, y, colour in people:
        cv2.rectangle(img, (x + 3, y + 4), (x + 15, y + 20), (40, 60, 50), -1)
        cv2.rectangle(img, (x, y), (x + 10, y + 14), colour, -1)
        cv2.circle(img, (x + 5, y - 3), 3, (140, 170, 215), -1)
    # false alarms: a red tent, a rusty roof
    cv2.rectangle(img, (1600, 1180), (1632, 1204), (35, 35, 200), -1)
    cv2.rectangle(img, (420, 1700), (476, 1744), (60, 80, 150), -1)
    return img


def survey(folder: Path) -> list[Path]:
    world = landscape(np.random.default_rng(7))
    paths = []
    for row in range(ROWS):
        for col in range(COLS):
            x0, y0 = col * STEP_X, row * STEP_Y
            photo = world[y0 : y0 + H, x0 : x0 + W]
            cx, cy = x0 + W / 2 - world.shape[1] / 2, y0 + H / 2 - world.shape[0] / 2
            lat = LAT0 - cy * GSD / M_PER_DEG_LAT
            lon = LON0 + cx * GSD / M_PER_DEG_LON
            xmp = dji_values(rel_alt=AGL, abs_alt=180.0, pitch=-90.0, yaw=0.0, focal_px=FOCAL)
            path = folder / f"DJI_{row * COLS + col + 101:04d}.JPG"
            write_photo(path, photo, lat=lat, lon=lon, xmp=xmp)
            paths.append(path)
    return paths


def zoom_on_selection(b: Browser, steps: int = 1) -> None:
    """Wheel-zoom the photo view around the ring of the selected box, as an operator would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    x, y = b.driver.execute_script(
        "const ring = [...document.querySelectorAll('#photo-map path')]"
        ".find((p) => p.getAttribute('stroke') === '#00e5ff' && !p.classList.contains('leaflet-interactive'));"
        "const r = ring.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
    )
    for _ in range(steps):
        ActionChains(b.driver).scroll_from_origin(
            ScrollOrigin.from_viewport(int(x), int(y)), 0, -120
        ).perform()
        time.sleep(0.6)


def save_small(src: Path, dest: Path, limit: int = 300_000) -> int:
    """The screenshot as an adaptive-palette PNG: UI and photos stay legible, the file small."""
    img = Image.open(src).convert("RGB")
    img.save(dest, optimize=True)
    for colours in (256, 192, 128):
        if dest.stat().st_size <= limit:
            break
        img.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            dest, optimize=True
        )
    return dest.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNGs")
    ap.add_argument("--raw", type=Path, default=None, help="also keep the full-colour screenshots here")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgetile-shots-") as tmp:
        work = Path(tmp)
        drop = work / "drop"
        drop.mkdir()
        model = red_blob_model(work / "red.onnx")
        photos = survey(drop)
        d = ServeProcess(
            work,
            *("--model", model, "--tile", "256", "--watch", drop, "--state", work / "state"),
            *("--settle", "0", "--poll", "0.1", "--geo", "--ground-alt", "130"),
        ).start()
        b = Browser(size=(1280, 780), operator="ana")
        try:
            d.wait_for(
                lambda: len(d.all_pages("/detections")) == len(photos), timeout=300, what="every photo"
            )
            b.open(d.url)
            b.wait("s.shown === s.current && s.current", what="the first crop")
            for key in "cjrfc":
                b.key(key)
                b.wait("s.shown === s.current && s.pending.length === 0")
            b.key("k")
            b.wait("s.shown === s.current")
            time.sleep(0.5)
            shots = {}
            b.screenshot(work / "queue.png")
            shots["review-queue.png"] = work / "queue.png"
            # the photo view on a person (the first of the landscape's, in the first photo)
            person = b.state(
                "s.items.find((d) => d.image.endsWith('DJI_0101.JPG') && Math.abs(d.bbox[0] - 500) < 20).id"
            )
            b.driver.execute_script(f"document.querySelector('li[data-id=\"{person}\"]').click()")
            b.wait(f"s.shown === {person!r}")
            b.key("p")
            b.wait("s.photo && s.photo.loaded", what="the photo view")
            time.sleep(0.5)
            zoom_on_selection(b)
            time.sleep(1.0)
            b.screenshot(work / "photo.png")
            shots["review-photo.png"] = work / "photo.png"
            b.key("m")
            b.wait(f"s.mapReady && s.overlaysLoaded === {len(photos)}", timeout=120, what="the map")
            time.sleep(1.5)
            b.screenshot(work / "map.png")
            shots["review-map.png"] = work / "map.png"
            for name, src in shots.items():
                if args.raw is not None:
                    args.raw.mkdir(parents=True, exist_ok=True)
                    (args.raw / name).write_bytes(src.read_bytes())
                size = save_small(src, args.out / name)
                print(f"{args.out / name}: {size / 1000:.0f} kB")
        finally:
            b.close()
            d.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
