"""The review page in a real browser (Debian's Chromium through Selenium) against a real daemon.

Each test starts `edgetile serve --geo` on a watched folder of drone photos with a GPS/XMP pose, lets
the tiny red-blob model find the 'people' in them, and drives the page the way an operator does: keys,
reloads, a second browser, a killed daemon. What the page holds is read from window.edgetileReview;
what the daemon holds from its JSON endpoints. Every test also checks, in Chrome's performance log,
that no request went to any host but the daemon.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from review_browser import Browser, browser_missing, drone_photo
from serve_process import ServeProcess

from edgetile.runtime.geo import locate_boxes, pose_from_photo
from onnx_models import red_blob_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or ""),
]

# Three 'people' per photo, on the model's 8-pixel cells: three detections each.
BLOBS = [[(64 + 8 * n, 64), (200, 160 + 16 * n), (400, 296)] for n in range(4)]
N_PHOTOS, N_DETECTIONS = len(BLOBS), sum(len(b) for b in BLOBS)
TOKEN = "s3cret-field-token"
# The same people in reds from full to barely redder than the field: scores spread out below 1.
REDS = [120, 255, 110, 140, 106, 160, 117, 112, 130, 108, 125, 115]
DIM_BLOBS = [[(x, y, REDS[3 * n + k]) for k, (x, y) in enumerate(b)] for n, b in enumerate(BLOBS)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def survey(tmp_path: Path, model, *extra, photos=BLOBS) -> tuple[ServeProcess, Path]:
    """A daemon with --geo on a watched folder holding one photo per list of blobs, all committed."""
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    for n, blobs in enumerate(photos):
        drone_photo(drop / f"DJI_{n:04d}.JPG", n, blobs, yaw=12.0 * n)
    args = ["--model", model, "--tile", "256", "--watch", drop, "--state", tmp_path / "state"]
    args += ["--settle", "0", "--poll", "0.1", "--geo", "--ground-alt", "130", *extra]
    d = ServeProcess(tmp_path, *args).start()
    token = TOKEN if "--token" in extra else None
    total = sum(len(b) for b in photos)
    d.wait_for(
        lambda: d.json("/api/review/counts", token=token)["total"] == total, what=f"{total} detections"
    )
    return d, drop


def daemon_statuses(d: ServeProcess, token: str | None = None) -> dict[str, tuple[str, str | None]]:
    items = d.json("/api/review/detections?limit=1000", token=token)["items"]
    return {it["id"]: (it["status"], it["operator"]) for it in items}


def page_statuses(b: Browser) -> dict[str, str]:
    return dict(b.state("s.items.map((d) => [d.id, d.status])"))


def only_the_daemon_was_asked(b: Browser, d: ServeProcess) -> None:
    # chrome:// pages are the browser's own new-tab page, served from inside the browser before the
    # test opens the daemon's page; everything else must come from the daemon (or the page's blobs).
    urls = [r["url"] for r in b.network() if not r["url"].startswith("chrome://")]
    assert any(u.startswith(d.url) for u in urls), "the performance log recorded no request to the daemon"
    strays = [u for u in urls if not u.startswith((d.url + "/", "blob:" + d.url, "data:"))]
    assert strays == [], f"requests to other hosts: {strays}"
    assert not any(TOKEN in u for u in urls), "the token must never appear in a URL"


def shown(b: Browser, what: str = "the selected crop on screen"):
    return b.wait(
        "s.shown !== null && s.shown === s.current && s.pending.length === 0 && s.current", what=what
    )


def test_keyboard_review_is_kept_through_reload_and_a_second_browser_sees_it_live(tmp_path, model):
    from selenium.webdriver.common.by import By

    d, drop = survey(tmp_path, model)
    a, b = Browser(operator="ana"), Browser(operator="ben")
    try:
        a.open(d.url)
        b.open(d.url)
        a.wait(f"s.items.length === {N_DETECTIONS} && s.live", what="the whole queue and the live stream")
        b.wait("s.live", what="the second browser's live stream")
        order = a.state("s.items.map((d) => d.id)")
        assert a.state("s.counts") == {
            "unreviewed": N_DETECTIONS,
            "confirmed": 0,
            "rejected": 0,
            "flagged": 0,
            "total": N_DETECTIONS,
        }
        assert shown(a) == order[0]

        # confirm, reject, flag: each decision moves to the next crop; j skips one; u undoes the last
        a.key("c")
        assert shown(a) == order[1]
        a.key("r", "f", "j")
        assert shown(a) == order[4]
        a.key("c")
        assert shown(a) == order[5]
        a.key("u")  # the confirmation of order[4] is taken back, and the queue goes back to it
        assert shown(a) == order[4]
        a.key("k", "k")
        assert shown(a) == order[2]
        expect = {i: "unreviewed" for i in order}
        expect.update({order[0]: "confirmed", order[1]: "rejected", order[2]: "flagged"})
        a.wait("s.pending.length === 0", what="every decision saved")
        assert page_statuses(a) == expect

        a.key("?")  # the keys, on the page itself
        a.wait("document.querySelector('#help').open", what="the help")
        assert "flag for the ground team" in a.driver.find_element(By.ID, "help").text
        a.key("\ue00c")  # Escape closes it
        a.wait("!document.querySelector('#help').open", what="the help closed")

        # the daemon holds them, with the operator's name and the history of the undone one
        held = daemon_statuses(d)
        assert {i: s for i, (s, _) in held.items()} == expect
        assert held[order[0]] == ("confirmed", "ana")
        history = d.json(f"/api/review/detections/{order[4]}/history")["history"]
        assert [h["status"] for h in history] == ["confirmed", "unreviewed"]

        # the second browser saw every decision arrive, without a reload
        b.wait(
            "s.counts && s.counts.confirmed === 1 && s.counts.rejected === 1 && s.counts.flagged === 1",
            what="the second browser's counts",
        )
        b.wait("s.items.filter((d) => d.status !== 'unreviewed').length === 3", what="the decisions in B")
        assert page_statuses(b) == expect
        # ...and B's decision reaches A the same way
        b.key("j", "j", "j", "j", "j", "j")
        target = b.state("s.current")
        b.key("f")
        a.wait(f"s.items.find((d) => d.id === {target!r}).status === 'flagged'", what="B's flag in A")
        expect[target] = "flagged"

        # a reload shows what the daemon kept
        a.driver.refresh()
        a.wait(f"s.ready && s.items.length === {N_DETECTIONS}", what="the queue after a reload")
        assert page_statuses(a) == expect
        rows = a.driver.execute_script(
            "return [...document.querySelectorAll('#queue-list li')].map((li) => [li.dataset.id, li.classList[0]])"
        )
        assert dict(rows) == expect

        # a photo dropped now appears in both queues without a reload
        drone_photo(drop / "DJI_0099.JPG", 9, [(104, 104)])
        a.wait(f"s.items.length === {N_DETECTIONS + 1}", what="the new detection in A")
        b.wait(f"s.counts.total === {N_DETECTIONS + 1}", what="the new detection's count in B")
        new = a.state(f"s.items.find((d) => !{order!r}.includes(d.id))")
        assert new["image"].endswith("DJI_0099.JPG") and new["status"] == "unreviewed"

        # filters: only the flagged ones, then all again
        for status in ("unreviewed", "confirmed", "rejected"):
            a.driver.find_element(By.CSS_SELECTOR, f"input[name=status][value={status}]").click()
        a.wait("s.filters.status.join() === 'flagged' && s.items.length === 2", what="the flagged filter")
        assert sorted(page_statuses(a)) == sorted(i for i, s in expect.items() if s == "flagged")
        a.driver.find_element(By.CSS_SELECTOR, "input[name=status][value=unreviewed]").click()
        a.wait(f"s.items.length === {N_DETECTIONS + 1 - 2}", what="unreviewed and flagged: all but 2")
        for br in (a, b):
            only_the_daemon_was_asked(br, d)
            assert br.state("s.errors") == []
    finally:
        a.close()
        b.close()
        d.kill()


def test_kill_9_mid_review_loses_no_decision(tmp_path, model):
    port = free_port()
    d, _ = survey(tmp_path, model, "--port", port)
    a = Browser()
    try:
        a.open(d.url)
        order = a.state("s.items.map((d) => d.id)")
        shown(a)
        a.key("c", "f")
        shown(a)
        d.kill()  # SIGKILL: no chance to flush anything
        a.key("r")  # decided while the daemon is down: held by the page until it is back
        a.wait("s.pending.length === 1 && !s.live", what="a decision waiting for the daemon")
        d = ServeProcess(tmp_path, *d.args).start()
        a.wait(
            "s.pending.length === 0 && s.live", timeout=60, what="the held decision saved after the restart"
        )
        expect = {order[0]: "confirmed", order[1]: "flagged", order[2]: "rejected"}
        held = daemon_statuses(d)
        assert {i: held[i][0] for i in expect} == expect
        assert sum(s != "unreviewed" for s, _ in held.values()) == 3
        a.driver.refresh()
        a.wait(f"s.ready && s.items.length === {N_DETECTIONS}", what="the queue after the restart")
        assert {i: s for i, s in page_statuses(a).items() if s != "unreviewed"} == expect
        only_the_daemon_was_asked(a, d)
    finally:
        a.close()
        d.kill()


def test_photo_view_draws_its_boxes_and_an_operator_box_is_georeferenced_and_mapped(tmp_path, model):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d, drop = survey(tmp_path, model)
    a = Browser()
    try:
        a.open(d.url)
        first = shown(a)
        a.key("p")
        a.wait("s.view === 'photo' && s.photo && s.photo.loaded", what="the photo view")
        photo = a.state("s.photo")
        same_photo = [
            i for i in a.state("s.items.map((d) => d.id)") if i.startswith(f"{photo['outcome_id']}-")
        ]
        assert photo["selected"] == first and sorted(photo["boxes"]) == sorted(same_photo)
        assert len(photo["boxes"]) == 3

        # shift-drag draws a box around a 'person' the model missed; the daemon places it on the ground
        area = a.driver.find_element(By.ID, "photo-map")
        drag = ActionChains(a.driver).key_down(Keys.SHIFT).move_to_element_with_offset(area, -30, -20)
        drag.click_and_hold().move_by_offset(25, 30).move_by_offset(25, 30).release().key_up(Keys.SHIFT)
        drag.perform()
        box = a.wait("s.lastOperatorBox", what="the operator's box saved")
        assert box["origin"] == "operator" and box["status"] == "confirmed" and box["operator"] == "ana"
        x1, y1, x2, y2 = box["bbox"]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 384 and x2 - x1 > 10
        image = drop / Path(box["image"]).name
        where = locate_boxes(pose_from_photo(image), np.array([box["bbox"]], float))[0]
        assert (box["lat"], box["lon"]) == pytest.approx((where.lat, where.lon), abs=1e-7)
        assert box["error_m"] > 0
        assert box["id"] in a.state("s.photo.boxes")

        # the source filter finds it among the operator-drawn boxes
        a.key("Escape")
        a.driver.find_element(By.CSS_SELECTOR, "select[name=source] option[value=operator]").click()
        a.wait("s.filters.source === 'operator' && s.items.length === 1", what="the source filter")
        assert a.state("s.items[0].id") == box["id"]
        a.driver.find_element(By.CSS_SELECTOR, "select[name=source] option[value='']").click()
        a.wait(f"s.filters.source === '' && s.items.length === {N_DETECTIONS + 1}", what="every source again")
        a.driver.find_element(By.TAG_NAME, "body").click()

        # the map: one footprint per photo, one marker per georeferenced detection, the operator's too
        a.key("m")
        a.wait("s.mapReady", what="the map")
        held = d.json("/api/review/detections?limit=1000")["items"]
        assert sorted(a.state("s.footprints")) == sorted(
            {it["outcome_id"] for it in held if it["origin"] == "model"}
        )
        markers = a.state("s.markers")
        assert sorted(markers) == sorted(it["id"] for it in held) and len(markers) == N_DETECTIONS + 1
        assert markers[box["id"]]["status"] == "confirmed"
        for it in held:
            assert (markers[it["id"]]["lat"], markers[it["id"]]["lon"]) == (it["lat"], it["lon"])
        a.wait(f"s.overlaysLoaded === {N_PHOTOS}", what="each footprint's photo drawn")
        legend = a.driver.find_element(By.CSS_SELECTOR, ".legend").text
        assert "1.7 m person" in legend and "cm/px" in legend

        # a decision made in the queue recolours its marker
        a.key("1")
        target = a.state("s.current")
        a.key("r")
        a.wait(f"s.markers[{target!r}].status === 'rejected'", what="the marker's new status")

        # the finds' exports are fetched with the page's headers and handed to the browser as files
        a.driver.find_element(By.CSS_SELECTOR, "#exports summary").click()
        for name in ("finds.geojson", "finds.gpx"):
            a.driver.find_element(By.CSS_SELECTOR, f"[data-export='{name}']").click()
            a.wait(f"performance.getEntriesByName(location.origin + '/api/review/{name}').length", what=name)
        exported = [r for r in a.network() if "/api/review/finds." in r["url"]]
        assert sorted(r["url"].rsplit("/", 1)[1] for r in exported) == ["finds.geojson", "finds.gpx"]
        assert all(r["status"] == 200 for r in exported), exported
        only_the_daemon_was_asked(a, d)
        assert a.state("s.errors") == []
    finally:
        a.close()
        d.kill()


def xyz_tiles(folder: Path, lat: float, lon: float, zooms=range(12, 20)) -> int:
    """Write the XYZ tile holding (lat, lon) at each zoom, and its 8 neighbours, as a team's offline map."""
    import math

    import cv2

    n = 0
    for z in zooms:
        x = int((lon + 180) / 360 * 2**z)
        y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * 2**z)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                path = folder / str(z) / str(x + dx) / f"{y + dy}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), np.full((256, 256, 3), (200, 220, 235), np.uint8))
                n += 1
    return n


def test_with_a_token_a_page_without_it_gets_nothing_until_the_operator_gives_it(tmp_path, model):
    from review_browser import LAT0, LON0
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    xyz_tiles(tmp_path / "tiles", LAT0 + 0.0008, LON0)
    d, _ = survey(tmp_path, model, "--token", TOKEN, "--tiles", tmp_path / "tiles")
    a = Browser()
    try:
        a.open(d.url, ready=False)
        a.wait("document.querySelector('#ask').open", what="the page asking for the token")
        asked = a.network()
        api = [r for r in asked if r["url"].startswith(d.url + "/api/")]
        assert api and all(r["status"] == 401 for r in api if r["status"] is not None), api
        assert a.state("[s.items.length, s.counts, s.ready]") == [0, None, False]
        assert "token" in a.driver.find_element(By.ID, "ask-text").text

        a.driver.find_element(By.ID, "ask-input").send_keys("wrong" + Keys.ENTER)
        a.wait(
            "document.querySelector('#ask').open && document.querySelector('#ask-text').textContent.includes('refused')"
        )
        field = a.driver.find_element(By.ID, "ask-input")
        field.clear()
        field.send_keys(TOKEN + Keys.ENTER)
        a.wait(f"s.ready && s.items.length === {N_DETECTIONS}", what="the queue once the token is given")
        shown(a)  # the crop came through a fetch with the header, shown as a blob: URL
        assert a.driver.find_element(By.ID, "crop").get_attribute("src").startswith("blob:")
        assert a.driver.execute_script("return sessionStorage.getItem('edgetile.token')") == TOKEN
        # the team's offline tiles are drawn under the map, fetched with the token too
        a.key("m")
        a.wait("s.mapReady && s.tilesLoaded > 0", what="background tiles from --tiles")
        assert a.state("s.map.tiles").startswith("/tiles/")
        # a browser without the token still gets nothing of the data
        for path in ("/api/review/detections", "/api/review/map", "/images/1", "/api/review/crops/1-0"):
            assert d.request(path)[0] == 401, path
        only_the_daemon_was_asked(a, d)
    finally:
        a.close()
        d.kill()


def queue_rows(b: Browser) -> list[str]:
    return b.driver.execute_script(
        "return [...document.querySelectorAll('#queue-list li')].map((li) => li.dataset.id)"
    )


def test_score_range_and_time_order_list_what_the_daemon_lists(tmp_path, model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d, _ = survey(tmp_path, model, photos=DIM_BLOBS)
    a = Browser()
    try:
        a.open(d.url)
        a.wait(f"s.items.length === {N_DETECTIONS}", what="the whole queue")
        # the scores as committed, and the commit order: outcome by outcome, each in its own order
        scores, commit_order = {}, []
        for outcome in d.json("/detections?limit=1000")["items"]:
            for k, det in enumerate(outcome["detections"]):
                scores[f"{outcome['id']}-{k}"] = det["score"]
                commit_order.append(f"{outcome['id']}-{k}")
        assert sorted(commit_order) == sorted(page_statuses(a))
        by_score = a.state("s.items.map((d) => d.id)")
        assert [scores[i] for i in by_score] == sorted(scores.values(), reverse=True)
        assert queue_rows(a) == by_score

        # a score range keeps exactly the detections whose score lies in it, as the daemon's own query
        ranked = sorted(scores.values())
        lo = round((ranked[2] + ranked[3]) / 2, 4)
        hi = round((ranked[-3] + ranked[-2]) / 2, 4)
        inside = {i for i, s in scores.items() if lo <= s <= hi}
        assert 0 < len(inside) < N_DETECTIONS - 2, f"the range {lo}..{hi} must leave some out: {ranked}"
        daemon = d.json(f"/api/review/detections?min_score={lo}&max_score={hi}&limit=1000")["items"]
        assert {it["id"] for it in daemon} == inside
        for name, value in (("min_score", lo), ("max_score", hi)):
            field = a.driver.find_element(By.CSS_SELECTOR, f"input[name={name}]")
            field.send_keys(str(value) + Keys.TAB)  # a number field tells its change when left
        a.wait(
            f"s.filters.min_score === '{lo}' && s.filters.max_score === '{hi}' && s.items.length === {len(inside)}",
            what=f"the score range {lo}..{hi}",
        )
        assert a.state("s.items.map((d) => d.id)") == [it["id"] for it in daemon]
        assert queue_rows(a) == [it["id"] for it in daemon]
        for name in ("min_score", "max_score"):
            field = a.driver.find_element(By.CSS_SELECTOR, f"input[name={name}]")
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(Keys.BACKSPACE, Keys.TAB)
        a.wait(
            f"s.filters.min_score === '' && s.filters.max_score === '' && s.items.length === {N_DETECTIONS}",
            what="the score range cleared",
        )
        assert a.state("s.items.map((d) => d.id)") == by_score

        # by time: commit order, as the daemon lists it; then back to the highest score first
        by_time = [it["id"] for it in d.json("/api/review/detections?order=time&limit=1000")["items"]]
        assert by_time == commit_order and by_time != by_score
        a.driver.find_element(By.CSS_SELECTOR, "select[name=order] option[value=time]").click()
        a.wait(f"s.filters.order === 'time' && s.items.length === {N_DETECTIONS}", what="the time order")
        assert a.state("s.items.map((d) => d.id)") == by_time
        assert queue_rows(a) == by_time
        shown(a)
        assert a.state("s.current") == by_time[0]
        a.driver.find_element(By.CSS_SELECTOR, "select[name=order] option[value=score]").click()
        a.wait(f"s.filters.order === 'score' && s.items.length === {N_DETECTIONS}", what="the score order")
        assert a.state("s.items.map((d) => d.id)") == by_score
        assert queue_rows(a) == by_score
        only_the_daemon_was_asked(a, d)
        assert a.state("s.errors") == []
    finally:
        a.close()
        d.kill()


def test_kml_csv_and_png_exports_are_fetched_with_the_token(tmp_path, model):
    from selenium.webdriver.common.by import By

    d, _ = survey(tmp_path, model, "--token", TOKEN)
    a = Browser(token=TOKEN)
    try:
        a.open(d.url)
        shown(a)
        a.key("f")  # one find to export
        a.wait("s.pending.length === 0 && s.counts.flagged === 1", what="the flag saved")
        a.driver.find_element(By.CSS_SELECTOR, "#exports summary").click()
        types = {
            "finds.kml": "application/vnd.google-earth.kml+xml",
            "finds.csv": "text/csv",
            "finds.png": "image/png",
        }
        for name in types:
            a.driver.find_element(By.CSS_SELECTOR, f"[data-export='{name}']").click()
            a.wait(f"performance.getEntriesByName(location.origin + '/api/review/{name}').length", what=name)
        exported = {r["url"].rsplit("/", 1)[1]: r for r in a.network() if "/api/review/finds." in r["url"]}
        assert sorted(exported) == sorted(types)
        for name, r in exported.items():
            assert (r["status"], r["type"], r["authorization"]) == (200, types[name], f"Bearer {TOKEN}"), r
        only_the_daemon_was_asked(a, d)
        assert a.state("s.errors") == []
    finally:
        a.close()
        d.kill()
