"""The review page of `edgetile station` in a real browser, fed by two real drones' daemons.

A real Mosquitto broker, two real `edgetile serve --geo --mqtt` daemons (drone ids D1 and D2) with the
tests' red-blob model on watched folders of posed drone photos, and a real `edgetile station` that
gathers their detections. The same 'person' is photographed by both drones (D1's photo and D2's
photo, 32 m apart, see the same ground point), so the station makes one find of two sightings.

D2's first life advertises an API address where nothing listens (its radio link is down): its
detections arrive over MQTT, but the station cannot fetch their crops or its photo. The page must
then show the find's coordinates instead of a crop and a one-line message instead of the photo; when
D2 comes back at the advertised address (the same state folder, so the same photos), the crop fills
in through the station's `crop` event and the photo through the page's retries, without a reload.
The operator then flags the shared find with the keyboard and splits D2's sighting from it.

docs/img/station.png is this test's picture of the map:
    EDGETILE_SHOTS=docs/img python -m pytest tests/test_station_page.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from geo_photos import dji_values, write_photo
from mqtt_broker import Broker, Subscriber, free_port
from review_browser import AGL, LAT0, LON0, PF, Browser, browser_missing, person_field
from serve_process import ServeProcess
from station_process import StationProcess

from onnx_models import red_blob_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or ""),
]

M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = M_PER_DEG_LAT * np.cos(np.radians(LAT0))
GSD_M = AGL / PF  # 0.1 m per pixel: the nadir photos of review_browser

# D2's photo is taken 32 m north and 20 m east of D1's first: a ground point at pixel (x, y) of D1's
# photo is at (x - 200, y + 320) of D2's. Blobs are on the model's 8-pixel cells; a dimmer red scores lower.
D2_NORTH_M, D2_EAST_M = 32.0, 20.0
# One person seen by both drones: D2 places them 4.5 m off D1's place (32 px east, 32 px north), as two
# drones' position errors would, within the grouping's reach (about 7 m for errors of 2.5 m each).
SHARED_D1, SHARED_D2 = (304, 40, 255), (136, 328, 112)
ONLY_D2 = (400, 64, 120)  # a person only D2 saw (its crop waits for D2's radio link)
ONLY_D1 = (160, 296, 255)  # in D1's second photo, 60 m further north


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def posed_photo(path: Path, blobs, seed: int, north_m: float = 0.0, east_m: float = 0.0) -> Path:
    xmp = dji_values(rel_alt=AGL, abs_alt=180.0, pitch=-90.0, yaw=0.0, focal_px=PF)
    lat = LAT0 + north_m / M_PER_DEG_LAT
    lon = LON0 + east_m / M_PER_DEG_LON
    return write_photo(path, person_field(blobs, seed=seed), lat=lat, lon=lon, xmp=xmp)


def daemon(tmp_path: Path, model, drone: str, broker: Broker, *extra) -> tuple[ServeProcess, Path]:
    """A drone's `edgetile serve` on its own watched folder, publishing to the broker as `drone`."""
    drop = tmp_path / drone / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    args = ["--model", model, "--tile", "256", "--watch", drop, "--state", tmp_path / drone / "state"]
    args += ["--settle", "0", "--poll", "0.1", "--geo", "--ground-alt", "130"]
    args += ["--mqtt", f"127.0.0.1:{broker.port}", "--drone-id", drone, *extra]
    return ServeProcess(tmp_path, *args).start(), drop


def finds(station: StationProcess) -> list[dict]:
    return station.json("/api/review/detections?limit=1000")["items"]


def by_drones(items: list[dict]) -> dict[tuple[str, ...], dict]:
    return {tuple(sorted(f["drones"])): f for f in items}


def only_the_station_was_asked(b: Browser, station: StationProcess) -> None:
    urls = [r["url"] for r in b.network() if not r["url"].startswith("chrome://")]
    strays = [u for u in urls if not u.startswith((station.url + "/", "blob:" + station.url, "data:"))]
    assert strays == [], f"requests to other hosts than the station: {strays}"


def save_shot(b: Browser, tmp_path: Path, name: str) -> Path:
    """A screenshot in tmp_path; also, palette-reduced, in $EDGETILE_SHOTS when set (docs/img)."""
    path = tmp_path / name
    b.screenshot(path)
    out = os.environ.get("EDGETILE_SHOTS")
    if out:
        from PIL import Image

        Image.open(path).convert("RGB").quantize(colors=192, dither=Image.Dither.NONE).save(
            Path(out) / name, optimize=True
        )
    return path


def test_two_drones_one_find_on_the_station_page(tmp_path, model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    broker = Broker(tmp_path / "broker").start()
    station = d1 = d2 = None
    b = None
    reviews = None
    try:
        station = StationProcess(
            tmp_path, "--mqtt", f"127.0.0.1:{broker.port}", "--state", tmp_path / "station"
        ).start()
        reviews = Subscriber(broker.port, "edgetile/reviews", client_id="test-reviews")
        # D2's radio link is down: it listens on one port and advertises another, where nothing listens.
        d2_api_port = free_port()
        d1, drop1 = daemon(tmp_path, model, "D1", broker)
        d2, drop2 = daemon(
            tmp_path, model, "D2", broker, "--advertise-url", f"http://127.0.0.1:{d2_api_port}"
        )
        # one photo after the other, so that the sightings' time order is known: D1, D2, D1
        posed_photo(drop1 / "DJI_0001.JPG", [SHARED_D1], seed=1)
        d1.wait_for(lambda: d1.json("/api/review/counts")["total"] == 1, what="D1's first detection")
        posed_photo(
            drop2 / "DJI_0201.JPG", [SHARED_D2, ONLY_D2], seed=2, north_m=D2_NORTH_M, east_m=D2_EAST_M
        )
        d2.wait_for(lambda: d2.json("/api/review/counts")["total"] == 2, what="D2's two detections")
        posed_photo(drop1 / "DJI_0002.JPG", [ONLY_D1], seed=3, north_m=60.0)
        station.wait_for(
            lambda: sorted(len(f["sightings"]) for f in finds(station)) == [1, 1, 2],
            what="three finds on the station, one of them seen by both drones",
        )
        held = by_drones(finds(station))
        assert sorted(held) == [("D1",), ("D1", "D2"), ("D2",)], held
        shared, only2, only1 = held[("D1", "D2")], held[("D2",)], held[("D1",)]
        assert [s["drone_id"] for s in shared["sightings"]] == ["D1", "D2"]  # time order
        assert shared["drone_id"] == "D1"  # D1's red is brighter: its sighting is the best
        assert only2["crop_ready"] is False, "D2's crops cannot have been fetched: its API is unreachable"
        drones = {d["id"]: d for d in station.json("/api/review/map")["drones"]}
        assert sorted(drones) == ["D1", "D2"] and drones["D1"]["color"] != drones["D2"]["color"]
        colour = {k: v["color"] for k, v in drones.items()}

        b = Browser(operator="ana")
        b.open(station.url)
        b.wait("s.mode === 'station' && s.items.length === 3 && s.live", what="the station's three finds")
        assert b.driver.find_element(By.CSS_SELECTOR, "header h1").text == "edgetile station"
        assert not b.driver.find_element(By.ID, "draw-button").is_displayed()
        # each find's card: its drones as chips in the drones' colours, its number of sightings
        chips = b.driver.execute_script(
            "return [...document.querySelectorAll('#queue-list li')].map((li) => [li.dataset.id,"
            " [...li.querySelectorAll('.chip')].map((c) => [c.textContent, getComputedStyle(c).backgroundColor]),"
            " li.querySelector('.count').textContent])"
        )
        rgb = {
            k: "rgb({}, {}, {})".format(*(int(v[i : i + 2], 16) for i in (1, 3, 5)))
            for k, v in colour.items()
        }
        seen = {fid: ([c for c, _ in cs], [col for _, col in cs], count) for fid, cs, count in chips}
        assert seen[shared["id"]] == (["D1", "D2"], [rgb["D1"], rgb["D2"]], "2 sightings")
        assert seen[only2["id"]] == (["D2"], [rgb["D2"]], "1 sighting")

        # the photo view of the shared find: its best sighting's photo (D1's), both sightings listed
        b.driver.find_element(By.CSS_SELECTOR, f"#queue-list li[data-id='{shared['id']}']").click()
        b.key("p")
        b.wait("s.view === 'photo' && s.photo && s.photo.loaded && s.photo.image", what="D1's photo")
        listed = b.driver.execute_script(
            "return [...document.querySelectorAll('#sighting-list li')].map((li) => [li.dataset.id,"
            " li.querySelector('.chip').textContent, !!li.querySelector('button.split')])"
        )
        assert listed == [[s["id"], s["drone_id"], True] for s in shared["sightings"]]
        d1_sighting, d2_sighting = (s["id"] for s in shared["sightings"])
        assert b.state("s.photo.selected") == d1_sighting
        assert b.state("s.photoNote") == ""
        # D2's sighting: its photo is on D2, out of reach; a one-line message, its box highlighted anyway
        b.driver.find_element(By.CSS_SELECTOR, f"#sighting-list li[data-id='{d2_sighting}']").click()
        b.wait(f"s.photo.selected === {d2_sighting!r} && s.photoNote", what="the out-of-range message")
        note = b.driver.find_element(By.ID, "photo-note")
        assert note.is_displayed() and "D2" in note.text and "\n" not in note.text
        assert station.request(f"/images/{shared['sightings'][1]['outcome_id']}")[0] == 502
        assert b.state("s.photo.image") is False
        assert b.state(f"Object.keys(s.photo.boxes).includes({d2_sighting!r})")
        b.screenshot(tmp_path / "photo-out-of-range.png")

        # the find only D2 saw: its coordinates and a placeholder, not a broken image
        b.key(Keys.ESCAPE)
        b.driver.find_element(By.CSS_SELECTOR, f"#queue-list li[data-id='{only2['id']}']").click()
        b.wait(f"s.placeholder === {only2['id']!r}", what="the placeholder of D2's find")
        assert b.driver.find_element(By.ID, "crop").get_attribute("src") is None
        waiting = b.driver.find_element(By.ID, "crop-empty").text
        assert f"{only2['lat']:.6f}, {only2['lon']:.6f}" in waiting, waiting
        b.screenshot(tmp_path / "crop-placeholder.png")

        # D2's link comes back: the same daemon (same state) at the address it advertised
        d2.terminate()
        d2 = ServeProcess(tmp_path, *d2.args[: d2.args.index("--port")], "--port", d2_api_port).start()
        b.wait(
            f"s.shown === {only2['id']!r} && s.placeholder === null",
            timeout=90,
            what="the crop filled in by the station's crop event",
        )
        assert b.driver.find_element(By.ID, "crop").get_attribute("src").startswith("blob:")
        # ...and the photo of D2's sighting, asked again by the page, arrived in the background
        b.wait("s.photo.image === true && s.photoNote === ''", timeout=30, what="D2's photo")

        # the map: each drone's colour on its photos and sightings, its last position, the legend
        b.key("m")
        b.wait("s.mapReady && s.overlaysLoaded === 3", timeout=60, what="the map with the three photos")
        assert sorted(b.state("s.footprintDrones").values()) == ["D1", "D1", "D2"]
        markers = b.state("s.markers")
        assert sorted(markers) == sorted(f["id"] for f in (shared, only1, only2))
        assert {k: (v["drone"], v["color"]) for k, v in markers[shared["id"]]["sightings"].items()} == {
            d1_sighting: ("D1", colour["D1"]),
            d2_sighting: ("D2", colour["D2"]),
        }
        drones = {d["id"]: d for d in station.json("/api/review/map")["drones"]}
        placed = b.state("s.droneMarkers")
        for name in ("D1", "D2"):
            last = drones[name]["last"]
            assert (placed[name]["lat"], placed[name]["lon"]) == (last["lat"], last["lon"])
            assert placed[name]["color"] == colour[name] and placed[name]["label"].startswith(f"{name} · ")
            assert " s ago" in placed[name]["label"] or " min ago" in placed[name]["label"]
        # D1's last photo was its second, 60 m north of its first; D2's was its only one
        assert placed["D1"]["lat"] > placed["D2"]["lat"] > LAT0
        legend = b.driver.find_element(By.CSS_SELECTOR, ".legend").text
        assert "D1 online" in legend and "D2 online" in legend, legend
        # the legend's words match the picture: each drone's marker is a square turned 45 degrees
        assert "a diamond is where a drone was last" in " ".join(legend.split()), legend
        turns = b.driver.execute_script(
            "return [...document.querySelectorAll('.drone-marker span')].map((e) => {"
            " const m = new DOMMatrix(getComputedStyle(e).transform);"
            " return Math.round(Math.atan2(m.b, m.a) * 180 / Math.PI) })"
        )
        assert turns == [45, 45], turns
        # the picture for docs/review.md
        time.sleep(1.5)  # the photos' images are placed when each has decoded: a picture, not a check
        save_shot(b, tmp_path, "station.png")

        # a decision by keyboard applies to the find, and goes out once
        b.key("1")
        b.driver.find_element(By.CSS_SELECTOR, f"#queue-list li[data-id='{shared['id']}']").click()
        b.wait(f"s.current === {shared['id']!r}")
        b.key("f")
        b.wait("s.pending.length === 0 && s.counts.flagged === 1", what="the flag saved")
        now = {f["id"]: f for f in finds(station)}
        assert (now[shared["id"]]["status"], now[shared["id"]]["operator"]) == ("flagged", "ana")
        history = station.json(f"/api/review/detections/{d2_sighting}/history")["history"]
        assert [h["status"] for h in history] == ["flagged"]
        (message, _), *_ = reviews.collect(1, "edgetile/reviews")
        assert message["id"] == shared["id"] and message["status"] == "flagged"
        b.wait(f"s.markers[{shared['id']!r}].status === 'flagged'", what="the find's ring recoloured")

        # split: D2's sighting was not the same person after all
        b.driver.find_element(By.CSS_SELECTOR, f"#queue-list li[data-id='{shared['id']}']").click()
        b.key("p")
        b.wait(
            f"s.photo && s.photo.find === {shared['id']!r} && s.photo.loaded", what="the shared find's photo"
        )
        b.driver.find_element(
            By.CSS_SELECTOR, f"#sighting-list li[data-id='{d2_sighting}'] button.split"
        ).click()
        split = b.wait("s.lastSplit", what="the split")
        assert (split["from"], split["sighting"]) == (shared["id"], d2_sighting)
        b.wait("s.items.length === 4", what="the new find in the queue")
        now = {f["id"]: f for f in finds(station)}
        assert [s["id"] for s in now[shared["id"]]["sightings"]] == [d1_sighting]
        assert [s["id"] for s in now[split["find"]]["sightings"]] == [d2_sighting]
        assert b.driver.execute_script("return document.querySelectorAll('#sighting-list li').length") == 1
        assert (
            b.driver.execute_script("return document.querySelectorAll('#sighting-list button.split').length")
            == 0
        )
        assert b.state(f"s.items.find((d) => d.id === {shared['id']!r}).sightings.length") == 1

        # live on the map: D1 flies on (its new position, its new photo), then lands (offline)
        b.key("m")
        before = b.state("s.droneMarkers.D1")
        posed_photo(drop1 / "DJI_0003.JPG", [], seed=4, north_m=90.0)
        b.wait(
            f"s.droneMarkers.D1.lat > {before['lat']} && s.footprints.length === 4",
            what="D1's new position and photo on the map",
        )
        b.wait("s.overlaysLoaded === 4", what="D1's new photo drawn in its footprint")
        assert b.state("s.footprintDrones")[str(b.state("s.footprints[3]"))] == "D1"
        d1.terminate()
        b.wait("!s.droneMarkers.D1.online && s.droneMarkers.D1.label.endsWith('offline')", what="D1 offline")
        legend = b.driver.find_element(By.CSS_SELECTOR, ".legend").text
        assert "D1 offline" in legend and "D2 online" in legend, legend
        only_the_station_was_asked(b, station)
        assert b.state("s.errors") == []
    finally:
        for closing in (b, reviews):
            if closing is not None:
                closing.close()
        for p in (d1, d2, station):
            if p is not None:
                p.kill()
        broker.stop()
