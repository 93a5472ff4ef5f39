"""Nothing lost, nothing twice: the station and a drone killed with -9 mid-stream, the broker stopped and restarted.

Three real `edgetile serve` drones publish to a real Mosquitto broker (persistence on, as docs/station.md
tells a search team to run it); a real `edgetile station` records what they publish, and a real
Chromium has the station's page open from before the first kill to the end, never reloaded. Every
detection each drone lists in its own /api/review/detections arrives at the station exactly once,
every crop eventually, the person that two drones photographed is one find; the page, back through
its reconnections alone, shows every find of the station with its crop, that person's find with both
drones' chips; the operator's confirmation of it, typed on the page, is published once on
PREFIX/reviews, heard by a real subscriber, also across another kill -9 of the station.
"""

from __future__ import annotations

import json
import queue
import time
from collections import Counter

import pytest
from mqtt_broker import Broker, Subscriber, free_port
from review_browser import Browser, browser_missing
from serve_process import ServeProcess
from station_process import StationProcess, survey_photo, wait_until

from onnx_models import red_blob_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or ""),
]

FAST = ["--settle", "0", "--poll", "0.1", "--tile", "256"]
TOKEN = "drone-secret"
DRONES = ("alpha", "bravo", "charlie")
# Each drone flies its own strip (its photos 60 m apart, 38 m long: no overlap within a strip); only
# alpha's first photo and bravo's first photo overlap, 20 m apart, both showing the person P.
STRIP_EAST_M = {"alpha": 0.0, "bravo": 0.0, "charlie": 300.0}
STRIP_NORTH_M = {"alpha": 0.0, "bravo": 2000.0, "charlie": 0.0}
SPOTS = [(64, 64), (400, 96), (128, 296), (448, 320), (200, 200)]  # multiples of 8: one detection each


def photo(drops, name: str, n: int) -> None:
    """Photo n of a drone: one to three people, at places no other photo sees (but for P)."""
    if (name, n) == ("alpha", 0):
        survey_photo(drops[name] / "P_A.JPG", 0.0, [(256, 80), (64, 296)], seed=1)
        return
    if (name, n) == ("bravo", 0):
        survey_photo(drops[name] / "P_B.JPG", 20.0, [(256, 280)], seed=2)
        return
    blobs = [SPOTS[(n + k) % len(SPOTS)] for k in range(1 + n % 3)]
    north = STRIP_NORTH_M[name] + 60.0 * (n + 1) + (200.0 if name == "bravo" else 0.0)
    survey_photo(
        drops[name] / f"{name}_{n:04d}.JPG",
        north,
        blobs,
        seed=100 * DRONES.index(name) + n,
        east_m=STRIP_EAST_M[name],
    )


def drone_detections(d: ServeProcess) -> set[tuple[str, str]]:
    items = d.json("/api/review/detections?order=time&limit=1000", token=TOKEN)["items"]
    return {(d.drone_name, it["id"]) for it in items}


def station_sightings(st: StationProcess) -> list[tuple[str, str]]:
    return [(s["drone_id"], s["detection_id"]) for f in st.finds() for s in f["sightings"]]


def test_every_detection_arrives_once_through_kills_and_a_broker_restart(tmp_path):
    model = red_blob_model(tmp_path / "red.onnx")
    broker = Broker(tmp_path / "broker").start()
    (tmp_path / "drone.token").write_text(TOKEN + "\n")
    station_args = [
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-prefix",
        "search",
        "--state",
        tmp_path / "station",
        "--daemon-token-file",
        tmp_path / "drone.token",
        "--port",
        str(free_port()),
    ]
    drops = {}
    daemons: dict[str, ServeProcess] = {}
    for name in DRONES:
        drops[name] = tmp_path / f"drop-{name}"
        drops[name].mkdir()
        d = ServeProcess(
            tmp_path,
            "--model",
            model,
            "--watch",
            drops[name],
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
            "--port",
            str(free_port()),  # a restarted drone is where it was
        )
        d.drone_name = name
        daemons[name] = d
    station = StationProcess(tmp_path, *station_args)
    team = Subscriber(broker.port, "search/reviews", client_id="team-map")
    page = None
    try:
        station.start()
        station.wait_subscribed()  # from here the broker keeps the station's messages
        for d in daemons.values():
            d.start()
        # the operator's page, open from here to the end: never reloaded, it must recover by itself
        page = Browser(operator="ana").open(station.url)
        page.wait("s.mode === 'station' && s.live", what="the station's page, live")
        for n in range(2):
            for name in DRONES:
                photo(drops, name, n)
        # kill -9 the station as the first detections come in (the page has shown one)
        wait_until(lambda: len(station_sightings(station)) >= 1, 60, "a first sighting")
        page.wait("s.items.length >= 1", what="a first find on the page")
        station.kill()
        for n in range(2, 4):  # the drones go on meanwhile
            for name in DRONES:
                photo(drops, name, n)
        # and kill -9 a drone in the middle of its photos
        charlie = daemons["charlie"]
        for n in range(4, 8):
            photo(drops, "charlie", n)
        wait_until(lambda: len(drone_detections(charlie)) > 0, 60, "charlie's first results")
        charlie.kill()
        station = StationProcess(tmp_path, *station_args)
        station.start()
        daemons["charlie"] = charlie = ServeProcess(tmp_path, *charlie.args)
        charlie.drone_name = "charlie"
        charlie.start()
        # the broker goes away while the drones keep photographing, and comes back
        broker.stop()
        for name in DRONES:
            photo(drops, name, 8)
        time.sleep(2.0)
        broker.start()
        expected_photos = {"alpha": 5, "bravo": 5, "charlie": 9}

        def all_in():
            per_drone = {
                n: d.json("/detections?limit=1000", token=TOKEN)["items"] for n, d in daemons.items()
            }
            if any(len(per_drone[n]) != expected_photos[n] for n in DRONES):
                return None
            expected = set().union(*(drone_detections(d) for d in daemons.values()))
            got = station_sightings(station)
            return (expected, got) if set(got) == expected else None

        expected, got = wait_until(all_in, 180, "every drone's detections at the station", interval=0.5)
        counts = Counter(got)
        assert all(v == 1 for v in counts.values()), [k for k, v in counts.items() if v > 1]  # exactly once
        assert len(got) == len(expected) > 20

        # every crop, eventually
        def crops_done():
            s = station.status()["crops"]
            return s["pending"] == 0 and s

        crops = wait_until(crops_done, 180, "every crop fetched", interval=0.5)
        assert crops == {"pending": 0, "ready": len(expected), "given_up": 0, "refused": 0}
        assert all(f["crop_ready"] for f in station.finds())

        # the person photographed by alpha and bravo is one find, with a sighting of each
        finds = station.finds()
        (p,) = [f for f in finds if len(f["sightings"]) > 1]
        assert sorted(p["drones"]) == ["alpha", "bravo"] and len(p["sightings"]) == 2
        assert len(finds) == len(expected) - 1

        # the page, through its own reconnections, holds every find of the station, with its crop
        queue_order = page_holds(page, finds, p)

        # the operator goes back up the queue to that person's find and confirms it, all by keyboard:
        # one message on PREFIX/reviews
        for _ in range(len(queue_order) - 1 - queue_order.index(p["id"])):
            page.key("k")
        page.wait(f"s.current === {p['id']!r}", what="the find of both drones selected")
        page.key("c")
        page.wait("s.pending.length === 0 && s.counts.confirmed === 1", what="the confirmation saved")
        heard = [json.loads(team.get(30).payload)]
        assert (heard[0]["id"], heard[0]["status"], heard[0]["operator"]) == (p["id"], "confirmed", "ana")
        assert sorted(heard[0]["drones"]) == ["alpha", "bravo"] and len(heard[0]["sightings"]) == 2
        heard += listen(team, 4.0)
        assert len(heard) == 1, heard
        assert station.status()["outbox"]["waiting"] == 0

        # the station killed -9 again and restarted; the same find confirmed again (named by a
        # sighting) is not news: still one message, and the page hears the new decision
        station.kill()
        station = StationProcess(tmp_path, *station_args)
        station.start()
        status, again = station.post(
            "/api/review/decisions",
            {"id": p["sightings"][0]["id"], "status": "confirmed", "operator": "bob"},
        )
        assert status == 200 and (again["id"], again["operator"]) == (p["id"], "bob")
        page.wait(
            f"s.live && s.items.find((d) => d.id === {p['id']!r}).operator === 'bob'",
            what="the second confirmation on the page, after its reconnection",
        )
        heard += listen(team, 4.0)
        assert len(heard) == 1, heard
        assert station.status()["mqtt"]["bad_messages"] == 0
        assert [e for e in page.state("s.errors") if e.startswith("HTTP")] == []
    finally:
        if page is not None:
            page.close()
        station.kill()
        for d in daemons.values():
            d.kill()
        team.close()
        broker.stop()


def page_holds(page: Browser, finds: list[dict], p: dict) -> list[str]:
    """The page holds every find of the station and no other, each crop on screen as the operator goes
    down the queue with the keyboard (none left waiting), and the person ``p`` once, with both drones'
    chips. Returns the queue's find ids in order (the last one is selected)."""
    from selenium.webdriver.common.by import By

    page.wait(
        f"s.live && s.items.length === {len(finds)} && s.items.every((d) => d.crop_ready)"
        f" && s.counts && s.counts.total === {len(finds)}",
        60,
        f"the station's {len(finds)} finds on the page, every crop here",
    )
    rows = page.driver.execute_script(
        "return [...document.querySelectorAll('#queue-list li')].map((li) => [li.dataset.id,"
        " [...li.querySelectorAll('.chip')].map((c) => c.textContent)])"
    )
    assert sorted(fid for fid, _ in rows) == sorted(f["id"] for f in finds)
    assert [(fid, sorted(chips)) for fid, chips in rows if len(chips) > 1] == [(p["id"], ["alpha", "bravo"])]
    # each find's crop on screen, the operator going down the queue with the keyboard
    page.driver.find_element(By.CSS_SELECTOR, f"#queue-list li[data-id='{rows[0][0]}']").click()
    for k, (fid, _) in enumerate(rows):
        if k:
            page.key("j")
        page.wait(
            f"s.current === {fid!r} && s.shown === {fid!r} && s.placeholder === null",
            what=f"the crop of {fid} on screen",
        )
    return [fid for fid, _ in rows]


def listen(sub: Subscriber, seconds: float) -> list[dict]:
    """Whatever else arrives in the next ``seconds``."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(json.loads(sub.get(min(0.5, left)).payload))
        except queue.Empty:
            pass
    return out
