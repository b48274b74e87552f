"""A software stand-in for IMU firmware: real v1 frames on a real pseudo-terminal.

The emulator lets the whole gateway run, be tested and be benchmarked without hardware. It
behaves like a microcontroller behind a USB serial adapter: it samples a motion source at a
fixed rate, sends HELLO, IMU_BATCH and STATUS frames, drops whole frames (and counts them)
when nobody drains its output, and can be unplugged and plugged back in while the stream
goes on.

Motion comes from a :class:`MotionSource`: a :class:`CsvRecording` of real data, or
:class:`SyntheticMotion`, a small physical model of a waist-worn IMU.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import math
import os
import re
import select
import struct
import threading
import time
import tty
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, Self, TextIO

import numpy as np
import numpy.typing as npt

from firmware_bridge.protocol.v1 import (
    ChannelInfo,
    FrameType,
    Hello,
    Status,
    encode_frame,
    hello_payload,
    imu_payload,
    status_payload,
)

__all__ = [
    "ACTIVITIES",
    "CAPTURE_MAGIC",
    "GRAVITY",
    "WIRES",
    "Capture",
    "CaptureError",
    "CaptureWriter",
    "CsvRecording",
    "DeviceEmulator",
    "MotionSource",
    "RecordingError",
    "SyntheticMotion",
    "default_scales",
    "encode_stream",
    "encode_witmotion",
    "run_simulator",
    "witmotion_packets",
]

_log = logging.getLogger(__name__)

GRAVITY = 9.80665
"""Standard gravity in m/s^2."""

_INT16_SPAN = 32768.0

# Full-scale ranges of a typical MEMS IMU configuration (e.g. ±16 g, ±2000 °/s, and a
# magnetometer's ±4900 µT), used to pick an int16 scale when the unit is known.
_UNIT_FULL_SCALE = {
    "m/s^2": 16 * GRAVITY,
    "m/s2": 16 * GRAVITY,
    "g": 16.0,
    "rad/s": math.radians(2000.0),
    "deg/s": 2000.0,
    "dps": 2000.0,
    "°/s": 2000.0,
    "ut": 4900.0,
    "µt": 4900.0,
}

# Units assumed for conventional channel names when a CSV header gives none.
_NAME_UNITS = {
    **dict.fromkeys(("ax", "ay", "az", "acc_x", "acc_y", "acc_z"), "m/s^2"),
    **dict.fromkeys(("gx", "gy", "gz", "gyr_x", "gyr_y", "gyr_z"), "rad/s"),
    **dict.fromkeys(("mx", "my", "mz"), "uT"),
}

_U32 = 0xFFFFFFFF


class MotionSource(Protocol):
    """Where an emulated device gets its samples from.

    ``read`` never runs dry: finite sources loop, so an emulator can stream for as long as a
    test or benchmark needs.
    """

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names, in sample order."""
        ...

    @property
    def units(self) -> tuple[str, ...]:
        """Physical unit of each channel."""
        ...

    @property
    def full_scale(self) -> tuple[float, ...]:
        """Largest magnitude each channel may reach; sets the int16 scale on the wire."""
        ...

    @property
    def rate_hz(self) -> float:
        """Sample rate the data was produced at."""
        ...

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """Return the next ``n`` samples as ``(n, channels)`` physical values and their labels."""
        ...


def default_scales(source: MotionSource) -> tuple[float, ...]:
    """Return a per-channel LSB size that maps each channel's full scale onto int16."""
    return tuple(full / _INT16_SPAN for full in source.full_scale)


# --------------------------------------------------------------------------------------------
# Recorded motion
# --------------------------------------------------------------------------------------------


class RecordingError(ValueError):
    """A recording file cannot be used; says which file, which line and what is wrong.

    Attributes:
        path: The file.
        line: 1-based line number of the problem, or None if it concerns the whole file.
        reason: What is wrong, in words.
    """

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


_HEADER_CELL = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<unit>[^\[\]]*)\])?$")


class _CsvHeader(NamedTuple):
    cells: list[str]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    value_columns: tuple[int, ...]
    label_index: int | None


class CsvRecording:
    """Motion recorded to CSV, replayed in a loop.

    The format (documented in ``docs/protocol.md``): a header row ``timestamp`` (seconds),
    then one column per channel named after it, optionally with a unit as ``ax[m/s^2]``,
    and an optional ``label`` column; blank lines and lines starting with ``#`` are ignored.

    Attributes:
        path: The file the recording was read from.
        channels: Channel names, in column order.
        units: Unit per channel: from the header, else by convention (``ax`` is m/s^2,
            ``gx`` is rad/s), else empty.
        full_scale: Per channel, the unit's usual IMU range or twice the recorded peak,
            whichever is larger.
        rate_hz: 1 / median interval between timestamps.
        timestamps: Timestamp of each sample, seconds.
        data: ``(n_samples, n_channels)`` float32 values.
        labels: Label of each sample, None where the label cell is empty or absent.
        has_labels: Whether the file has a ``label`` column.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Load and validate a recording.

        Raises:
            RecordingError: The file is not a valid recording.
            OSError: The file cannot be read.
        """
        self.path = Path(path)
        self._position = 0
        header, timestamps, values, labels = self._parse()
        self.channels = header.channels
        self.units = header.units
        self.has_labels = header.label_index is not None
        self.timestamps = np.array(timestamps, dtype=np.float64)
        self.data = np.array(values, dtype=np.float32).reshape(len(labels), len(self.channels))
        self.labels = labels
        self.rate_hz = float(1.0 / np.median(np.diff(self.timestamps)))
        peaks = np.abs(self.data).max(axis=0)
        self.full_scale = tuple(
            max(_UNIT_FULL_SCALE.get(unit.lower(), 0.0), 2.0 * float(peak)) or 1.0
            for unit, peak in zip(self.units, peaks, strict=True)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"CsvRecording({str(self.path)!r}, {len(self)} samples × {len(self.channels)} "
            f"channels at {self.rate_hz:.6g} Hz)"
        )

    def with_offset(self, samples: int) -> CsvRecording:
        """Return a reader of the same data that starts ``samples`` into the loop.

        The arrays are shared, so several emulated devices can replay one recording cheaply
        without streaming identical data.
        """
        other = copy.copy(self)
        other._position = samples % len(self)
        return other

    def skip(self, samples: int) -> None:
        """Move the replay position ``samples`` forward (wrapping), e.g. to start mid-recording."""
        self._position = (self._position + samples) % len(self)

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """Return the next ``n`` samples and labels, wrapping to the start at the end."""
        total = len(self)
        pieces = []
        labels: list[str | None] = []
        remaining = n
        while remaining > 0:
            start = self._position
            stop = min(total, start + remaining)
            pieces.append(self.data[start:stop])
            labels.extend(self.labels[start:stop])
            remaining -= stop - start
            self._position = stop % total
        if not pieces:
            return np.empty((0, len(self.channels)), dtype=np.float32), labels
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy(), labels

    def _fail(self, line: int | None, reason: str) -> RecordingError:
        return RecordingError(self.path, line, reason)

    def _parse(self) -> tuple[_CsvHeader, list[float], list[list[float]], list[str | None]]:
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            raise self._fail(line, f"not UTF-8 text (byte 0x{raw[err.start]:02x})") from None
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: _CsvHeader | None = None
        timestamps: list[float] = []
        values: list[list[float]] = []
        labels: list[str | None] = []
        previous_line = 0
        try:
            for row in reader:
                line = reader.line_num
                if not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                cells = [cell.strip() for cell in row]
                if header is None:
                    header = self._parse_header(cells, line)
                    continue
                if len(cells) != len(header.cells):
                    raise self._fail(
                        line,
                        f"expected {len(header.cells)} fields like the header, found {len(cells)}",
                    )
                timestamp = self._number(cells[0], "timestamp", line)
                if timestamps and timestamp <= timestamps[-1]:
                    raise self._fail(
                        line,
                        f"timestamp {cells[0]} is not after the previous one "
                        f"({timestamps[-1]:g} on line {previous_line}); timestamps must increase",
                    )
                timestamps.append(timestamp)
                previous_line = line
                values.append(
                    [
                        self._number(cells[i], f"column {header.cells[i]!r}", line)
                        for i in header.value_columns
                    ]
                )
                label = cells[header.label_index] if header.label_index is not None else ""
                labels.append(label or None)
        except csv.Error as err:
            raise self._fail(reader.line_num, f"CSV syntax error: {err}") from err
        if header is None:
            raise self._fail(None, "no header row; expected one starting with 'timestamp'")
        if len(labels) < 2:
            raise self._fail(
                None,
                f"has {len(labels)} data rows; at least 2 are needed to derive the sample rate",
            )
        return header, timestamps, values, labels

    def _parse_header(self, cells: list[str], line: int) -> _CsvHeader:
        if cells[0].lower() != "timestamp":
            raise self._fail(
                line, f"first column must be 'timestamp' (seconds), found {cells[0]!r}"
            )
        names: list[str] = []
        units: list[str] = []
        value_columns: list[int] = []
        label_index: int | None = None
        for index, cell in enumerate(cells[1:], start=1):
            if cell.lower() == "label":
                if label_index is not None:
                    raise self._fail(line, f"column {index + 1}: a second 'label' column")
                label_index = index
                continue
            match = _HEADER_CELL.match(cell)
            if match is None:
                raise self._fail(
                    line, f"column {index + 1}: {cell!r} is not a channel name or 'name[unit]'"
                )
            name = match["name"]
            if name in names:
                raise self._fail(line, f"column {index + 1}: channel {name!r} appears twice")
            unit = match["unit"]
            unit = _NAME_UNITS.get(name.lower(), "") if unit is None else unit.strip()
            for text, what in ((name, "name"), (unit, "unit")):
                if len(text.encode("utf-8")) > 0xFF:
                    raise self._fail(line, f"column {index + 1}: channel {what} over 255 bytes")
            names.append(name)
            units.append(unit)
            value_columns.append(index)
        if not names:
            raise self._fail(line, "no channel columns after 'timestamp'")
        if len(names) > 0xFF:
            raise self._fail(line, f"{len(names)} channels; the protocol carries at most 255")
        return _CsvHeader(cells, tuple(names), tuple(units), tuple(value_columns), label_index)

    def _number(self, cell: str, what: str, line: int) -> float:
        try:
            value = float(cell)
        except ValueError:
            raise self._fail(line, f"{what}: {cell!r} is not a number") from None
        if not math.isfinite(value):
            raise self._fail(line, f"{what}: {cell!r} is not a finite number")
        return value


# --------------------------------------------------------------------------------------------
# Synthetic motion
# --------------------------------------------------------------------------------------------

ACTIVITIES = ("standing", "sitting", "lying", "walking", "running")
"""Activities :class:`SyntheticMotion` can produce; also its labels."""


class _Gait:
    """Trunk motion of one gait: step rate, centre-of-mass bounce and trunk sway amplitudes."""

    __slots__ = ("ap", "impact", "ml", "pitch_deg", "roll_deg", "step_hz", "vertical_m", "yaw_deg")

    def __init__(
        self,
        *,
        step_hz: float,
        vertical_m: float,
        ap: float,
        ml: float,
        impact: float,
        pitch_deg: float,
        roll_deg: float,
        yaw_deg: float,
    ) -> None:
        self.step_hz = step_hz
        self.vertical_m = vertical_m
        self.ap = ap
        self.ml = ml
        self.impact = impact
        self.pitch_deg = pitch_deg
        self.roll_deg = roll_deg
        self.yaw_deg = yaw_deg


# Typical figures for a sensor at the lower back: the centre of mass rises and falls once
# per step, the trunk rolls and yaws once per stride (two steps).
_GAITS = {
    "walking": _Gait(
        step_hz=1.9, vertical_m=0.025, ap=1.5, ml=0.8, impact=0.25,
        pitch_deg=2.0, roll_deg=3.0, yaw_deg=5.0,
    ),
    "running": _Gait(
        step_hz=2.8, vertical_m=0.04, ap=3.0, ml=1.5, impact=0.5,
        pitch_deg=4.0, roll_deg=5.0, yaw_deg=8.0,
    ),
}  # fmt: skip


class SyntheticMotion:
    """Labelled accelerometer and gyroscope data from a simple model of a waist-worn IMU.

    Axes: x points up along the trunk when standing, y forward, z to the left. The
    accelerometer reads specific force in m/s^2 (so +9.81 on x when standing still), the
    gyroscope body rates in rad/s. Each segment of about ``segment_s`` seconds has one
    activity: still postures (standing, sitting reclined, lying on the back or a side) with
    postural sway and sensor noise, or walking / running with a per-step bounce of the
    centre of mass and per-stride trunk sway. Orientation and angular rate come from the
    same angle trajectories, so gravity on the accelerometer moves consistently with the
    gyroscope; motion fades out and in around each change, as people pause between
    activities. The output depends only on ``seed``, not on how it is read.

    Attributes:
        channels: ``("ax", "ay", "az", "gx", "gy", "gz")``.
        units: m/s^2 for accel, rad/s for gyro.
        full_scale: ±16 g and ±2000 °/s, a common IMU configuration.
        rate_hz: Sample rate.
        activities: Activities segments are drawn from.
    """

    channels = ("ax", "ay", "az", "gx", "gy", "gz")
    units = ("m/s^2",) * 3 + ("rad/s",) * 3
    full_scale = (16 * GRAVITY,) * 3 + (math.radians(2000.0),) * 3

    _TRANSITION_S = 1.0
    _ACCEL_NOISE = 0.03
    _GYRO_NOISE = 0.005

    def __init__(
        self,
        rate_hz: float = 100.0,
        seed: int = 0,
        *,
        activities: Sequence[str] = ACTIVITIES,
        segment_s: float = 30.0,
    ) -> None:
        """Set up the generator.

        Args:
            rate_hz: Sample rate.
            seed: Seed of everything random; equal seeds give equal data.
            activities: Names from :data:`ACTIVITIES` to draw segments from.
            segment_s: Mean segment length; actual lengths vary by ±25 %.

        Raises:
            ValueError: An argument is out of range or an activity is unknown.
        """
        if not rate_hz > 0 or not math.isfinite(rate_hz):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz}")
        if not segment_s > 0:
            raise ValueError(f"segment_s must be positive, got {segment_s}")
        unknown = [name for name in activities if name not in ACTIVITIES]
        if unknown or not activities:
            raise ValueError(
                f"activities must be a non-empty subset of {ACTIVITIES}, got {unknown}"
            )
        self.rate_hz = float(rate_hz)
        self.activities = tuple(activities)
        self.segment_s = float(segment_s)
        self._rng = np.random.default_rng(seed)
        self._gyro_bias = self._rng.normal(0.0, 0.01, 3)
        self._activity: str | None = None
        self._posture = (0.0, 0.0)  # (pitch, roll) in radians at the end of the last segment
        self._segment = np.empty((0, 6), dtype=np.float32)
        self._label = ""
        self._position = 0

    def __repr__(self) -> str:
        return f"SyntheticMotion(rate_hz={self.rate_hz:g}, activities={self.activities})"

    def skip(self, samples: int) -> None:
        """Generate and discard ``samples`` samples, e.g. to start mid-stream."""
        while samples > 0:
            if self._position >= len(self._segment):
                self._next_segment()
            take = min(samples, len(self._segment) - self._position)
            self._position += take
            samples -= take

    def read(self, n: int) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """Return the next ``n`` samples and their activity labels."""
        out = np.empty((n, 6), dtype=np.float32)
        labels: list[str | None] = []
        filled = 0
        while filled < n:
            if self._position >= len(self._segment):
                self._next_segment()
            take = min(n - filled, len(self._segment) - self._position)
            out[filled : filled + take] = self._segment[self._position : self._position + take]
            labels.extend([self._label] * take)
            self._position += take
            filled += take
        return out, labels

    def _next_segment(self) -> None:
        rng = self._rng
        choices = [a for a in self.activities if a != self._activity] or list(self.activities)
        activity = str(rng.choice(choices))
        n = max(2, round(self.segment_s * rng.uniform(0.75, 1.25) * self.rate_hz))
        t = np.arange(n) / self.rate_hz
        duration = n / self.rate_hz

        pitch, roll = self._target_posture(activity)
        # Smooth posture change at the start, motion envelope fading in and out at the ends.
        ramp = _smoothstep(t / self._TRANSITION_S)
        envelope = ramp * _smoothstep((duration - t) / self._TRANSITION_S)
        base_pitch = self._posture[0] + (pitch - self._posture[0]) * ramp
        base_roll = self._posture[1] + (roll - self._posture[1]) * ramp
        self._posture = (pitch, roll)

        linear = np.zeros((n, 3))
        gait = _GAITS.get(activity)
        if gait is not None:
            step_hz = gait.step_hz * rng.uniform(0.93, 1.07)
            size = rng.uniform(0.85, 1.15)
            phase = 2 * np.pi * step_hz * t + rng.uniform(0, 2 * np.pi)
            stride = phase / 2
            omega = 2 * np.pi * step_hz
            linear[:, 0] = -gait.vertical_m * omega**2 * np.sin(phase)
            linear[:, 0] += gait.impact * gait.vertical_m * omega**2 * np.sin(2 * phase)
            linear[:, 1] = gait.ap * np.sin(phase + np.pi / 2)
            linear[:, 2] = gait.ml * np.sin(stride)
            linear *= (size * envelope)[:, None]
            sway_pitch = np.radians(gait.pitch_deg) * np.sin(phase + np.pi / 4)
            sway_roll = np.radians(gait.roll_deg) * np.sin(stride)
            sway_yaw = np.radians(gait.yaw_deg) * np.sin(stride + np.pi / 2)
        else:
            # Postural sway standing, breathing when sitting or lying: slow and tiny.
            amplitude = np.radians(0.5 if activity == "standing" else 0.2)
            sway_hz = rng.uniform(0.2, 0.35)
            phase = 2 * np.pi * sway_hz * t + rng.uniform(0, 2 * np.pi)
            sway_pitch = amplitude * np.sin(phase)
            sway_roll = 0.8 * amplitude * np.sin(1.3 * phase)
            sway_yaw = 0.3 * amplitude * np.sin(0.7 * phase)
        theta = base_pitch + envelope * sway_pitch
        lateral = envelope * sway_roll
        yaw = envelope * sway_yaw

        # Gravity ("up" seen from the sensor): lateral lean about y, pitch about z, then the
        # roll of a lying trunk about its own long axis.
        cos_l, sin_l = np.cos(lateral), np.sin(lateral)
        w0 = np.cos(theta) * cos_l
        w1 = np.sin(theta) * cos_l
        w2 = -sin_l
        up = np.stack(
            [w0, np.cos(base_roll) * w1 - np.sin(base_roll) * w2,
             np.sin(base_roll) * w1 + np.cos(base_roll) * w2],
            axis=1,
        )  # fmt: skip
        accel = GRAVITY * up + linear + rng.normal(0.0, self._ACCEL_NOISE, (n, 3))
        dt = 1.0 / self.rate_hz
        gyro = np.stack(
            [np.gradient(yaw + base_roll, dt), np.gradient(lateral, dt), np.gradient(theta, dt)],
            axis=1,
        )
        gyro += self._gyro_bias + rng.normal(0.0, self._GYRO_NOISE, (n, 3))

        self._segment = np.concatenate([accel, gyro], axis=1).astype(np.float32)
        self._label = activity
        self._activity = activity
        self._position = 0

    def _target_posture(self, activity: str) -> tuple[float, float]:
        """Return (pitch, roll) of the trunk for an activity, with some person-to-person spread."""
        rng = self._rng
        if activity == "lying":
            side = float(rng.choice([0.0, 90.0, -90.0]))  # back, left side, right side
            return math.radians(90.0 + rng.normal(0, 5)), math.radians(side + rng.normal(0, 5))
        if activity == "sitting":
            return math.radians(rng.normal(20.0, 5.0)), math.radians(rng.normal(0, 3))
        if activity in _GAITS:
            return math.radians(rng.normal(-5.0, 2.0)), math.radians(rng.normal(0, 2))
        return math.radians(rng.normal(0.0, 3.0)), math.radians(rng.normal(0, 3))


def _smoothstep(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# --------------------------------------------------------------------------------------------
# Frame production (shared by the live emulator and encode_stream)
# --------------------------------------------------------------------------------------------


class _StreamEncoder:
    """Turns a motion source into v1 frames the way firmware does.

    One seq counter per stream, advanced for every frame produced whether or not it reaches
    the wire; the device clock is derived from the sample count, so timestamps are exact.
    """

    def __init__(
        self,
        source: MotionSource,
        *,
        device_id: str,
        firmware: str,
        rate_hz: float | None,
        stream_id: int,
        batch: int | None,
        scales: Sequence[float] | None,
        hello_every_s: float | None,
        status_every_s: float | None,
    ) -> None:
        rate = float(source.rate_hz if rate_hz is None else rate_hz)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate_hz must be a positive number, got {rate}")
        if not 0 <= stream_id <= 0xFF:
            raise ValueError(f"stream_id must be 0..255, got {stream_id}")
        if batch is None:
            batch = max(1, round(rate / 10))
        if batch < 1:
            raise ValueError(f"batch must be at least 1 sample, got {batch}")
        n_channels = len(source.channels)
        scales = default_scales(source) if scales is None else tuple(scales)
        if len(scales) != n_channels or not all(s > 0 and math.isfinite(s) for s in scales):
            raise ValueError(f"need {n_channels} positive scales, got {scales}")
        self.source = source
        self.rate_hz = rate
        self.batch = batch
        self.stream_id = stream_id
        # HELLO carries f32; keep exactly what the receiver will see, and quantize with the
        # same scales so that samples × scale round-trips within half an LSB.
        wire_scales = np.array(scales, dtype=np.float32).astype(np.float64)
        self.hello = Hello(
            device_id=device_id,
            firmware=firmware,
            sample_rate_hz=float(np.float32(rate)),
            channels=tuple(
                ChannelInfo(name, unit, float(scale))
                for name, unit, scale in zip(
                    source.channels, source.units, wire_scales, strict=True
                )
            ),
        )
        self._hello_payload = hello_payload(self.hello)
        self._inverse_scales = 1.0 / wire_scales
        imu_payload(np.zeros((batch, n_channels), dtype=np.int16))  # fail early if too big
        self._hello_every = _every(hello_every_s, rate)
        self._status_every = _every(status_every_s, rate)
        self._next_hello = self._hello_every
        self._next_status = self._status_every
        self.seq = 0
        self.sample_index = 0
        self.dropped_samples = 0

    def timestamp_us(self) -> int:
        """Device clock of the next sample, µs since boot (not yet wrapped)."""
        return round(self.sample_index * 1e6 / self.rate_hz)

    def _frame(self, frame_type: int, payload: bytes, timestamp_us: int) -> bytes:
        frame = encode_frame(frame_type, self.stream_id, self.seq, timestamp_us, payload)
        self.seq = (self.seq + 1) & _U32
        return frame

    def hello_frame(self) -> bytes:
        return self._frame(FrameType.HELLO, self._hello_payload, self.timestamp_us())

    def status_frame(self) -> bytes:
        uptime_s = int(self.sample_index / self.rate_hz)
        status = Status(
            uptime_s=uptime_s,
            battery_mv=max(3300, 4150 - uptime_s // 60),  # drains 1 mV a minute
            temperature_c=31.0 + 1.5 * math.sin(uptime_s / 600),
            error_flags=0,
            dropped_samples=self.dropped_samples,
        )
        return self._frame(FrameType.STATUS, status_payload(status), self.timestamp_us())

    def quantize(self, values: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
        """Convert physical values to int16 LSBs, saturating like an ADC at full scale."""
        scaled = np.rint(values * self._inverse_scales)
        return np.clip(scaled, -32768, 32767).astype(np.int16)

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        """Produce the frames due with the next batch: HELLO / STATUS if due, then IMU_BATCH.

        Returns:
            ``(frame bytes, samples in it)`` pairs in send order.
        """
        n = self.batch if n_samples is None else n_samples
        frames: list[tuple[bytes, int]] = []
        if self._hello_every and self.sample_index >= self._next_hello:
            frames.append((self.hello_frame(), 0))
            self._next_hello += self._hello_every
        if self._status_every and self.sample_index >= self._next_status:
            frames.append((self.status_frame(), 0))
            self._next_status += self._status_every
        values, _labels = self.source.read(n)
        payload = imu_payload(self.quantize(values))
        frames.append((self._frame(FrameType.IMU_BATCH, payload, self.timestamp_us()), n))
        self.sample_index += n
        return frames


def _every(seconds: float | None, rate_hz: float) -> int:
    """Convert a period in seconds to samples; 0 means never."""
    if seconds is None or seconds <= 0:
        return 0
    return max(1, round(seconds * rate_hz))


def encode_stream(
    source: MotionSource,
    n_samples: int,
    batch: int,
    *,
    stream_id: int = 0,
    device_id: str = "emu-0",
    firmware: str = "emu-1.0",
    rate_hz: float | None = None,
    scales: Sequence[float] | None = None,
    hello_every_s: float | None = None,
    status_every_s: float | None = None,
) -> bytes:
    """Return the exact bytes an emulated device would send for ``n_samples`` samples.

    The stream starts with a HELLO, then carries IMU_BATCH frames of ``batch`` samples (the
    last one shorter if needed), with periodic HELLO / STATUS frames only if asked for, timed
    by the device clock. No pty and no thread, so benchmarks and tests get reproducible bytes.

    Raises:
        ValueError: An argument is out of range.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must not be negative, got {n_samples}")
    encoder = _StreamEncoder(
        source,
        device_id=device_id,
        firmware=firmware,
        rate_hz=rate_hz,
        stream_id=stream_id,
        batch=batch,
        scales=scales,
        hello_every_s=hello_every_s,
        status_every_s=status_every_s,
    )
    parts = [encoder.hello_frame()]
    remaining = n_samples
    while remaining > 0:
        take = min(batch, remaining)
        parts.extend(frame for frame, _n in encoder.next_frames(take))
        remaining -= take
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# WitMotion devices (vendor wire formats, for the `witmotion` and `witmotion-ble` profiles)
# --------------------------------------------------------------------------------------------

WIRES = ("v1", "witmotion", "witmotion-ble")
"""Wire formats an emulated device can speak."""

_WIT_ACC_G = 16.0
_WIT_GYRO_DPS = 2000.0
_WIT_ANGLE_DEG = 180.0
_WIT_TYPES = {"acc": 0x51, "gyro": 0x52, "angle": 0x53, "mag": 0x54}
_TO_G = {"m/s^2": 1.0 / GRAVITY, "m/s2": 1.0 / GRAVITY, "g": 1.0}
_TO_DPS = {"rad/s": 180.0 / math.pi, "deg/s": 1.0, "dps": 1.0, "°/s": 1.0}


def _wit_raw(values: npt.NDArray[np.floating], full_scale: float) -> npt.NDArray[np.int16]:
    """Datasheet formula inverted: ``raw = value / full_scale * 32768``, saturating."""
    raw: npt.NDArray[np.int16] = np.clip(
        np.rint(values / full_scale * 32768.0), -32768, 32767
    ).astype(np.int16)
    return raw


class _WitMotionMotion:
    """Physical values a WT901 would report for a motion source: g, °/s and Euler angles.

    Roll and pitch follow gravity on the accelerometer, yaw integrates the z rate; that is
    what the device's fusion reports when it is not moving fast.
    """

    def __init__(self, source: MotionSource, rate_hz: float) -> None:
        names = [c.lower() for c in source.channels]
        self.source = source
        self.rate_hz = rate_hz
        self._columns: list[tuple[int | None, float]] = []
        for axis, factors in (("ax", _TO_G), ("ay", _TO_G), ("az", _TO_G),
                              ("gx", _TO_DPS), ("gy", _TO_DPS), ("gz", _TO_DPS)):  # fmt: skip
            if axis in names:
                index = names.index(axis)
                unit = source.units[index].strip().lower()
                self._columns.append((index, factors.get(unit, 1.0)))
            else:
                self._columns.append((None, 0.0))
        self._yaw = 0.0

    def read(self, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Next ``n`` samples: ``(n, 6)`` acc (g) + gyro (°/s), and ``(n, 3)`` angles (°)."""
        values, _labels = self.source.read(n)
        out = np.zeros((n, 6), dtype=np.float64)
        for j, (index, factor) in enumerate(self._columns):
            if index is not None:
                out[:, j] = values[:, index] * factor
        ax, ay, az = out[:, 0], out[:, 1], out[:, 2]
        roll = np.degrees(np.arctan2(ay, az))
        pitch = np.degrees(np.arctan2(-ax, np.hypot(ay, az)))
        yaw = self._yaw + np.cumsum(out[:, 5]) / self.rate_hz
        self._yaw = float(yaw[-1]) if n else self._yaw
        yaw = (yaw + 180.0) % 360.0 - 180.0
        return out, np.stack([roll, pitch, yaw], axis=1)


def witmotion_packets(kind: int, values: npt.NDArray[np.integer]) -> bytes:
    """Return 11-byte WT901 packets of one type, one per row of four int16 values.

    ``0x55 TYPE D0L D0H … D3L D3H SUM`` with ``SUM`` the low byte of the sum of the first
    ten bytes, as in the WT901 datasheet, section 5.1.
    """
    rows = np.asarray(values, dtype="<i2").reshape(-1, 4)
    packets = np.empty((len(rows), 11), dtype=np.uint8)
    packets[:, 0] = 0x55
    packets[:, 1] = kind
    packets[:, 2:10] = rows.view(np.uint8).reshape(-1, 8)
    packets[:, 10] = packets[:, :10].sum(axis=1, dtype=np.uint32) & 0xFF
    return packets.tobytes()


class _WitMotionEncoder:
    """Turns a motion source into WT901 serial packets or WT901BLE notifications.

    Serial: per sample one 11-byte packet per output (0x51 acc with temperature, 0x52 gyro,
    0x53 angle with a version word, 0x54 mag). BLE: one 20-byte ``0x55 0x61`` packet per
    sample. Neither format has timestamps or sequence numbers, like the real devices.
    """

    def __init__(
        self,
        source: MotionSource,
        *,
        wire: str,
        device_id: str,
        rate_hz: float | None,
        batch: int | None,
        outputs: Sequence[str] = ("acc", "gyro", "angle"),
        temperature_c: float = 25.0,
    ) -> None:
        rate = float(source.rate_hz if rate_hz is None else rate_hz)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate_hz must be a positive number, got {rate}")
        unknown = [o for o in outputs if o not in _WIT_TYPES]
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {tuple(_WIT_TYPES)}")
        self.wire = wire
        self.rate_hz = rate
        self.batch = max(1, round(rate / 10)) if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 sample, got {self.batch}")
        self.outputs = tuple(sorted(outputs, key=_WIT_TYPES.__getitem__))
        self.temperature_raw = round(temperature_c * 100)
        self.motion = _WitMotionMotion(source, rate)
        self.dropped_samples = 0
        self.sample_index = 0
        self.hello = self._hello(device_id)

    def _hello(self, device_id: str) -> Hello:
        """The layout the gateway's profile announces for this device (for tests and tools)."""
        acc = tuple(ChannelInfo(n, "g", _WIT_ACC_G / 32768) for n in ("ax", "ay", "az"))
        gyro = tuple(ChannelInfo(n, "deg/s", _WIT_GYRO_DPS / 32768) for n in ("gx", "gy", "gz"))
        angle = tuple(
            ChannelInfo(n, "deg", _WIT_ANGLE_DEG / 32768) for n in ("roll", "pitch", "yaw")
        )
        mag = tuple(ChannelInfo(n, "LSB", 1.0) for n in ("mx", "my", "mz"))
        if self.wire == "witmotion-ble":
            channels = acc + gyro + angle
        else:
            parts = {"acc": acc, "gyro": gyro, "angle": angle, "mag": mag}
            channels = tuple(c for o in self.outputs for c in parts[o])
        return Hello(device_id, f"emulated-{self.wire}", self.rate_hz, channels)

    def hello_frame(self) -> bytes:
        return b""  # these devices announce nothing

    def encode(self, n: int) -> list[bytes]:
        """The bytes of the next ``n`` samples, one entry per sample."""
        motion, angles = self.motion.read(n)
        acc = _wit_raw(motion[:, :3], _WIT_ACC_G)
        gyro = _wit_raw(motion[:, 3:], _WIT_GYRO_DPS)
        angle = _wit_raw(angles, _WIT_ANGLE_DEG)
        self.sample_index += n
        if self.wire == "witmotion-ble":
            packets = np.empty((n, 20), dtype=np.uint8)
            packets[:, 0] = 0x55
            packets[:, 1] = 0x61
            body = np.concatenate([acc, gyro, angle], axis=1).astype("<i2")
            packets[:, 2:] = body.view(np.uint8).reshape(n, 18)
            raw = packets.tobytes()
            return [raw[i * 20 : (i + 1) * 20] for i in range(n)]
        fourth = np.full((n, 1), self.temperature_raw, dtype=np.int16)
        columns = {
            "acc": np.concatenate([acc, fourth], axis=1),
            "gyro": np.concatenate([gyro, fourth], axis=1),
            "angle": np.concatenate([angle, np.full((n, 1), 0x1000, dtype=np.int16)], axis=1),
            "mag": np.zeros((n, 4), dtype=np.int16),
        }
        per_type = [
            np.frombuffer(witmotion_packets(_WIT_TYPES[o], columns[o]), np.uint8).reshape(n, 11)
            for o in self.outputs
        ]
        raw = np.stack(per_type, axis=1).tobytes()
        size = 11 * len(self.outputs)
        return [raw[i * size : (i + 1) * size] for i in range(n)]

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        """The next batch as ``(bytes of one sample, 1)`` pairs, so drops count per sample."""
        return [(b, 1) for b in self.encode(self.batch if n_samples is None else n_samples)]


def encode_witmotion(
    source: MotionSource,
    n_samples: int,
    *,
    wire: str = "witmotion",
    rate_hz: float | None = None,
    outputs: Sequence[str] = ("acc", "gyro", "angle"),
) -> bytes:
    """Return the exact bytes an emulated WitMotion device sends for ``n_samples`` samples.

    Args:
        source: Motion to encode (m/s^2 or g; rad/s or °/s).
        n_samples: Samples to encode.
        wire: ``"witmotion"`` (WT901 serial packets) or ``"witmotion-ble"`` (WT901BLE).
        rate_hz: Rate used to integrate yaw; the source's by default.
        outputs: Serial packets per sample, from ``acc``, ``gyro``, ``angle``, ``mag``.

    Raises:
        ValueError: An argument is out of range.
    """
    if wire not in ("witmotion", "witmotion-ble"):
        raise ValueError(f"wire must be 'witmotion' or 'witmotion-ble', got {wire!r}")
    encoder = _WitMotionEncoder(
        source, wire=wire, device_id="emu", rate_hz=rate_hz, batch=None, outputs=outputs
    )
    parts: list[bytes] = []
    remaining = n_samples
    while remaining > 0:
        take = min(remaining, 4096)
        parts.extend(encoder.encode(take))
        remaining -= take
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Captures: raw bytes recorded on a gateway, replayed on a pty
# --------------------------------------------------------------------------------------------

CAPTURE_MAGIC = b"EDGE-AGENT-CAPTURE 1\n"
"""First line of a capture file."""
_RECORD = struct.Struct("<ddI")


class CaptureError(ValueError):
    """A capture file cannot be read; says which file and what is wrong."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CaptureWriter:
    """Writes the raw bytes of a link, each read with its receive times, to a capture file.

    Format: :data:`CAPTURE_MAGIC`, one line of JSON (what was recorded: sensor, link,
    profile, start time), then one record per read: ``<f64 seconds since the first read>
    <f64 wall-clock time> <u32 length>`` little-endian, followed by the bytes. A capture cut
    short (power loss, Ctrl-C) stays readable up to its last whole record.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, object]) -> None:
        self.path = Path(path)
        self._fh = self.path.open("wb")
        self._fh.write(CAPTURE_MAGIC)
        self._fh.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        self._first: float | None = None
        self._lock = threading.Lock()
        self.reads = 0
        self.bytes = 0

    def write(self, data: bytes, recv_mono: float, recv_wall: float) -> None:
        """Append one read (thread-safe: links call it from their reader thread)."""
        with self._lock:
            if self._fh.closed:
                return
            if self._first is None:
                self._first = recv_mono
            self._fh.write(_RECORD.pack(recv_mono - self._first, recv_wall, len(data)) + data)
            self.reads += 1
            self.bytes += len(data)

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Capture:
    """A capture read back: its header and its reads with their times.

    Attributes:
        path: The file.
        header: What was recorded (sensor, link, profile, ...).
        times: Seconds since the first read, per read.
        walls: Wall-clock receive time, per read.
        chunks: The bytes of each read.
        truncated: Whether the file ended inside a record (the rest was dropped).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Read a capture file.

        Raises:
            CaptureError: Not a capture, or a header that is not JSON.
            OSError: The file cannot be read.
        """
        self.path = Path(path)
        raw = self.path.read_bytes()
        if not raw.startswith(CAPTURE_MAGIC):
            raise CaptureError(
                self.path, "not a capture file (record one with `edge-agent record`)"
            )
        end = raw.find(b"\n", len(CAPTURE_MAGIC))
        if end < 0:
            raise CaptureError(self.path, "header line is missing")
        try:
            header = json.loads(raw[len(CAPTURE_MAGIC) : end])
        except ValueError as err:
            raise CaptureError(self.path, f"header is not JSON: {err}") from err
        if not isinstance(header, dict):
            raise CaptureError(self.path, "header must be a JSON object")
        self.header: dict[str, object] = header
        self.times: list[float] = []
        self.walls: list[float] = []
        self.chunks: list[bytes] = []
        self.truncated = False
        pos = end + 1
        while pos < len(raw):
            if pos + _RECORD.size > len(raw):
                self.truncated = True
                break
            offset, wall, length = _RECORD.unpack_from(raw, pos)
            pos += _RECORD.size
            if pos + length > len(raw):
                self.truncated = True
                break
            self.times.append(offset)
            self.walls.append(wall)
            self.chunks.append(raw[pos : pos + length])
            pos += length

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def duration_s(self) -> float:
        """Seconds from the first read to the last."""
        return self.times[-1] if self.times else 0.0

    @property
    def protocol(self) -> str:
        """The profile the recorded device speaks (``v1`` if the header does not say)."""
        profile = self.header.get("profile")
        if isinstance(profile, dict) and isinstance(profile.get("protocol"), str):
            return str(profile["protocol"])
        return "v1"


class _CaptureEncoder:
    """Plays a capture's reads back with their original spacing (scaled by ``speed``)."""

    def __init__(self, capture: Capture, *, device_id: str, speed: float, loop: bool) -> None:
        if not len(capture):
            raise CaptureError(capture.path, "holds no data")
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.capture = capture
        self.speed = speed
        self.loop = loop
        self.rate_hz = 1.0
        self.batch = 1
        self.dropped_samples = 0
        self.hello = Hello(device_id, "capture", 0.0, ())
        # A pause between loops as long as the mean gap between reads.
        self._cycle = capture.duration_s + capture.duration_s / max(1, len(capture) - 1)
        self._index = 0
        self.loops = 0

    def hello_frame(self) -> bytes:
        return b""

    def due_s(self, index: int) -> float:
        """Seconds after start at which read ``index`` is sent."""
        n = len(self.capture)
        if not self.loop and index >= n:
            return 3600.0 * (1 + index)
        return (index // n * self._cycle + self.capture.times[index % n]) / self.speed

    def next_frames(self, n_samples: int | None = None) -> list[tuple[bytes, int]]:
        n = len(self.capture)
        if not self.loop and self._index >= n:
            return []
        chunk = self.capture.chunks[self._index % n]
        self._index += 1
        if self._index % n == 0:
            self.loops += 1
        return [(chunk, 0)]


# --------------------------------------------------------------------------------------------
# The live emulator
# --------------------------------------------------------------------------------------------


_Encoder = _StreamEncoder | _WitMotionEncoder | _CaptureEncoder


class _Pty:
    """One pseudo-terminal pair: we write to the master, the gateway opens the slave path."""

    __slots__ = ("master", "path", "slave")

    def __init__(self) -> None:
        master, slave = os.openpty()
        try:
            # Raw mode: no CR/LF translation, no XON/XOFF, no echo, so every byte value
            # passes unchanged even to a reader that does not configure the port itself.
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.path = os.ttyname(slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self.master = master
        # Holding the slave open keeps the pty alive while no reader is attached, so writes
        # queue up (and later fail with EAGAIN) instead of failing with EIO.
        self.slave = slave

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


class _Device:
    """The running part of an emulator, owned by its writer thread.

    Kept separate from :class:`DeviceEmulator` so the thread does not keep the public object
    alive; an emulator that is dropped without ``close()`` can then be collected and warn.
    """

    _WRITABLE_POLL_S = 0.05

    def __init__(
        self, encoder: _Encoder, *, max_rate: bool, link_path: Path | None, name: str
    ) -> None:
        self.encoder = encoder
        self.max_rate = max_rate
        self.link_path = link_path
        self.name = name
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.pty: _Pty | None = None
        self.error: BaseException | None = None
        self._pending = b""  # rest of a frame the pty only partly accepted
        self.frames_sent = 0
        self.samples_sent = 0
        self.bytes_sent = 0
        self.frames_dropped = 0
        self.bytes_dropped = 0
        self.bytes_received = 0

    # -- the pty and its symlink ---------------------------------------------------------

    def plug(self) -> None:
        new = _Pty()
        with self.lock:
            old, self.pty = self.pty, new
            self._pending = b""
        if old is not None:
            old.close()
        if self.link_path is not None:
            try:
                _point_symlink(self.link_path, new.path)
            except BaseException:
                self.unplug()
                raise

    def unplug(self) -> None:
        with self.lock:
            old, self.pty = self.pty, None
            self._pending = b""
        if old is not None:
            old.close()
            if self.link_path is not None:
                _remove_symlink(self.link_path, old.path)

    # -- the writer thread ---------------------------------------------------------------

    def run(self) -> None:
        encoder = self.encoder
        period = encoder.batch / encoder.rate_hz
        due = getattr(encoder, "due_s", None)  # captures: their own irregular schedule
        try:
            start = time.monotonic()
            hello = encoder.hello_frame()
            if hello:
                self._send(hello, 0)
            batch_index = 0
            while not self.stop.is_set():
                if self.paused.is_set():
                    # A hung sensor: connected, silent. The schedule resumes where it was.
                    pause_start = time.monotonic()
                    while self.paused.is_set() and not self.stop.wait(self._WRITABLE_POLL_S):
                        pass
                    start += time.monotonic() - pause_start
                    continue
                if not self.max_rate:
                    # Absolute schedule: batch k is due when its last sample was taken, so
                    # timer jitter never accumulates into drift.
                    offset = due(batch_index) if due else (batch_index + 1) * period
                    delay = start + offset - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        break
                for frame, n_samples in encoder.next_frames():
                    self._send(frame, n_samples)
                batch_index += 1
                self._drain_input()
        except Exception as err:
            self.error = err
            _log.exception("emulated device %s stopped", self.name)
        finally:
            if self.stop.is_set():
                self.unplug()

    def _send(self, frame: bytes, n_samples: int) -> None:
        if self.max_rate:
            self._send_blocking(frame, n_samples)
            return
        with self.lock:
            pty = self.pty
            if pty is not None and self._pending:
                self._pending = self._write(pty.master, self._pending)
            if pty is None or self._pending:
                # Like a UART FIFO overflow: the whole frame is lost, its seq is used up.
                self._drop(frame, n_samples)
                return
            self.frames_sent += 1
            self.samples_sent += n_samples
            self._pending = self._write(pty.master, frame)

    def _send_blocking(self, frame: bytes, n_samples: int) -> None:
        """Write a whole frame, waiting for the reader; while unplugged, wait for a replug."""
        view = memoryview(frame)
        counted = False
        while view and not self.stop.is_set():
            with self.lock:
                pty = self.pty
                if pty is not None:
                    if not counted:
                        self.frames_sent += 1
                        self.samples_sent += n_samples
                        counted = True
                    try:
                        written = os.write(pty.master, view)
                    except BlockingIOError:
                        written = 0
                    except OSError:  # the tty is gone: lose the rest like a pulled cable
                        self.bytes_dropped += len(view)
                        return
                    self.bytes_sent += written
                    view = view[written:]
                    fd = pty.master
            if pty is None:
                if counted:  # unplugged mid-frame: the rest is lost with the cable
                    self.bytes_dropped += len(view)
                    return
                self.stop.wait(self._WRITABLE_POLL_S)
            elif view:
                # The fd may be closed by unplug() meanwhile; the next loop then notices.
                with contextlib.suppress(OSError, ValueError):
                    select.select([], [fd], [], self._WRITABLE_POLL_S)

    def _write(self, fd: int, data: bytes) -> bytes:
        """Write what the pty accepts now and return the rest (caller holds the lock)."""
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError:
            self.bytes_dropped += len(data)
            return b""
        self.bytes_sent += written
        return data[written:]

    def _drop(self, frame: bytes, n_samples: int) -> None:
        self.frames_dropped += 1
        self.bytes_dropped += len(frame)
        self.encoder.dropped_samples += n_samples

    def _drain_input(self) -> None:
        """Discard what the gateway writes to the device, so its writes never block."""
        with self.lock:
            if self.pty is None:
                return
            # BlockingIOError (an OSError) just means there is nothing to read.
            with contextlib.suppress(OSError):
                self.bytes_received += len(os.read(self.pty.master, 65536))


def _point_symlink(link: Path, target: str) -> None:
    """Atomically make ``link`` a symlink to ``target``, creating its directory if needed."""
    if os.path.lexists(link) and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; refusing to replace it")
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)


def _remove_symlink(link: Path, target: str) -> None:
    """Remove ``link`` if it still points to ``target`` (someone may have repointed it)."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            link.unlink()


class DeviceEmulator:
    """An emulated IMU device streaming protocol v1 on a pseudo-terminal.

    Use it as a context manager, or call :meth:`start` and :meth:`close`. The gateway opens
    :attr:`tty_path` (or :attr:`link_path`) exactly as it would open a USB serial adapter.

    In real-time mode frames are paced at the sample rate; when nobody reads and the pty
    buffer is full, whole frames are dropped and counted, and seq still advances, so a reader
    that comes back sees the gap. With ``max_rate=True`` the device writes as fast as the
    reader consumes and waits (rather than drops) when the reader is slow or unplugged.
    """

    def __init__(
        self,
        source: MotionSource | Capture,
        *,
        device_id: str = "emu-0",
        firmware: str = "emu-1.0",
        rate_hz: float | None = None,
        stream_id: int = 0,
        batch: int | None = None,
        scales: Sequence[float] | None = None,
        max_rate: bool = False,
        hello_every_s: float = 2.0,
        status_every_s: float = 5.0,
        link_path: str | os.PathLike[str] | None = None,
        wire: str = "v1",
        outputs: Sequence[str] = ("acc", "gyro", "angle"),
        speed: float = 1.0,
        loop: bool = True,
    ) -> None:
        """Configure the device; nothing is opened until :meth:`start`.

        Args:
            source: Where samples come from; read in order, looping if finite.
            device_id: Device id announced in HELLO.
            firmware: Firmware version announced in HELLO.
            rate_hz: Sample rate to play and announce; the source's rate by default. Samples
                are taken from the source in order either way.
            stream_id: Stream id in every frame header.
            batch: Samples per IMU_BATCH frame; about a tenth of a second's worth by default.
            scales: Physical value per LSB for each channel; by default each channel's full
                scale maps onto the int16 range.
            max_rate: Write as fast as the reader consumes instead of in real time.
            hello_every_s: Device-clock period of HELLO repeats (0 to send it only at start).
            status_every_s: Device-clock period of STATUS frames (0 for none).
            link_path: If given, a symlink kept pointing at the current pty, like
                ``/dev/serial/by-id/...``.
            wire: What the device speaks: ``"v1"`` (our firmware), ``"witmotion"`` (a WT901
                on a serial port) or ``"witmotion-ble"`` (WT901BLE notifications). Vendor
                wires send no HELLO, STATUS, seq or timestamps, so ``firmware``,
                ``stream_id``, ``scales``, ``hello_every_s`` and ``status_every_s`` do not
                apply to them.
            outputs: The packets per sample of a ``"witmotion"`` device.
            speed: Playback speed of a :class:`Capture` source (2.0: twice as fast).
            loop: Whether a :class:`Capture` source starts over when it ends.

        Raises:
            ValueError: An argument is out of range.
        """
        self._encoder: _Encoder
        if isinstance(source, Capture):
            self._encoder = _CaptureEncoder(source, device_id=device_id, speed=speed, loop=loop)
        elif wire == "v1":
            self._encoder = _StreamEncoder(
                source,
                device_id=device_id,
                firmware=firmware,
                rate_hz=rate_hz,
                stream_id=stream_id,
                batch=batch,
                scales=scales,
                hello_every_s=hello_every_s,
                status_every_s=status_every_s,
            )
        elif wire in WIRES:
            self._encoder = _WitMotionEncoder(
                source, wire=wire, device_id=device_id, rate_hz=rate_hz, batch=batch,
                outputs=outputs,
            )  # fmt: skip
        else:
            raise ValueError(f"wire must be one of {WIRES}, got {wire!r}")
        self._link_path = Path(link_path) if link_path is not None else None
        self._device = _Device(
            self._encoder, max_rate=max_rate, link_path=self._link_path, name=device_id
        )
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread else "new"
        pty = self._device.pty
        where = f" on {pty.path}" if pty is not None else ""
        return f"<DeviceEmulator {self.device_id} {state}{where}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Open the pty (and symlink) and start streaming.

        Raises:
            RuntimeError: The emulator was already started or closed.
            OSError: No pty could be opened or the symlink could not be made.
        """
        if self._closed:
            raise RuntimeError(f"{self.device_id}: cannot start a closed emulator")
        if self._thread is not None:
            raise RuntimeError(f"{self.device_id}: already started")
        self._device.plug()
        thread = threading.Thread(
            target=self._device.run, name=f"emulator-{self.device_id}", daemon=True
        )
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop streaming, close the pty and remove the symlink; safe to call repeatedly."""
        if self._closed:
            return
        self._closed = True
        self._device.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                _log.warning("emulated device %s did not stop within 5 s", self.device_id)
        self._device.unplug()

    close = stop

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Getattr: __init__ may have failed before these were set.
        if getattr(self, "_thread", None) is not None and not getattr(self, "_closed", True):
            # Stop first: the warning may be turned into an exception. The thread closes the
            # pty on its way out; joining here could block the garbage collector.
            self._device.stop.set()
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)

    # -- hot-plug ------------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the cable: close the pty and remove the symlink while the device keeps running.

        A reader then sees an I/O error or end of file. Frames produced while unplugged are
        dropped (real-time mode) or held back (max-rate mode); seq keeps counting.
        """
        self._require_running()
        self._device.unplug()

    def replug(self) -> None:
        """Plug the cable back in: a NEW pty (new path), the symlink repointed to it.

        The stream continues where the device is, so the reader sees a seq gap for the time
        it was away. Calling it while plugged in swaps the pty, like a quick re-enumeration.
        """
        self._require_running()
        self._device.plug()

    def pause(self) -> None:
        """Stop producing samples while staying plugged in, like firmware that hung."""
        self._require_running()
        self._device.paused.set()

    def resume(self) -> None:
        """Produce samples again after :meth:`pause`; nothing is owed for the pause."""
        self._require_running()
        self._device.paused.clear()

    def _require_running(self) -> None:
        if self._closed or self._thread is None:
            raise RuntimeError(f"{self.device_id}: emulator is not running")

    # -- what it is and what it did ------------------------------------------------------

    @property
    def device_id(self) -> str:
        """Device id announced in HELLO."""
        return self._encoder.hello.device_id

    @property
    def hello(self) -> Hello:
        """The HELLO this device sends (channel names, units and scales)."""
        return self._encoder.hello

    @property
    def rate_hz(self) -> float:
        """Sample rate played and announced."""
        return self._encoder.rate_hz

    @property
    def batch(self) -> int:
        """Samples per IMU_BATCH frame."""
        return self._encoder.batch

    @property
    def tty_path(self) -> str:
        """Path of the current pty slave, e.g. ``/dev/pts/7``.

        Raises:
            RuntimeError: Not started, unplugged or closed.
        """
        pty = self._device.pty
        if pty is None:
            raise RuntimeError(f"{self.device_id}: no tty (not started, unplugged or closed)")
        return pty.path

    @property
    def link_path(self) -> Path | None:
        """The symlink kept pointing at the current tty, if one was asked for."""
        return self._link_path

    @property
    def plugged(self) -> bool:
        """Whether a pty is currently open."""
        return self._device.pty is not None

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the writer thread, if any."""
        return self._device.error

    @property
    def frames_sent(self) -> int:
        """Frames put on the wire (the last one before an unplug may be cut short)."""
        return self._device.frames_sent

    @property
    def samples_sent(self) -> int:
        """Samples in the IMU_BATCH frames put on the wire."""
        return self._device.samples_sent

    @property
    def bytes_sent(self) -> int:
        """Bytes the pty accepted."""
        return self._device.bytes_sent

    @property
    def frames_dropped(self) -> int:
        """Frames produced but lost because the pty was full or unplugged."""
        return self._device.frames_dropped

    @property
    def bytes_dropped(self) -> int:
        """Bytes of dropped frames, plus frame tails lost to an unplug."""
        return self._device.bytes_dropped

    @property
    def samples_dropped(self) -> int:
        """Samples in dropped frames; also reported in STATUS as the overflow counter."""
        return self._encoder.dropped_samples


# --------------------------------------------------------------------------------------------
# `edge-agent simulate`
# --------------------------------------------------------------------------------------------


def run_simulator(
    devices: int,
    recording: Path | None,
    rate_hz: float | None,
    max_rate: bool,
    duration_s: float | None,
    link_dir: Path | None,
    out: TextIO,
) -> None:
    """Run emulated devices until ``duration_s`` passes or the user presses Ctrl-C.

    Devices are named ``emu-0`` .. ``emu-<N-1>``; each gets its own seed, or its own offset
    into the recording, so they do not stream identical data. One line per device is printed
    once all are up: ``<device id> <tty path>`` plus the symlink path when ``link_dir`` is
    given (the symlink is ``link_dir/<device id>``).

    Args:
        devices: Number of emulated devices.
        recording: CSV recording to replay; synthetic motion if None.
        rate_hz: Sample rate; the recording's own rate (or 100 Hz synthetic) if None.
        max_rate: Stream as fast as readers consume instead of in real time.
        duration_s: Stop after this long; run until interrupted if None.
        link_dir: Directory for per-device symlinks, created if missing.
        out: Where the device lines are printed.

    Raises:
        ValueError: ``devices`` is less than 1.
        RecordingError: The recording is not valid.
        RuntimeError: An emulated device failed while running.
    """
    if devices < 1:
        raise ValueError(f"need at least one device, got {devices}")
    base = CsvRecording(recording) if recording is not None else None
    with contextlib.ExitStack() as stack:
        emulators: list[DeviceEmulator] = []
        for index in range(devices):
            device_id = f"emu-{index}"
            source: MotionSource
            if base is not None:
                source = base.with_offset(index * len(base) // devices)
                play_rate = rate_hz
            else:
                source = SyntheticMotion(rate_hz or 100.0, seed=index)
                play_rate = None
            emulator = DeviceEmulator(
                source,
                device_id=device_id,
                rate_hz=play_rate,
                max_rate=max_rate,
                link_path=link_dir / device_id if link_dir is not None else None,
            )
            stack.enter_context(emulator)
            emulators.append(emulator)
        for emulator in emulators:
            line = f"{emulator.device_id} {emulator.tty_path}"
            if emulator.link_path is not None:
                line += f" {emulator.link_path}"
            print(line, file=out, flush=True)

        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while deadline is None or time.monotonic() < deadline:
                for emulator in emulators:
                    if emulator.error is not None:
                        raise RuntimeError(
                            f"{emulator.device_id} stopped: {emulator.error}"
                        ) from emulator.error
                remaining = 0.2 if deadline is None else deadline - time.monotonic()
                time.sleep(max(0.0, min(0.2, remaining)))
        except KeyboardInterrupt:
            _log.info("interrupted; stopping %d emulated devices", len(emulators))
