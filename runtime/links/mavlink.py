"""MAVLink: the vehicle's pose in (for frames without EXIF, such as video), detections out to the
ground station.

In: MavlinkTelemetry listens on a MAVLink link (UDP, serial, TCP: any pymavlink connection string)
and keeps the latest GLOBAL_POSITION_INT, ATTITUDE and GIMBAL_DEVICE_ATTITUDE_STATUS, and each
photo's CAMERA_FEEDBACK (ArduPilot) or CAMERA_IMAGE_CAPTURED (MAVLink camera protocol), so that a
frame or photo becomes a CameraPose. ATTITUDE and CAMERA_FEEDBACK carry the VEHICLE's attitude
(ArduPilot fills CAMERA_FEEDBACK from its AHRS), so the camera's mounting (default: straight down,
photo top towards the nose) is applied to them; CAMERA_IMAGE_CAPTURED's quaternion is the camera's
own orientation in NED, and GIMBAL_DEVICE_ATTITUDE_STATUS's that of a gimbal's camera (roll and
pitch against the horizon, yaw against north or the vehicle's heading, as its flags say).

A video frame waits in a queue before it is processed while the vehicle moves on, so its pose is
taken when it is grabbed: ``snapshot(max_age_s)`` gives a FrameTelemetry (JSON-ready, recorded with
the frame), which later becomes the frame's CameraPose with ``FrameTelemetry.pose``.

Out: MavlinkSender sends, per detection, a STATUSTEXT alert (shown by QGroundControl and Mission
Planner), a CAMERA_TRACKING_GEO_STATUS with the person's position and accuracy, and
optionally the Lacmus dialect's LACMUS_OBJECT_DETECTED (id 7000). pymavlink has no Lacmus dialect,
so that message is built here byte by byte from its definition (MAVLink 2 framing, CRC-16/MCRF4XX
with the message's CRC_EXTRA); a ground station needs the Lacmus dialect to decode it. It sends a
HEARTBEAT every second, without which ground stations ignore a component.

Needs pymavlink (extra ``mavlink``), imported when a listener or sender is made.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..geo.pose import CameraPose, PoseError, PoseOverrides, rotation_from_quaternion, rotation_ypr
from ..geo.profiles import profile_by_name

DIALECT = "ardupilotmega"  # common + ArduPilot's CAMERA_FEEDBACK
MAV_COMP_ID_ONBOARD_COMPUTER = 191
MAV_TYPE_ONBOARD_CONTROLLER = 18
MAV_AUTOPILOT_INVALID = 8
MAV_STATE_ACTIVE = 4
MAV_SEVERITY_ALERT = 1
CAMERA_TRACKING_STATUS_FLAGS_ACTIVE = 1
STATUSTEXT_MAX = 50
GIMBAL_DEVICE_FLAGS_YAW_LOCK = 16
GIMBAL_DEVICE_FLAGS_YAW_IN_VEHICLE_FRAME = 32
GIMBAL_DEVICE_FLAGS_YAW_IN_EARTH_FRAME = 64


def _mavutil():
    # pymavlink picks its wire protocol from this variable when it loads a dialect; messages above
    # id 255 (CAMERA_IMAGE_CAPTURED, CAMERA_TRACKING_GEO_STATUS) exist only in MAVLink 2.
    os.environ.setdefault("MAVLINK20", "1")
    try:
        from pymavlink import mavutil
    except ImportError as exc:
        raise ImportError("MAVLink needs pymavlink: pip install 'edgetile[mavlink]'") from exc
    return mavutil


# ---- LACMUS_OBJECT_DETECTED, from the Lacmus onboard prototype's lacmus.xml (id 7000) ----

LACMUS_MSG_ID = 7000
LACMUS_MSG_NAME = "LACMUS_OBJECT_DETECTED"
# (type, name, array length or 0) in the definition's order
LACMUS_FIELDS = (
    ("uint32_t", "time_boot_ms", 0),
    ("uint64_t", "time_utc", 0),
    ("uint8_t", "camera_id", 0),
    ("int32_t", "lat", 0),
    ("int32_t", "lon", 0),
    ("int32_t", "alt", 0),
    ("int32_t", "relative_alt", 0),
    ("int32_t", "source_image_index", 0),
    ("uint16_t", "bbox", 4),
    ("char", "file_url", 205),
)
_STRUCT = {
    "uint64_t": ("Q", 8),
    "int64_t": ("q", 8),
    "double": ("d", 8),
    "uint32_t": ("I", 4),
    "int32_t": ("i", 4),
    "float": ("f", 4),
    "uint16_t": ("H", 2),
    "int16_t": ("h", 2),
    "uint8_t": ("B", 1),
    "int8_t": ("b", 1),
    "char": ("s", 1),
}


def x25crc(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/MCRF4XX, MAVLink's checksum."""
    for b in data:
        tmp = (b ^ crc) & 0xFF
        tmp = (tmp ^ (tmp << 4)) & 0xFF
        crc = ((crc >> 8) ^ (tmp << 8) ^ (tmp << 3) ^ (tmp >> 4)) & 0xFFFF
    return crc


def wire_order(fields: tuple[tuple[str, str, int], ...]) -> list[tuple[str, str, int]]:
    """MAVLink's wire order: by element size, largest first, stable (extension fields aside)."""
    return sorted(fields, key=lambda f: -_STRUCT[f[0]][1])


def crc_extra(name: str, fields: tuple[tuple[str, str, int], ...]) -> int:
    """The CRC_EXTRA byte of a message definition, computed as mavgen does."""
    crc = x25crc(f"{name} ".encode())
    for ftype, fname, n in wire_order(fields):
        crc = x25crc(f"{ftype} ".encode(), crc)
        crc = x25crc(f"{fname} ".encode(), crc)
        if n:
            crc = x25crc(bytes([n]), crc)
    return (crc & 0xFF) ^ (crc >> 8)


def mavlink2_frame(
    msg_id: int, payload: bytes, seq: int, system_id: int, component_id: int, extra: int
) -> bytes:
    """A MAVLink 2 packet (unsigned), with the payload's trailing zero bytes trimmed as the protocol requires."""
    trimmed = payload.rstrip(b"\x00") or payload[:1]
    header = struct.pack(
        "<BBBBBBB", len(trimmed), 0, 0, seq & 0xFF, system_id, component_id, msg_id & 0xFF
    ) + struct.pack("<H", msg_id >> 8)
    crc = x25crc(bytes([extra]), x25crc(header + trimmed))
    return b"\xfd" + header + trimmed + struct.pack("<H", crc)


def encode_lacmus_object_detected(
    values: dict, seq: int = 0, system_id: int = 1, component_id: int = MAV_COMP_ID_ONBOARD_COMPUTER
) -> bytes:
    """A LACMUS_OBJECT_DETECTED packet.

    Args:
        values: time_boot_ms, time_utc, camera_id, lat, lon (degE7), alt, relative_alt (mm),
            source_image_index, bbox (4 uint16 pixels), file_url (str or bytes, at most 205 bytes).
        seq: Packet sequence number.

    Raises:
        ValueError: A value outside its field's range.
    """
    parts = []
    for ftype, name, n in wire_order(LACMUS_FIELDS):
        code, size = _STRUCT[ftype]
        v = values.get(name, b"" if ftype == "char" else ([0] * n if n else 0))
        if ftype == "char":
            raw = v.encode() if isinstance(v, str) else bytes(v)
            if len(raw) > n:
                raise ValueError(f"{name}: expected at most {n} bytes, found {len(raw)}")
            parts.append(raw.ljust(n, b"\x00"))
            continue
        seq_v = list(v) if n else [v]
        if len(seq_v) != max(n, 1):
            raise ValueError(f"{name}: expected {max(n, 1)} value(s), found {len(seq_v)}")
        try:
            parts.append(struct.pack(f"<{max(n, 1)}{code}", *(int(x) for x in seq_v)))
        except struct.error as exc:
            raise ValueError(f"{name}: {seq_v} does not fit {ftype}") from exc
    return mavlink2_frame(
        LACMUS_MSG_ID,
        b"".join(parts),
        seq,
        system_id,
        component_id,
        crc_extra(LACMUS_MSG_NAME, LACMUS_FIELDS),
    )


# ---- in: the vehicle's pose ----


@dataclass
class CameraCapture:
    """One photo as the autopilot or camera reported it.

    Attributes:
        index: Image index (CAMERA_FEEDBACK img_idx, CAMERA_IMAGE_CAPTURED image_index).
        lat: Latitude in degrees.
        lon: Longitude in degrees.
        alt_msl_m: Altitude above sea level, metres.
        relative_alt_m: Altitude above home (take-off), metres.
        rotation: (3, 3) camera -> NED rotation, or None when the message had no orientation.
        source: The message type.
        file_url: File name or URL (CAMERA_IMAGE_CAPTURED), or "".
        time_usec: The message's timestamp in microseconds (UTC for both messages), 0 when unknown.
    """

    index: int
    lat: float
    lon: float
    alt_msl_m: float
    relative_alt_m: float
    rotation: np.ndarray | None
    source: str
    file_url: str = ""
    time_usec: int = 0


@dataclass(frozen=True, eq=False)
class FrameTelemetry:
    """The vehicle's telemetry at the moment a video frame was grabbed: what the frame's pose is made of.

    Recorded with the frame (``to_dict``/``from_dict`` round-trip through JSON) because the frame
    may wait in a queue, across a restart, while the vehicle moves on.

    Attributes:
        lat: Vehicle latitude, degrees (GLOBAL_POSITION_INT).
        lon: Vehicle longitude, degrees.
        alt_msl_m: Altitude above sea level, metres.
        relative_alt_m: Altitude above home (take-off), metres.
        rotation: (3, 3) camera (forward, right, down) -> NED rotation.
        attitude_source: Where the rotation came from, for the outputs.
        position_age_s: Age of the GLOBAL_POSITION_INT when the frame was grabbed, seconds.
        attitude_age_s: Age of the oldest attitude message the rotation used, seconds.
        grabbed_at: When the frame was grabbed, seconds since the Unix epoch.
        link: The MAVLink connection string it came from.
    """

    lat: float
    lon: float
    alt_msl_m: float
    relative_alt_m: float
    rotation: np.ndarray
    attitude_source: str
    position_age_s: float
    attitude_age_s: float
    grabbed_at: float
    link: str = ""

    def to_dict(self) -> dict:
        """JSON-ready values (the rotation as 3 rows of 3 floats)."""
        return {
            "lat": self.lat,
            "lon": self.lon,
            "alt_msl_m": self.alt_msl_m,
            "relative_alt_m": self.relative_alt_m,
            "rotation": np.asarray(self.rotation, np.float64).tolist(),
            "attitude_source": self.attitude_source,
            "position_age_s": round(self.position_age_s, 4),
            "attitude_age_s": round(self.attitude_age_s, 4),
            "grabbed_at": self.grabbed_at,
            "link": self.link,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FrameTelemetry:
        """The inverse of to_dict.

        Raises:
            ValueError: A missing key or a rotation that is not 3x3.
        """
        try:
            rot = np.asarray(d["rotation"], np.float64)
            if rot.shape != (3, 3):
                raise ValueError(f"rotation: expected 3 rows of 3 numbers, found shape {rot.shape}")
            return cls(
                float(d["lat"]),
                float(d["lon"]),
                float(d["alt_msl_m"]),
                float(d["relative_alt_m"]),
                rot,
                str(d["attitude_source"]),
                float(d["position_age_s"]),
                float(d["attitude_age_s"]),
                float(d["grabbed_at"]),
                str(d.get("link", "")),
            )
        except KeyError as exc:
            raise ValueError(
                f"frame telemetry: expected the key {exc.args[0]!r}, found only {sorted(d)}"
            ) from None

    def pose(
        self,
        width: int,
        height: int,
        overrides: PoseOverrides | None = None,
        cx: float | None = None,
        cy: float | None = None,
    ) -> CameraPose:
        """The frame's camera pose: this telemetry, and intrinsics and height rules from the overrides.

        A video frame has no EXIF, so the focal length must be given (``focal_px``, else the
        ``camera`` profile scaled to the frame's width). Height above ground, first found:
        ``height_above_ground``; the altitude above sea level minus ``ground_alt``; the altitude
        above home minus ``ground_above_takeoff`` (as for photos: home is not the ground under the
        camera). The attitude is the recorded one; yaw/pitch/roll overrides are not applied to it.

        Raises:
            PoseError: No focal length given, or the camera is not above the ground.
        """
        o = overrides or PoseOverrides()
        if o.focal_px is not None:
            focal, intrinsics = o.focal_px, "--focal-px"
        elif o.camera is not None:
            prof = profile_by_name(o.camera)
            focal, intrinsics = prof.focal_px(width), f"--camera {prof.name} (nominal)"
        else:
            raise PoseError("no focal length: a video frame has no EXIF; pass --focal-px or --camera")
        if o.height_above_ground is not None:
            agl, height_src = o.height_above_ground, "--height-above-ground"
        elif o.ground_alt is not None:
            agl = self.alt_msl_m - o.ground_alt
            height_src = f"GLOBAL_POSITION_INT alt {self.alt_msl_m:.2f} m - --ground-alt {o.ground_alt:.2f} m"
        else:
            agl = self.relative_alt_m - o.ground_above_takeoff
            height_src = (
                f"GLOBAL_POSITION_INT relative_alt {self.relative_alt_m:.2f} m - ground "
                f"{o.ground_above_takeoff:.2f} m above home"
                + (
                    " (assumed: pass --ground-above-takeoff or --ground-alt)"
                    if o.ground_above_takeoff == 0.0
                    else ""
                )
            )
        return CameraPose(
            self.lat,
            self.lon,
            agl,
            self.rotation,
            focal,
            width / 2.0 if cx is None else cx,
            height / 2.0 if cy is None else cy,
            width,
            height,
            self.alt_msl_m,
            {
                "position": f"MAVLink GLOBAL_POSITION_INT ({self.position_age_s:.2f} s old at grab)",
                "height": height_src,
                "attitude": f"{self.attitude_source} ({self.attitude_age_s:.2f} s old at grab)",
                "intrinsics": intrinsics,
            },
        )


@dataclass
class _State:
    position: dict | None = None
    attitude: tuple[float, float, float] | None = None  # roll, pitch, yaw in radians (vehicle, NED)
    attitude_received: float = 0.0  # time.monotonic() of the latest ATTITUDE
    gimbal: tuple[np.ndarray, bool, float] | None = None  # camera rotation, yaw in earth frame?, received
    captures: list[CameraCapture] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class MavlinkTelemetry:
    """Listens to a vehicle in a background thread and turns its telemetry into camera poses.

    Args:
        url: pymavlink connection string, e.g. "udpin:0.0.0.0:14550" (listen for the autopilot's
            UDP stream), "/dev/ttyTHS1,921600" (a Jetson's UART), "tcp:127.0.0.1:5760".
        mount_ypr: The camera's mounting relative to the vehicle body in degrees (yaw, pitch, roll);
            default (0, -90, 0): straight down, photo top towards the nose.
        max_captures: Most capture events kept (oldest dropped).
        source_system: Our own system id on the link.
    """

    def __init__(
        self,
        url: str = "udpin:0.0.0.0:14550",
        mount_ypr: tuple[float, float, float] = (0.0, -90.0, 0.0),
        max_captures: int = 10000,
        source_system: int = 1,
    ) -> None:
        mavutil = _mavutil()
        self.url = url
        self.mount = rotation_ypr(*mount_ypr)
        self.max_captures = max_captures
        self._conn = mavutil.mavlink_connection(
            url, dialect=DIALECT, source_system=source_system, source_component=MAV_COMP_ID_ONBOARD_COMPUTER
        )
        self._state = _State()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgetile-mavlink-in", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._conn.recv_match(blocking=True, timeout=0.2)
                if msg is not None:
                    self._handle(msg)
        except (OSError, ValueError) as exc:  # the link itself failed: kept and raised to the caller
            if not self._stop.is_set():
                self.error = exc
                with self._cond:
                    self._cond.notify_all()

    def _handle(self, msg) -> None:
        t = msg.get_type()
        with self._cond:
            self._state.counts[t] = self._state.counts.get(t, 0) + 1
            if t == "GLOBAL_POSITION_INT":
                self._state.position = {
                    "lat": msg.lat / 1e7,
                    "lon": msg.lon / 1e7,
                    "alt_msl_m": msg.alt / 1000.0,
                    "relative_alt_m": msg.relative_alt / 1000.0,
                    "time_boot_ms": msg.time_boot_ms,
                    "received": time.monotonic(),
                }
            elif t == "ATTITUDE":
                self._state.attitude = (msg.roll, msg.pitch, msg.yaw)
                self._state.attitude_received = time.monotonic()
            elif t == "GIMBAL_DEVICE_ATTITUDE_STATUS":
                q = tuple(float(v) for v in msg.q)
                if all(math.isfinite(v) for v in q) and any(q):  # NaN or zeros: orientation unknown
                    flags = int(msg.flags)
                    earth = bool(flags & GIMBAL_DEVICE_FLAGS_YAW_IN_EARTH_FRAME) or (
                        not flags
                        & (GIMBAL_DEVICE_FLAGS_YAW_IN_EARTH_FRAME | GIMBAL_DEVICE_FLAGS_YAW_IN_VEHICLE_FRAME)
                        and bool(flags & GIMBAL_DEVICE_FLAGS_YAW_LOCK)
                    )  # the protocol's rule for older gimbals
                    self._state.gimbal = (rotation_from_quaternion(*q), earth, time.monotonic())
            elif t == "CAMERA_FEEDBACK":
                body = rotation_ypr(msg.yaw, msg.pitch, msg.roll)
                self._add_capture(
                    CameraCapture(
                        msg.img_idx,
                        msg.lat / 1e7,
                        msg.lng / 1e7,
                        msg.alt_msl,
                        msg.alt_rel,
                        body @ self.mount,
                        t,
                        "",
                        int(msg.time_usec),
                    )
                )
            elif t == "CAMERA_IMAGE_CAPTURED":
                q = tuple(msg.q)
                rot = None if not any(q) else rotation_from_quaternion(*q)
                url = (
                    msg.file_url
                    if isinstance(msg.file_url, str)
                    else bytes(msg.file_url).decode("utf-8", "replace")
                )
                self._add_capture(
                    CameraCapture(
                        msg.image_index,
                        msg.lat / 1e7,
                        msg.lon / 1e7,
                        msg.alt / 1000.0,
                        msg.relative_alt / 1000.0,
                        rot,
                        t,
                        url.rstrip("\x00"),
                        int(msg.time_utc),
                    )
                )
            self._cond.notify_all()

    def _add_capture(self, c: CameraCapture) -> None:
        caps = self._state.captures
        caps.append(c)
        if len(caps) > self.max_captures:
            del caps[: len(caps) - self.max_captures]

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"MAVLink link {self.url} failed: {self.error}") from self.error

    def counts(self) -> dict[str, int]:
        """How many messages of each type were received."""
        with self._lock:
            return dict(self._state.counts)

    def wait_for(self, ready: Callable[[MavlinkTelemetry], bool], timeout_s: float) -> bool:
        """Wait until ready(self) holds (evaluated on each message); False after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check()
            if ready(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                self._cond.wait(min(left, 0.2))

    def capture(self, index: int | None = None, file_url: str | None = None) -> CameraCapture | None:
        """The latest capture with this index (or whose file URL ends with file_url), or None."""
        with self._lock:
            for c in reversed(self._state.captures):
                if (index is not None and c.index == index) or (file_url and c.file_url.endswith(file_url)):
                    return c
        return None

    def snapshot(self, max_age_s: float | None = None) -> FrameTelemetry:
        """The vehicle's position and the camera's attitude now, for a frame grabbed now.

        The camera's attitude is the gimbal's (GIMBAL_DEVICE_ATTITUDE_STATUS; a yaw in the vehicle
        frame is turned by the vehicle's ATTITUDE yaw) once a gimbal has reported, else the
        vehicle's ATTITUDE times the camera mount.

        Args:
            max_age_s: Refuse messages older than this (seconds since they were received); None
                accepts any age.

        Raises:
            PoseError: No position or attitude yet, one of them older than max_age_s, or the link
                failed. The message names what is missing and no numbers that change per frame.
        """
        if self.error is not None:
            raise PoseError(f"the MAVLink link {self.url} failed: {self.error}")
        now = time.monotonic()
        with self._lock:
            pos, att, att_t, gimbal = (
                self._state.position,
                self._state.attitude,
                self._state.attitude_received,
                self._state.gimbal,
            )
        missing = [name for name, v in (("GLOBAL_POSITION_INT", pos), ("ATTITUDE", att)) if v is None]
        if gimbal is not None and gimbal[1]:
            missing = [m for m in missing if m != "ATTITUDE"]  # an earth-frame gimbal needs no vehicle yaw
        if missing:
            raise PoseError(
                f"no vehicle pose from MAVLink yet ({', '.join('no ' + m for m in missing)} received "
                f"on {self.url})"
            )

        def stale(what: str, received: float) -> None:
            if max_age_s is not None and now - received > max_age_s:
                raise PoseError(
                    f"the latest {what} on {self.url} is older than {max_age_s:g} s (--mavlink-max-age)"
                )

        stale("GLOBAL_POSITION_INT", pos["received"])
        ages = []
        if gimbal is not None:
            rot, earth, g_t = gimbal
            stale("GIMBAL_DEVICE_ATTITUDE_STATUS", g_t)
            ages.append(now - g_t)
            if earth:
                source = "MAVLink GIMBAL_DEVICE_ATTITUDE_STATUS (yaw from north)"
            else:
                stale("ATTITUDE", att_t)
                ages.append(now - att_t)
                rot = rotation_ypr(math.degrees(att[2]), 0.0, 0.0) @ rot
                source = "MAVLink GIMBAL_DEVICE_ATTITUDE_STATUS (yaw from the heading in ATTITUDE)"
        else:
            stale("ATTITUDE", att_t)
            ages.append(now - att_t)
            roll, pitch, yaw = (math.degrees(v) for v in att)
            rot = rotation_ypr(yaw, pitch, roll) @ self.mount
            source = "MAVLink ATTITUDE x camera mount"
        return FrameTelemetry(
            pos["lat"],
            pos["lon"],
            pos["alt_msl_m"],
            pos["relative_alt_m"],
            rot,
            source,
            now - pos["received"],
            max(ages),
            time.time(),
            self.url,
        )

    def pose_now(
        self,
        width: int,
        height: int,
        focal_px: float,
        cx: float | None = None,
        cy: float | None = None,
        ground_above_takeoff: float = 0.0,
        max_age_s: float | None = None,
    ) -> CameraPose:
        """The camera's pose from the latest telemetry (see snapshot), for a live frame.

        Raises:
            PoseError: No position or attitude received yet (or older than max_age_s), or the
                camera is not above the ground.
        """
        overrides = PoseOverrides(focal_px=focal_px, ground_above_takeoff=ground_above_takeoff)
        return self.snapshot(max_age_s).pose(width, height, overrides, cx, cy)

    def pose_for_capture(
        self,
        capture: CameraCapture,
        width: int,
        height: int,
        focal_px: float,
        cx: float | None = None,
        cy: float | None = None,
        ground_above_takeoff: float = 0.0,
    ) -> CameraPose:
        """The camera's pose for one reported photo; without an orientation in the message, the
        latest ATTITUDE with the camera mount stands in.

        Raises:
            PoseError: No orientation known, or the camera is not above the ground.
        """
        rot, att_src = capture.rotation, f"MAVLink {capture.source}"
        if rot is None:
            with self._lock:
                att = self._state.attitude
            if att is None:
                raise PoseError(
                    f"capture {capture.index}: {capture.source} has no orientation and no ATTITUDE "
                    f"was received"
                )
            roll, pitch, yaw = (math.degrees(v) for v in att)
            rot, att_src = rotation_ypr(yaw, pitch, roll) @ self.mount, "MAVLink ATTITUDE x camera mount"
        return CameraPose(
            capture.lat,
            capture.lon,
            capture.relative_alt_m - ground_above_takeoff,
            rot,
            focal_px,
            width / 2.0 if cx is None else cx,
            height / 2.0 if cy is None else cy,
            width,
            height,
            capture.alt_msl_m,
            {
                "position": f"MAVLink {capture.source}",
                "height": f"relative altitude - ground {ground_above_takeoff:.2f} m above home",
                "attitude": att_src,
                "intrinsics": "given",
            },
        )

    def close(self) -> None:
        """Stop listening and close the link. Safe to call twice."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> MavlinkTelemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- out: detections to the ground station ----


class MavlinkSender:
    """Sends detections to a ground station.

    Args:
        url: pymavlink connection string, e.g. "udpout:192.168.1.10:14550" (a ground station's
            laptop), or a telemetry radio's serial port.
        system_id: Our system id: the vehicle's (1) so that the ground station groups us with it.
        component_id: Our component id (191: onboard computer).
        heartbeat_s: Seconds between HEARTBEATs (0: none; ground stations then ignore us).
        severity: STATUSTEXT severity (1 ALERT, the most prominent short of an emergency; 5 NOTICE).
        lacmus: Also send LACMUS_OBJECT_DETECTED (a receiver needs the Lacmus dialect).
        lacmus_position: "target" puts the person's position in its lat/lon (what a search needs;
            the prototype's field text says "where image was taken"); "camera" the camera's.
    """

    def __init__(
        self,
        url: str,
        system_id: int = 1,
        component_id: int = MAV_COMP_ID_ONBOARD_COMPUTER,
        heartbeat_s: float = 1.0,
        severity: int = MAV_SEVERITY_ALERT,
        lacmus: bool = False,
        lacmus_position: str = "target",
    ) -> None:
        mavutil = _mavutil()
        if lacmus_position not in ("target", "camera"):
            raise ValueError(f"lacmus_position: expected 'target' or 'camera', found {lacmus_position!r}")
        if not 0 <= severity <= 7:
            raise ValueError(f"severity: expected a MAV_SEVERITY in 0..7, found {severity}")
        self.url = url
        self._conn = mavutil.mavlink_connection(
            url, dialect=DIALECT, source_system=system_id, source_component=component_id
        )
        self.system_id, self.component_id = system_id, component_id
        self.severity = severity
        self.lacmus, self.lacmus_position = lacmus, lacmus_position
        self._lock = threading.Lock()  # one writer at a time: the heartbeat thread and send_detection
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self.sent = 0
        self._hb = None
        if heartbeat_s > 0:
            self.heartbeat()
            self._hb = threading.Thread(
                target=self._heartbeats, args=(heartbeat_s,), name="edgetile-mavlink-hb", daemon=True
            )
            self._hb.start()

    def heartbeat(self) -> None:
        """Send one HEARTBEAT (an onboard controller, active)."""
        with self._lock:
            self._conn.mav.heartbeat_send(
                MAV_TYPE_ONBOARD_CONTROLLER, MAV_AUTOPILOT_INVALID, 0, 0, MAV_STATE_ACTIVE
            )

    def _heartbeats(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.heartbeat()

    @staticmethod
    def alert_text(det: dict) -> str:
        """The STATUSTEXT line (at most 50 ASCII characters): class, score, position, accuracy."""
        head = f"{det.get('class_name', 'object')} {float(det.get('score', 0)):.0%}"
        if det.get("lat") is None:
            text = f"{head} (no position)"
        else:
            err = det.get("error_m")
            text = f"{head} {det['lat']:.6f},{det['lon']:.6f}" + (f" +-{err:.0f}m" if err is not None else "")
        return text.encode("ascii", "replace").decode()[:STATUSTEXT_MAX]

    def send_text(self, text: str) -> None:
        """Send one STATUSTEXT at the sender's severity (ASCII, cut to 50 characters)."""
        with self._lock:
            self._conn.mav.statustext_send(self.severity, text.encode("ascii", "replace")[:STATUSTEXT_MAX])
        self.sent += 1

    def send_detection(
        self,
        det: dict,
        image_index: int = 0,
        camera: CameraPose | None = None,
        file_url: str = "",
        time_utc_us: int | None = None,
    ) -> int:
        """Send one detection: STATUSTEXT, then (with a position) CAMERA_TRACKING_GEO_STATUS, then
        (when enabled) LACMUS_OBJECT_DETECTED.

        Args:
            det: A detection record: bbox, score, class_name, and lat, lon, error_m, ground_alt_m,
                distance_m when georeferenced.
            image_index: Index of the photo or frame.
            camera: The photo's camera, for distances and the Lacmus message's camera fields.
            file_url: Where the photo or its thumbnail can be fetched.
            time_utc_us: Capture time, microseconds since the Unix epoch (default: now).

        Returns:
            How many messages were sent.
        """
        n = 0
        nan = float("nan")
        with self._lock:
            self._conn.mav.statustext_send(self.severity, self.alert_text(det).encode())
            n += 1
            if det.get("lat") is not None:
                dist = nan
                if det.get("distance_m") is not None and camera is not None:
                    dist = math.hypot(det["distance_m"], camera.agl_m)
                alt = det.get("ground_alt_m")
                self._conn.mav.camera_tracking_geo_status_send(
                    CAMERA_TRACKING_STATUS_FLAGS_ACTIVE,
                    int(round(det["lat"] * 1e7)),
                    int(round(det["lon"] * 1e7)),
                    nan if alt is None else float(alt),
                    nan if det.get("error_m") is None else float(det["error_m"]),
                    nan,
                    nan,
                    nan,
                    nan,
                    nan,
                    dist,
                    nan,
                    nan,
                )
                n += 1
            if self.lacmus:
                self._conn.write(self._lacmus_packet(det, image_index, camera, file_url, time_utc_us))
                n += 1
        self.sent += n
        return n

    def _lacmus_packet(
        self, det: dict, image_index: int, camera: CameraPose | None, file_url: str, time_utc_us: int | None
    ) -> bytes:
        if self.lacmus_position == "target" and det.get("lat") is not None:
            lat, lon = det["lat"], det["lon"]
            alt = det.get("ground_alt_m")
        elif camera is not None:
            lat, lon, alt = camera.lat, camera.lon, camera.abs_alt_m
        else:
            lat = lon = 0.0
            alt = None
        x1, y1, x2, y2 = (min(65535, max(0, int(round(v)))) for v in det["bbox"])
        mav = self._conn.mav
        seq = mav.seq
        mav.seq = (seq + 1) % 256  # one sequence across all our messages, as pymavlink keeps it
        return encode_lacmus_object_detected(
            {
                "time_boot_ms": int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF,
                "time_utc": int(time.time() * 1e6) if time_utc_us is None else int(time_utc_us),
                "camera_id": 1,
                "lat": int(round(lat * 1e7)),
                "lon": int(round(lon * 1e7)),
                "alt": 0 if alt is None else int(round(alt * 1000)),
                "relative_alt": 0 if camera is None else int(round(camera.agl_m * 1000)),
                "source_image_index": int(image_index),
                "bbox": (x1, y1, x2, y2),
                "file_url": file_url.encode()[:205],
            },
            seq,
            self.system_id,
            self.component_id,
        )

    def close(self) -> None:
        """Stop the heartbeats and close the link. Safe to call twice."""
        self._stop.set()
        if self._hb is not None:
            self._hb.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> MavlinkSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
