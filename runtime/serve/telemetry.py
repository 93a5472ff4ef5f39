"""What the daemon reports on /metrics: queue counts, per-stage latency histograms, Jetson sensors.

The Prometheus text format is written here directly (it is a few lines of text), so the daemon needs
no metrics library. Sensors are read from sysfs where present: thermal zones
(``/sys/class/thermal/thermal_zone*/{type,temp}``, millidegrees) everywhere Linux has them, and the
INA3221 power monitors of Jetson modules through hwmon (``/sys/class/hwmon/hwmon*/`` named
``ina3221``: ``in{N}_label``, ``in{N}_input`` in mV, ``curr{N}_input`` in mA; JetPack 5 and 6). A machine
without them simply reports none.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Seconds; photos take from milliseconds (small frames) to seconds (4000x3000 on a Nano).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StageHistograms:
    """Latency histograms, one per pipeline stage, safe to update from one thread and read from others.

    Args:
        buckets: Upper bounds in seconds, increasing.
    """

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets:
            raise ValueError(f"buckets: expected increasing upper bounds, found {self.buckets}")
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, stage: str, seconds: float) -> None:
        """Count one duration of ``stage``."""
        i = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            counts = self._counts.setdefault(stage, [0] * (len(self.buckets) + 1))
            counts[i] += 1
            self._sums[stage] = self._sums.get(stage, 0.0) + seconds

    def observe_ms(self, timings_ms: Mapping[str, float]) -> None:
        """Count every stage of one photo's timings (milliseconds, as Detector.detect reports them)."""
        for stage, ms in timings_ms.items():
            self.observe(stage, ms / 1000.0)

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """stage -> (per-bucket counts with +Inf last, sum of seconds)."""
        with self._lock:
            return {k: (list(v), self._sums[k]) for k, v in self._counts.items()}


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: a power rail of the module."""

    name: str
    volts: float
    amperes: float

    @property
    def watts(self) -> float:
        return self.volts * self.amperes


@dataclass(frozen=True)
class Sensors:
    """Temperatures (zone -> (type, Celsius)) and power rails read from sysfs."""

    temperatures: dict[str, tuple[str, float]]
    rails: list[Rail]


def _read_text(path: Path) -> str | None:
    # Some Jetson zones and rails refuse reads (EINVAL, ENODATA) while powered down; that sensor is
    # then absent from this scrape, which is what Prometheus expects of a missing reading.
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_sensors(sysfs: str | Path = "/sys") -> Sensors:
    """Read thermal zones and INA3221 rails under a sysfs root; whatever is absent is left out.

    Args:
        sysfs: The sysfs mount point (a copy of one in tests).
    """
    root = Path(sysfs)
    temps: dict[str, tuple[str, float]] = {}
    thermal = root / "class" / "thermal"
    for zone in sorted(thermal.glob("thermal_zone*")) if thermal.is_dir() else []:
        kind, raw = _read_text(zone / "type"), _read_text(zone / "temp")
        try:
            milli = int(raw) if raw is not None else None
        except ValueError:
            milli = None
        if milli is not None:
            temps[zone.name] = (kind or zone.name, milli / 1000.0)
    rails: list[Rail] = []
    hwmon = root / "class" / "hwmon"
    for mon in sorted(hwmon.glob("hwmon*")) if hwmon.is_dir() else []:
        if _read_text(mon / "name") != "ina3221":
            continue
        for volt_file in sorted(mon.glob("in*_input")):
            n = volt_file.name[2 : -len("_input")]
            if not n.isdigit():
                continue
            label = _read_text(mon / f"in{n}_label") or f"{mon.name}_in{n}"
            if label.upper() == "NC" or _read_text(mon / f"in{n}_enable") == "0":
                continue  # channel not connected or switched off
            mv, ma = _read_text(volt_file), _read_text(mon / f"curr{n}_input")
            if mv is None or ma is None:
                continue  # this channel could not be read this time
            try:
                rails.append(Rail(label, int(mv) / 1000.0, int(ma) / 1000.0))
            except ValueError:
                continue  # this channel gave no number this time
    return Sensors(temps, rails)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def render_prometheus(
    counts: Mapping[str, int],
    histograms: StageHistograms,
    sensors: Sensors,
    retries: int,
    started_at: float,
    version: str,
    storage: Mapping[str, int] | None = None,
    mqtt: Mapping[str, int] | None = None,
) -> str:
    """The Prometheus text exposition (format 0.0.4) of everything the daemon reports.

    Args:
        counts: Items per queue state (queued, running, done, parked).
        histograms: Per-stage latencies of this run.
        sensors: Jetson temperatures and rails.
        retries: Failed attempts this run that were queued again.
        started_at: time.time() when the daemon started.
        version: edgetile version.
        storage: The daemon's own copies and disk: held_files, held_bytes, removed_files,
            removed_bytes (all runs, from the queue), free_bytes (now), frames_skipped (this run);
            None leaves these metrics out.
        mqtt: The MQTT outbox: waiting, dropped (all runs), published (this run), connected (0 or
            1); None (no --mqtt) leaves these metrics out.
    """
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {_fmt(value)}")

    metric(
        "edgetile_build_info",
        "gauge",
        "edgetile version of the running daemon.",
        [(f'{{version="{_escape(version)}"}}', 1)],
    )
    metric(
        "edgetile_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        [("", round(time.time() - started_at, 3))],
    )
    metric(
        "edgetile_queue_depth",
        "gauge",
        "Inputs waiting or being processed.",
        [("", counts.get("queued", 0) + counts.get("running", 0))],
    )
    metric(
        "edgetile_queue_items",
        "gauge",
        "Inputs in the queue database by state.",
        [(f'{{state="{s}"}}', n) for s, n in sorted(counts.items())],
    )
    metric(
        "edgetile_processed_total",
        "counter",
        "Inputs processed with results (all runs, from the queue).",
        [("", counts.get("done", 0))],
    )
    metric(
        "edgetile_failed_total",
        "counter",
        "Inputs parked after failing every attempt (all runs).",
        [("", counts.get("parked", 0))],
    )
    metric(
        "edgetile_retries_total",
        "counter",
        "Failed attempts queued again for a later try (this run).",
        [("", retries)],
    )
    if storage is not None:
        metric(
            "edgetile_inputs_kept_bytes",
            "gauge",
            "Bytes of the daemon's own copies of inputs (STATE/uploads, STATE/frames) on disk.",
            [("", storage["held_bytes"])],
        )
        metric(
            "edgetile_inputs_kept_files",
            "gauge",
            "Files of the daemon's own copies of inputs on disk.",
            [("", storage["held_files"])],
        )
        metric(
            "edgetile_inputs_removed_total",
            "counter",
            "Copies of finished inputs removed by the retention (all runs; their detections stay).",
            [("", storage["removed_files"])],
        )
        metric(
            "edgetile_inputs_removed_bytes_total",
            "counter",
            "Bytes of the copies removed by the retention (all runs).",
            [("", storage["removed_bytes"])],
        )
        metric(
            "edgetile_state_free_bytes",
            "gauge",
            "Free bytes on the state folder's file system.",
            [("", storage["free_bytes"])],
        )
        metric(
            "edgetile_frames_skipped_total",
            "counter",
            "Live video frames not kept because the disk was below --min-free-mb (this run).",
            [("", storage["frames_skipped"])],
        )
    if mqtt is not None:
        metric(
            "edgetile_mqtt_connected",
            "gauge",
            "1 while the MQTT broker connection is up.",
            [("", mqtt["connected"])],
        )
        metric(
            "edgetile_mqtt_outbox_messages",
            "gauge",
            "MQTT messages committed but not yet acknowledged by the broker (kept across restarts).",
            [("", mqtt["waiting"])],
        )
        metric(
            "edgetile_mqtt_published_total",
            "counter",
            "MQTT messages acknowledged by the broker (this run).",
            [("", mqtt["published"])],
        )
        metric(
            "edgetile_mqtt_dropped_total",
            "counter",
            "MQTT messages dropped, oldest first, past --mqtt-buffer while the broker was away (all runs).",
            [("", mqtt["dropped"])],
        )
    snap = histograms.snapshot()
    lines.append("# HELP edgetile_stage_seconds Latency of each processing stage per photo (this run).")
    lines.append("# TYPE edgetile_stage_seconds histogram")
    for stage in sorted(snap):
        counts_b, total = snap[stage]
        cum = 0
        st = _escape(stage)
        for le, c in zip([*histograms.buckets, math.inf], counts_b):
            cum += c
            lines.append(f'edgetile_stage_seconds_bucket{{stage="{st}",le="{_fmt(le)}"}} {cum}')
        lines.append(f'edgetile_stage_seconds_sum{{stage="{st}"}} {_fmt(round(total, 6))}')
        lines.append(f'edgetile_stage_seconds_count{{stage="{st}"}} {cum}')
    if sensors.temperatures:
        metric(
            "edgetile_temperature_celsius",
            "gauge",
            "Thermal zone temperatures from sysfs.",
            [
                (f'{{zone="{_escape(z)}",type="{_escape(t)}"}}', c)
                for z, (t, c) in sorted(sensors.temperatures.items())
            ],
        )
    if sensors.rails:
        for name, attr, help_ in (
            ("edgetile_rail_power_watts", "watts", "Power of each INA3221 rail."),
            ("edgetile_rail_voltage_volts", "volts", "Voltage of each INA3221 rail."),
            ("edgetile_rail_current_amperes", "amperes", "Current of each INA3221 rail."),
        ):
            metric(
                name,
                "gauge",
                help_,
                [(f'{{rail="{_escape(r.name)}"}}', round(getattr(r, attr), 4)) for r in sensors.rails],
            )
    return "\n".join(lines) + "\n"
