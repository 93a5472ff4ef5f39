"""The georeferencing and link options become config objects; the daemon's hooks do nothing by default."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest

from edgetile.runtime.argtypes import positive_number
from edgetile.runtime.geo import GeoConfig
from edgetile.runtime.options.geo import (
    ServeGeoConfig,
    add_geo_options,
    add_serve_geo_options,
    geo_config_from_args,
    serve_geo_config_from_args,
)
from edgetile.runtime.results import Detections
from edgetile.runtime.serve.geo_hooks import GeoHooks, open_result_hooks
from edgetile.runtime.serve.hooks import ResultHooks


def detect_args(*cli: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgetile detect", exit_on_error=False)
    add_geo_options(p)
    return p.parse_args(list(cli))


def serve_args(*cli: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgetile serve", exit_on_error=False)
    p.add_argument("--video", action="append", default=[])
    add_serve_geo_options(p)
    return p.parse_args(list(cli))


@pytest.mark.parametrize(
    "text, maximum, words",
    [
        ("0", float("inf"), "expected a positive number for --x, found 0"),  # zero is not positive
        ("-1", float("inf"), "expected a positive number for --x, found -1"),
        ("nan", float("inf"), "expected a positive number for --x, found nan"),  # nor is NaN
        ("inf", float("inf"), "expected a positive number for --x, found inf"),  # nor infinity
        ("ten", float("inf"), "expected a positive number for --x, found 'ten'"),  # not a number: quoted
        ("61", 60.0, "expected a positive number <= 60 for --x, found 61"),  # past the maximum: named
    ],
)
def test_positive_number_refuses_in_one_line(text, maximum, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words.replace("(", r"\(")):
        positive_number("--x", maximum)(text)


def test_positive_number_accepts_up_to_its_maximum():
    assert positive_number("--x", 60)("60") == 60.0
    assert positive_number("--x")("0.001") == 0.001


def test_detect_options_become_a_geo_config():
    a = detect_args(
        "--format", "geojson,csv", "--height-above-ground", "50", "--yaw", "90", "--gps-sigma", "0.1"
    )
    config = geo_config_from_args(a, a.format)
    assert isinstance(config, GeoConfig)
    assert config.formats == ("geojson", "csv")
    assert (config.overrides.height_above_ground, config.overrides.yaw) == (50.0, 90.0)
    assert config.errors.gps_sigma_m == 0.1
    assert geo_config_from_args(detect_args()).formats == ()  # the daemon writes no files


def test_serve_options_become_a_serve_geo_config():
    config = serve_geo_config_from_args(
        serve_args(
            "--geo",
            "--mqtt",
            "broker:1884",
            "--mqtt-topic",
            "sar",
            "--mqtt-buffer",
            "50",
            "--drone-id",
            "m300.left-2",
            "--advertise-url",
            "http://10.0.0.7:8765/",
        )
    )
    assert config == ServeGeoConfig(
        geo=config.geo,
        georeference=True,
        mqtt_host="broker",
        mqtt_port=1884,
        mqtt_topic="sar",
        mqtt_buffer=50,
        drone_id="m300.left-2",
        advertise_url="http://10.0.0.7:8765",
    )
    assert config.enabled
    defaults = serve_geo_config_from_args(serve_args())
    assert defaults == ServeGeoConfig(geo=defaults.geo) and not defaults.enabled


@pytest.mark.parametrize(
    "cli, words",
    [
        (["--mqtt", "broker:port"], "--mqtt: expected HOST:PORT with a numeric port, found 'broker:port'"),
        (["--mavlink-lacmus"], "--mavlink-lacmus: expected --mavlink-out URL as well, found none"),
        (["--drone-id", "a/b"], "--drone-id: expected a name of letters"),  # a topic level of its own
        (["--drone-id=_x"], "--drone-id: expected a name of letters"),
        (["--drone-id", "x" * 33], "--drone-id: expected a name of letters"),
        (["--advertise-url", "10.0.0.7:8765"], "--advertise-url: expected http://HOST:PORT"),
        (["--advertise-url", "http://h:1/api"], "--advertise-url: expected http://HOST:PORT"),
    ],
)
def test_serve_options_that_do_not_fit_are_refused(cli, words):
    with pytest.raises(ValueError, match=words):
        serve_geo_config_from_args(serve_args(*cli))


def test_without_geo_mqtt_or_mavlink_the_daemon_gets_hooks_that_do_nothing(tmp_path):
    hooks = open_result_hooks(ServeGeoConfig(), tmp_path)
    assert type(hooks) is ResultHooks and hooks.publisher is None and hooks.frame_telemetry is None
    dets = Detections([[1.0, 2.0, 3.0, 4.0]], [0.5], [0])
    assert hooks.annotate(None, np.zeros((8, 8, 3), np.uint8), dets) is dets  # untouched
    hooks.publish([])
    assert hooks.wait_for_telemetry(threading.Event())  # nothing to wait for
    pytest.importorskip("fastapi")
    assert hooks.routes(lambda: None).routes == []  # the API gets no extra route
    hooks.close()
    assert list(tmp_path.iterdir()) == []  # and nothing was written


def test_geo_hooks_without_telemetry_record_nothing_with_frames(tmp_path):
    pytest.importorskip("pymap3d")  # --geo needs the geo extra
    hooks = open_result_hooks(ServeGeoConfig(georeference=True), tmp_path)
    assert isinstance(hooks, GeoHooks) and hooks.frame_telemetry is None and hooks.publisher is None
    assert hooks.wait_for_telemetry(threading.Event())
    hooks.close()
