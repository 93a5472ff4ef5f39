"""The review page's static files: the vendored Leaflet is the pinned package's, the shell is served
without the token and keeps the page on the daemon, and no file names another host."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edgetile.runtime.serve.page import STATIC, mount_page

ROOT = Path(__file__).resolve().parents[1]
VENDOR = STATIC / "vendor" / "leaflet"
MANIFEST = json.loads((VENDOR / "MANIFEST.json").read_text())


def test_vendored_leaflet_is_the_version_pinned_in_package_lock():
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/leaflet"]
    wanted = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]["leaflet"]
    assert wanted == pinned["version"], "package.json must pin an exact version, as package-lock.json has it"
    assert (MANIFEST["version"], MANIFEST["integrity"]) == (pinned["version"], pinned["integrity"])


def test_vendored_files_are_exactly_those_recorded_from_the_package():
    on_disk = {
        p.relative_to(VENDOR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "MANIFEST.json"
    }
    assert on_disk == MANIFEST["sha256"]
    assert {"leaflet.js", "leaflet.css", "LICENSE", "images/marker-icon.png"} <= set(on_disk)
    assert f"Leaflet {MANIFEST['version']}" in (VENDOR / "leaflet.js").read_text()[:200]


def test_vendored_files_equal_the_installed_package_when_make_vendor_has_run():
    package = ROOT / "web" / "node_modules" / "leaflet"
    if not (package / "package.json").exists():
        pytest.skip(
            "web/node_modules is absent (make vendor installs it with npm); the sums above still hold"
        )
    assert json.loads((package / "package.json").read_text())["version"] == MANIFEST["version"]
    for rel in MANIFEST["sha256"]:
        src = package / rel if rel == "LICENSE" else package / "dist" / rel
        assert src.read_bytes() == (VENDOR / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    mount_page(app)
    return TestClient(app)


@pytest.mark.parametrize(
    "path, media",
    [
        ("/", "text/html"),  # the shell: no data in it, so no token
        ("/static/review.js", "javascript"),
        ("/static/review.css", "text/css"),
        ("/static/vendor/leaflet/leaflet.js", "javascript"),
        ("/static/vendor/leaflet/images/marker-icon.png", "image/png"),
    ],
)
def test_shell_and_files_are_served_with_their_types(client, path, media):
    r = client.get(path)
    assert r.status_code == 200 and media in r.headers["content-type"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_shell_policy_allows_only_the_daemon_itself(client):
    csp = client.get("/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["img-src"] == "'self' blob: data:"


# httpx would resolve a literal "/static/../page.py" before sending it; encoded, the dots and slash reach
# the static route itself
@pytest.mark.parametrize("path", ["/static/%2e%2e%2fpage.py", "/static/%2e%2e/page.py", "/static/nothing.js"])
def test_static_files_never_leave_the_static_folder(client, path):
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("name", ["index.html", "review.js", "review.css"])
def test_page_files_name_no_other_host(name):
    text = (STATIC / name).read_text()
    assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I)
