"""MAVLink in and out, with pymavlink peers over UDP on 127.0.0.1 (a simulated autopilot and a ground
station), and the Lacmus message decoded by a dialect that pymavlink's own generator builds."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402
from pymavlink.dialects.v20 import ardupilotmega as apm  # noqa: E402

from edgetile.runtime.geo import CameraPose, PoseError, locate_pixels, rotation_ypr  # noqa: E402
from edgetile.runtime.links.mavlink import (  # noqa: E402
    LACMUS_FIELDS,
    MavlinkSender,
    MavlinkTelemetry,
    crc_extra,
    encode_lacmus_object_detected,
)

LAT, LON = 55.75, 37.62
W, H, F = 4000, 3000, 1000.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quaternion_wxyz(r: np.ndarray) -> list[float]:
    x, y, z, w = Rotation.from_matrix(r).as_quat()
    return [float(w), float(x), float(y), float(z)]


@pytest.fixture
def link():
    """Our listener on a loopback port, and a pymavlink 'autopilot' sending to it."""
    port = free_udp_port()
    tele = MavlinkTelemetry(f"udpin:127.0.0.1:{port}")
    autopilot = mavutil.mavlink_connection(
        f"udpout:127.0.0.1:{port}", dialect="ardupilotmega", source_system=1, source_component=1
    )
    yield tele, autopilot
    autopilot.close()
    tele.close()


def send_until(tele, send, ready, timeout=10.0):
    """UDP may lose the first datagrams while the listener starts: resend until it has them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        if tele.wait_for(ready, 0.2):
            return True
    return False


def test_live_pose_from_global_position_int_and_attitude(link):
    tele, ap = link
    with pytest.raises(PoseError, match="no GLOBAL_POSITION_INT, no ATTITUDE"):
        tele.pose_now(W, H, F)

    def send():
        ap.mav.heartbeat_send(2, 3, 0, 0, 4)  # a quadrotor running ArduPilot
        ap.mav.global_position_int_send(1000, int(LAT * 1e7), int(LON * 1e7), 180_000, 50_000, 0, 0, 0, 9000)
        ap.mav.attitude_send(1000, 0.0, 0.0, math.pi / 2, 0.0, 0.0, 0.0)  # level, nose east

    assert send_until(
        tele, send, lambda t: t.counts().get("ATTITUDE") and t.counts().get("GLOBAL_POSITION_INT")
    )
    pose = tele.pose_now(W, H, F)
    assert (pose.lat, pose.lon, pose.agl_m, pose.abs_alt_m) == (LAT, LON, 50.0, 180.0)
    # a downward camera on a vehicle facing east: yaw 90, pitch -90, photo top towards the east
    np.testing.assert_allclose(pose.rotation, rotation_ypr(90, -90, 0), atol=1e-6)  # float32 on the wire
    fix = locate_pixels(pose, np.array([[W / 2 + 0.5 * F, H / 2 - 0.5 * F]]))[0]
    # by hand: 0.5 f right and up at 50 m is 25 m right and 25 m ahead; ahead = east, right = south
    assert (fix.north_m, fix.east_m) == pytest.approx((-25.0, 25.0), abs=0.01)
    assert tele.pose_now(W, H, F, ground_above_takeoff=10.0).agl_m == 40.0


def test_photo_poses_from_camera_feedback_and_camera_image_captured(link):
    tele, ap = link
    camera_r = rotation_ypr(90, -90, 0)

    def send():
        ap.mav.camera_feedback_send(
            1_700_000_000_000_000,
            1,
            0,
            7,
            int(LAT * 1e7),
            int(LON * 1e7),
            180.0,
            50.0,
            0.0,
            0.0,
            90.0,
            4.5,
            0,
        )  # vehicle attitude: level, yaw 90
        ap.mav.camera_image_captured_send(
            1000,
            1_700_000_000_500_000,
            1,
            int(LAT * 1e7),
            int(LON * 1e7),
            181_000,
            51_000,
            quaternion_wxyz(camera_r),
            8,
            1,
            b"DCIM/DJI_0008.JPG",
        )
        ap.mav.camera_image_captured_send(
            1000,
            0,
            1,
            int(LAT * 1e7),
            int(LON * 1e7),
            181_000,
            51_000,
            [0, 0, 0, 0],
            9,
            1,
            b"DCIM/DJI_0009.JPG",
        )  # orientation unknown

    assert send_until(tele, send, lambda t: t.capture(7) and t.capture(8) and t.capture(9))
    fb, cap = tele.capture(7), tele.capture(file_url="DJI_0008.JPG")
    assert (fb.source, fb.index, fb.relative_alt_m, fb.time_usec) == (
        "CAMERA_FEEDBACK",
        7,
        50.0,
        1_700_000_000_000_000,
    )
    assert (cap.source, cap.index, cap.alt_msl_m, cap.file_url) == (
        "CAMERA_IMAGE_CAPTURED",
        8,
        181.0,
        "DCIM/DJI_0008.JPG",
    )
    for c, h in ((fb, 50.0), (cap, 51.0)):
        pose = tele.pose_for_capture(c, W, H, F)
        np.testing.assert_allclose(pose.rotation, camera_r, atol=1e-6)
        fix = locate_pixels(pose, np.array([[W / 2 + 0.5 * F, H / 2 - 0.5 * F]]))[0]
        assert (fix.north_m, fix.east_m) == pytest.approx((-h / 2, h / 2), abs=0.01)
    with pytest.raises(PoseError, match="has no orientation and no ATTITUDE"):
        tele.pose_for_capture(tele.capture(9), W, H, F)


@pytest.fixture
def ground_station():
    port = free_udp_port()
    gcs = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}", dialect="ardupilotmega", source_system=255)
    yield port, gcs
    gcs.close()


def recv(gcs, kind, timeout=10.0):
    msg = gcs.recv_match(type=kind, blocking=True, timeout=timeout)
    assert msg is not None, f"no {kind} within {timeout} s"
    return msg


def test_detections_reach_the_ground_station_as_standard_messages(ground_station):
    port, gcs = ground_station
    camera = CameraPose.from_angles(LAT, LON, 60.0, 0, -90, 0, F, W, H, abs_alt_m=200.0)
    det = {
        "bbox": [100.0, 200.0, 130.0, 260.0],
        "score": 0.874,
        "class_name": "person",
        "lat": 55.7501234,
        "lon": 37.6209876,
        "error_m": 3.4,
        "ground_alt_m": 140.0,
        "distance_m": 80.0,
    }
    with MavlinkSender(f"udpout:127.0.0.1:{port}", heartbeat_s=0.2) as sender:
        hb = recv(gcs, "HEARTBEAT")
        assert (hb.type, hb.get_srcSystem(), hb.get_srcComponent()) == (
            apm.MAV_TYPE_ONBOARD_CONTROLLER,
            1,
            191,
        )
        assert sender.send_detection(det, image_index=3, camera=camera) == 2
        text = recv(gcs, "STATUSTEXT")
        geo = recv(gcs, "CAMERA_TRACKING_GEO_STATUS")
        assert sender.send_detection({"bbox": [0, 0, 1, 1], "score": 0.4, "class_name": "person"}) == 1
        no_pos = recv(gcs, "STATUSTEXT")
    assert text.severity == apm.MAV_SEVERITY_ALERT
    assert text.text == "person 87% 55.750123,37.620988 +-3m"
    assert no_pos.text == "person 40% (no position)"
    assert geo.tracking_status == apm.CAMERA_TRACKING_STATUS_FLAGS_ACTIVE
    assert (geo.lat, geo.lon) == (557501234, 376209876)
    assert (geo.alt, geo.h_acc) == pytest.approx((140.0, 3.4))
    assert geo.dist == pytest.approx(100.0)  # 80 m away on the ground, 60 m up
    assert math.isnan(geo.vel_n) and math.isnan(geo.hdg)  # unknowns are NaN, as the message asks


def test_statustext_fits_fifty_characters():
    long = {
        "class_name": "a-very-long-class-name-from-a-custom-model",
        "score": 0.5,
        "lat": -33.123456789,
        "lon": -70.987654321,
        "error_m": 123.4,
    }
    assert len(MavlinkSender.alert_text(long)) == 50


# The definition from the Lacmus onboard prototype (lacmus-foundation/lacmus-drone-onboard,
# src/lacmus_onboard/mavlink/dialects/lacmus.xml), without its <include>common.xml</include>, which
# changes nothing about this message and would make the generator take much longer.
LACMUS_XML = """<?xml version="1.0"?>
<mavlink>
  <version>3</version>
  <messages>
    <message id="7000" name="LACMUS_OBJECT_DETECTED">
      <description>Information about a detected object</description>
      <field type="uint32_t" name="time_boot_ms" units="ms">Timestamp (time since system boot).</field>
      <field type="uint64_t" name="time_utc" units="us">Timestamp (time since UNIX epoch) in UTC. 0 for unknown.</field>
      <field type="uint8_t" name="camera_id">Camera ID (1 for first, 2 for second, etc.)</field>
      <field type="int32_t" name="lat" units="degE7">Latitude where image was taken</field>
      <field type="int32_t" name="lon" units="degE7">Longitude where capture was taken</field>
      <field type="int32_t" name="alt" units="mm">Altitude (MSL) where image was taken</field>
      <field type="int32_t" name="relative_alt" units="mm">Altitude above ground</field>
      <field type="int32_t" name="source_image_index">Zero based index of this image (image count since armed -1)</field>
      <field type="uint16_t[4]" name="bbox">Bound box of detected object</field>
      <field type="char[205]" name="file_url">URL of detection sample.</field>
    </message>
  </messages>
</mavlink>
"""


@pytest.fixture(scope="module")
def lacmus_dialect(tmp_path_factory):
    """The Lacmus dialect as pymavlink's generator (mavgen) makes it from the XML."""
    from pymavlink.generator import mavgen

    d = tmp_path_factory.mktemp("lacmus")
    (d / "lacmus.xml").write_text(LACMUS_XML)
    opts = mavgen.Opts(output=str(d / "lacmus"), wire_protocol="2.0", language="Python3", validate=False)
    assert mavgen.mavgen(opts, [str(d / "lacmus.xml")])
    spec = importlib.util.spec_from_file_location("lacmus_dialect", d / "lacmus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_our_crc_extra_matches_the_generator(lacmus_dialect):
    assert (
        crc_extra("LACMUS_OBJECT_DETECTED", LACMUS_FIELDS)
        == lacmus_dialect.MAVLink_lacmus_object_detected_message.crc_extra
    )
    # and for a standard message, against pymavlink's shipped dialect
    gpi = (
        ("uint32_t", "time_boot_ms", 0),
        ("int32_t", "lat", 0),
        ("int32_t", "lon", 0),
        ("int32_t", "alt", 0),
        ("int32_t", "relative_alt", 0),
        ("int16_t", "vx", 0),
        ("int16_t", "vy", 0),
        ("int16_t", "vz", 0),
        ("uint16_t", "hdg", 0),
    )
    assert crc_extra("GLOBAL_POSITION_INT", gpi) == apm.MAVLink_global_position_int_message.crc_extra


def test_lacmus_bytes_decode_with_the_generated_dialect(lacmus_dialect):
    values = {
        "time_boot_ms": 123456,
        "time_utc": 1_700_000_000_123_456,
        "camera_id": 2,
        "lat": 557501234,
        "lon": -376209876,
        "alt": 140_000,
        "relative_alt": 60_000,
        "source_image_index": 41,
        "bbox": (100, 200, 130, 65535),
        "file_url": "thumbs/DJI_0041_000.jpg",
    }
    packet = encode_lacmus_object_detected(values, seq=17, system_id=1, component_id=191)
    msgs = lacmus_dialect.MAVLink(None).parse_buffer(packet)
    assert len(msgs) == 1
    m = msgs[0]
    assert m.get_type() == "LACMUS_OBJECT_DETECTED" and m.get_msgId() == 7000
    assert (m.get_seq(), m.get_srcSystem(), m.get_srcComponent()) == (17, 1, 191)
    for k, v in values.items():
        got = getattr(m, k)
        assert (list(got) if k == "bbox" else got) == (list(v) if k == "bbox" else v), k
    # trailing zeros are trimmed on the wire (MAVLink 2), and the decoder restores them
    assert len(packet) < 10 + 246 + 2
    # one flipped bit fails the checksum
    bad = bytearray(packet)
    bad[20] ^= 1
    with pytest.raises(lacmus_dialect.MAVError, match="invalid MAVLink CRC in msgID 7000"):
        lacmus_dialect.MAVLink(None).parse_buffer(bytes(bad))
    with pytest.raises(ValueError, match="file_url: expected at most 205 bytes"):
        encode_lacmus_object_detected({**values, "file_url": "x" * 206})
    with pytest.raises(ValueError, match="camera_id"):
        encode_lacmus_object_detected({**values, "camera_id": 300})


def test_sender_sends_lacmus_with_the_persons_position_over_udp(lacmus_dialect):
    port = free_udp_port()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", port))
    rx.settimeout(5)
    camera = CameraPose.from_angles(LAT, LON, 60.0, 0, -90, 0, F, W, H, abs_alt_m=200.0)
    det = {
        "bbox": [100.4, 200.6, 130.0, 260.0],
        "score": 0.9,
        "class_name": "person",
        "lat": 55.7501234,
        "lon": 37.6209876,
        "error_m": 3.0,
        "ground_alt_m": 140.0,
        "distance_m": 80.0,
    }
    try:
        with MavlinkSender(f"udpout:127.0.0.1:{port}", heartbeat_s=0, lacmus=True) as sender:
            assert (
                sender.send_detection(
                    det,
                    image_index=41,
                    camera=camera,
                    file_url="thumbs/a.jpg",
                    time_utc_us=1_700_000_000_000_000,
                )
                == 3
            )
            std, lac = [], []
            while len(std) < 2 or not lac:
                data = rx.recv(4096)
                std += apm.MAVLink(None).parse_buffer(data) or []
                lac += [
                    m
                    for m in lacmus_dialect.MAVLink(None).parse_buffer(data) or []
                    if m.get_type() == "LACMUS_OBJECT_DETECTED"
                ]
    finally:
        rx.close()
    assert [m.get_type() for m in std][:2] == ["STATUSTEXT", "CAMERA_TRACKING_GEO_STATUS"]
    m = lac[0]
    assert (m.lat, m.lon, m.alt, m.relative_alt) == (557501234, 376209876, 140_000, 60_000)
    assert (list(m.bbox), m.source_image_index, m.file_url, m.time_utc) == (
        [100, 201, 130, 260],
        41,
        "thumbs/a.jpg",
        1_700_000_000_000_000,
    )
    seqs = [x.get_seq() for x in std[:2]] + [m.get_seq()]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]  # one packet sequence across all our messages


def test_sender_refuses_bad_options():
    with pytest.raises(ValueError, match="lacmus_position: expected 'target' or 'camera'"):
        MavlinkSender("udpout:127.0.0.1:9", lacmus_position="drone")
