"""One sensor stream: protocol-v1 frames in, windows for each of its models out.

The device announces its layout in HELLO (channel names, units, LSB scales,
sample rate); IMU_BATCH payloads of one read are joined and converted in one
numpy operation, stamped with host time, appended to the ring buffer and cut
into windows by one cursor per model.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.inference.bundle import Bundle
from edge_agent.inference.runtime import Runtime
from edge_agent.pipeline.clock import DeviceClock
from edge_agent.pipeline.ring import FloatArray, RingBuffer, WindowCursor, WindowCut
from firmware_bridge.protocol.v1 import (
    Frame,
    FrameType,
    Hello,
    ProtocolError,
    Status,
    hello_problem,
)

_IMU_HEADER = struct.Struct("<HBB")

# Factors from a device unit to a model unit, for the units IMU firmware commonly reports.
_UNIT_FACTORS: dict[tuple[str, str], float] = {
    ("g", "m/s^2"): 9.80665,
    ("m/s^2", "g"): 1 / 9.80665,
    ("dps", "rad/s"): math.pi / 180,
    ("deg/s", "rad/s"): math.pi / 180,
    ("rad/s", "dps"): 180 / math.pi,
    ("rad/s", "deg/s"): 180 / math.pi,
}


def _unit(u: str) -> str:
    # Manifests may qualify a unit ("m/s^2 (inferred ...)"); only the unit itself matters.
    u = u.split("(", 1)[0]
    return u.strip().lower().replace("²", "^2").replace("m/s2", "m/s^2").replace("°/s", "dps")


def unit_factor(device_unit: str, model_unit: str) -> float | None:
    """Factor converting a device unit into a model unit; None when they are incompatible.

    An empty unit on either side means "not stated" and is taken as compatible.
    """
    d, m = _unit(device_unit), _unit(model_unit)
    if not d or not m or d == m or m.startswith(d) or d.startswith(m):
        return 1.0
    return _UNIT_FACTORS.get((d, m))


@dataclass
class ModelSlot:
    """A loaded model shared by every stream that runs it."""

    bundle: Bundle
    runtime: Runtime

    @property
    def ref(self) -> str:
        """name@version."""
        return self.bundle.ref


@dataclass
class StreamModel:
    """One model running on one stream."""

    slot: ModelSlot
    cursor: WindowCursor
    channel_index: np.ndarray[Any, np.dtype[np.intp]] | None = None
    factors: FloatArray | None = None
    enabled: bool = False
    reason: str = "waiting for the device's HELLO"
    factor: int = 1
    failed: str | None = None
    """Why the model was disabled at run time (raised, NaN output); None while it serves."""


@dataclass
class RateGroup:
    """The ring buffer of the models that see a stream at one decimation factor.

    A 100 Hz sensor feeding a 10 Hz model is averaged over blocks of 10 samples
    (a boxcar low-pass, then decimation) before it reaches that model's ring.
    """

    factor: int
    ring: RingBuffer
    models: list[StreamModel] = field(default_factory=list)
    _rest: FloatArray | None = None
    _rest_t: np.ndarray[Any, np.dtype[np.float64]] | None = None

    def push(
        self,
        samples: FloatArray,
        times: np.ndarray[Any, np.dtype[np.float64]],
        gap_before: bool,
    ) -> None:
        """Append one contiguous segment (decimated when factor > 1)."""
        if gap_before:
            self._rest = self._rest_t = None
            for model in self.models:
                model.cursor.mark_gap(self.ring.total)
        k = self.factor
        if k > 1:
            if self._rest is not None and self._rest_t is not None:
                samples = np.concatenate([self._rest, samples])
                times = np.concatenate([self._rest_t, times])
            m = len(samples) // k
            self._rest, self._rest_t = samples[m * k :].copy(), times[m * k :].copy()
            if m == 0:
                return
            samples = samples[: m * k].reshape(m, k, -1).mean(axis=1, dtype=np.float32)
            times = times[k - 1 : m * k : k]
        self.ring.extend(samples, times)


@dataclass
class StreamStats:
    """Counters of one stream."""

    frames: int = 0
    samples: int = 0
    samples_before_hello: int = 0
    gaps: int = 0
    frames_lost: int = 0
    malformed: int = 0
    hellos_rejected: int = 0
    last_data_mono: float | None = None


@dataclass
class Emitted:
    """Windows cut for one model of one stream from one read."""

    stream: SensorStream
    model: StreamModel
    cut: WindowCut
    recv_mono: float


@dataclass
class SensorStream:
    """State of one (sensor, stream id)."""

    name: str
    models: list[ModelSlot]
    gap_policy: str = "drop"
    rate_tolerance: float = 0.05
    hello: Hello | None = None
    status: Status | None = None
    channels: int = 0
    scales: FloatArray | None = None
    clock: DeviceClock = field(default_factory=DeviceClock)
    stats: StreamStats = field(default_factory=StreamStats)
    attached: list[StreamModel] = field(default_factory=list)
    groups: dict[int, RateGroup] = field(default_factory=dict)
    notices: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    refused: str | None = None
    before_hello_reported: int = 0
    """`stats.samples_before_hello` as of the last `sensor.samples_before_hello` event."""

    def __post_init__(self) -> None:
        self.attached = [self._attach(slot) for slot in self.models]

    def _attach(self, slot: ModelSlot) -> StreamModel:
        spec = slot.bundle.manifest.input
        return StreamModel(slot, WindowCursor(spec.window, spec.hop, self.gap_policy == "drop"))

    def _notice(self, kind: str, severity: str, **body: Any) -> None:
        """Queue an event for the daemon to store and publish."""
        self.notices.append((kind, severity, body))

    # -- frames ------------------------------------------------------------------------------

    def ingest(self, frames: list[Frame], recv_mono: float, recv_wall: float) -> list[Emitted]:
        """Take the frames of one read; returns the windows they completed."""
        imu: list[Frame] = []
        for frame in frames:
            kind = frame.frame_type
            if kind == FrameType.IMU_BATCH:
                imu.append(frame)
            elif kind == FrameType.HELLO:
                self._on_hello(frame)
            elif kind == FrameType.STATUS:
                try:
                    self.status = frame.status()
                except ProtocolError:
                    self.stats.malformed += 1
        self.stats.frames += len(frames)
        if not imu:
            return []
        self.stats.last_data_mono = recv_mono
        return self._on_imu(imu, recv_mono, recv_wall)

    def _on_hello(self, frame: Frame) -> None:
        try:
            hello = frame.hello()
        except ProtocolError as err:
            self._reject(str(err))
            return
        if hello == self.hello:
            return
        problem = hello_problem(hello)
        if problem is None and hello.sample_rate_hz == 0 and self.models:
            problem = "sample rate 0 Hz announces a stream without samples, but models run on it"
        if problem is not None:
            self._reject(problem)
            return
        self.refused = None
        changed = self.hello is not None
        self.adopt_hello(hello)
        self._notice(
            "sensor.hello",
            "info",
            device_id=hello.device_id,
            firmware=hello.firmware,
            sample_rate_hz=hello.sample_rate_hz,
            channels=[c.name for c in hello.channels],
            layout_changed=changed,
        )
        lost = self.stats.samples_before_hello - self.before_hello_reported
        if lost > 0:
            # Samples that came before any layout could not be decoded: say how many, once
            # per HELLO, so a device that streams before announcing itself is noticed.
            self.before_hello_reported = self.stats.samples_before_hello
            self._notice(
                "sensor.samples_before_hello",
                "warning",
                samples=lost,
                total=self.stats.samples_before_hello,
            )

    def _reject(self, reason: str) -> None:
        """Refuse a HELLO: forget the layout and wait for a good one.

        Samples until then count as arriving before HELLO. The event is sent once per
        reason; a device repeating the same bad HELLO is only counted.
        """
        self.stats.malformed += 1
        self.stats.hellos_rejected += 1
        if reason == self.refused:
            return  # a device repeating the same bad HELLO every few seconds: counted only
        self.refused = reason
        self.hello = None
        self.scales = None
        self.channels = 0
        self.groups = {}
        self.attached = [self._attach(slot) for slot in self.models]
        for model in self.attached:
            model.reason = f"waiting for a valid HELLO; the last was refused: {reason}"
        self._notice("sensor.rejected", "warning", reason=reason)

    def adopt_hello(self, hello: Hello) -> None:
        """Lay the stream out for `hello`: fresh rings and cursors, models checked against it.

        Also how a restarted stream resumes at once with the layout its device announced.
        """
        self.hello = hello
        channels = len(hello.channels)
        longest = max((m.slot.bundle.manifest.input.window for m in self.attached), default=1)
        self.channels = channels
        self.scales = np.array([c.scale for c in hello.channels], dtype=np.float32)
        # A model disabled at run time stays disabled across a new HELLO (a reconnect).
        failed = {id(m.slot): m.failed for m in self.attached if m.failed is not None}
        self.attached = [self._attach(slot) for slot in self.models]
        self.groups = {}
        for model in self.attached:
            model.failed = failed.get(id(model.slot))
            self._check_model(model, hello)
            if model.enabled:
                group = self.groups.get(model.factor)
                if group is None:
                    capacity = max(8 * longest, 8192 // model.factor)
                    group = RateGroup(model.factor, RingBuffer(capacity, channels))
                    self.groups[model.factor] = group
                group.models.append(model)

    def _check_model(self, model: StreamModel, hello: Hello) -> None:
        spec = model.slot.bundle.manifest.input
        names = [c.name for c in hello.channels]
        index: list[int] = []
        factors: list[float] = []
        for channel in spec.channels:
            if channel not in names:
                model.enabled = False
                model.reason = (
                    f"model {model.slot.ref} needs channel {channel!r}; the device sends {names}"
                )
                break
            i = names.index(channel)
            factor = unit_factor(hello.channels[i].unit, spec.units.get(channel, ""))
            if factor is None:
                model.enabled = False
                model.reason = (
                    f"channel {channel!r} is in {hello.channels[i].unit!r}, model "
                    f"{model.slot.ref} expects {spec.units.get(channel)!r}"
                )
                break
            index.append(i)
            factors.append(factor)
        else:
            rate = hello.sample_rate_hz
            ratio = rate / spec.rate_hz
            factor = max(1, round(ratio))
            if abs(ratio - factor) > self.rate_tolerance * factor:
                model.enabled = False
                model.reason = (
                    f"device samples at {rate:g} Hz, model {model.slot.ref} expects "
                    f"{spec.rate_hz:g} Hz (or an integer multiple of it)"
                )
            else:
                model.enabled = True
                model.factor = factor
                model.reason = ""
                identity = index == list(range(len(names)))
                model.channel_index = None if identity else np.array(index, dtype=np.intp)
                f = np.array(factors, dtype=np.float32)
                model.factors = None if np.all(f == 1.0) else f
        if not model.enabled:
            self._notice("model.incompatible", "error", model=model.slot.ref, reason=model.reason)

    def _on_imu(self, frames: list[Frame], recv_mono: float, recv_wall: float) -> list[Emitted]:
        hello, scales = self.hello, self.scales
        if hello is None or scales is None:
            self.stats.samples_before_hello += sum(
                _IMU_HEADER.unpack_from(f.payload)[0] for f in frames if len(f.payload) >= 4
            )
            return []
        if hello.sample_rate_hz == 0:  # announced as a stream without samples (a camera)
            self.stats.malformed += len(frames)
            return []
        channels = self.channels
        counts: list[int] = []
        parts: list[bytes] = []
        t0: list[int] = []
        gaps: list[int] = []
        offset = 0
        for frame in frames:
            payload = frame.payload
            if len(payload) < 4:
                self.stats.malformed += 1
                continue
            n, c, _ = _IMU_HEADER.unpack_from(payload)
            if c != channels or len(payload) != 4 + 2 * n * c:
                self.stats.malformed += 1
                continue
            if frame.gap:
                self.stats.gaps += 1
                self.stats.frames_lost += frame.gap
                gaps.append(offset)
            counts.append(n)
            parts.append(payload[4:])
            t0.append(self.clock.unwrap(frame.timestamp_us))
            offset += n
        if offset == 0:
            return []
        raw = np.frombuffer(b"".join(parts), dtype="<i2").reshape(offset, channels)
        samples = raw.astype(np.float32)
        samples *= scales
        period = 1.0 / hello.sample_rate_hz
        count_arr = np.asarray(counts, dtype=np.int64)
        starts = np.cumsum(count_arr) - count_arr
        within = np.arange(offset, dtype=np.int64) - np.repeat(starts, count_arr)
        device_s = np.repeat(np.asarray(t0, dtype=np.float64) * 1e-6, count_arr) + within * period
        host_offset = self.clock.observe(float(device_s[-1]), recv_wall)
        times = device_s + host_offset
        bounds = [*gaps, offset] if gaps and gaps[0] == 0 else [0, *gaps, offset]
        gap_at = set(gaps)
        groups = list(self.groups.values())
        self.stats.samples += offset
        if not groups:
            return []
        # Cut windows at least every half ring, so a big batch (reads that queued up) never
        # overwrites samples before their windows were cut.
        limit = min((g.ring.capacity * g.factor for g in groups), default=offset) // 2 or 1
        emitted: list[Emitted] = []
        pushed = 0
        for first, b in itertools.pairwise(bounds):
            gap = first in gap_at
            a = first
            while a < b:
                end = min(b, a + limit - pushed)
                for group in groups:
                    group.push(samples[a:end], times[a:end], gap)
                gap = False
                pushed += end - a
                a = end
                if pushed >= limit:
                    for group in groups:
                        emitted.extend(self._cut(group, recv_mono))
                    pushed = 0
        if pushed:
            for group in groups:
                emitted.extend(self._cut(group, recv_mono))
        return emitted

    def fail_model(self, model: StreamModel, reason: str) -> None:
        """Stop cutting windows for `model` on this stream (until `revive_models`)."""
        model.failed = reason

    def revive_models(self, slot: ModelSlot | None = None) -> list[StreamModel]:
        """Serve failed models again (all, or those of `slot`); returns the ones revived.

        Their cursors skip what arrived meanwhile: the next window is a fresh one.
        """
        revived = []
        for model in self.attached:
            if model.failed is None or (slot is not None and model.slot is not slot):
                continue
            model.failed = None
            group = self.groups.get(model.factor)
            if group is not None:
                cursor = model.cursor
                cursor.next_end = max(cursor.next_end, group.ring.total + cursor.hop)
            revived.append(model)
        return revived

    def _cut(self, group: RateGroup, recv_mono: float) -> list[Emitted]:
        emitted: list[Emitted] = []
        for model in group.models:
            if model.failed is not None:
                continue
            cut = model.cursor.cut(group.ring)
            if cut is None or len(cut.windows) == 0:
                continue
            if model.channel_index is not None:
                cut.windows = cut.windows[:, :, model.channel_index]
            if model.factors is not None:
                cut.windows = cut.windows * model.factors
            emitted.append(Emitted(self, model, cut, recv_mono))
        return emitted
