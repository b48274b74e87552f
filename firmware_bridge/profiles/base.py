"""What every device profile shares: the decoder interface, its config base and a host clock.

A profile turns one device family's bytes into the protocol-v1 :class:`Frame` objects the
pipeline already understands, so there is a single pipeline whatever the sensor speaks:
a HELLO announcing channel names, units, LSB scales and sample rate, then IMU_BATCH frames
of int16 samples with a (device or synthesized) µs timestamp and a sequence number.

Devices without a clock of their own (most vendor IMUs) get timestamps from
:class:`HostClock`: samples are spaced evenly at the estimated device rate and anchored to
the host's receive times, so USB and BLE delivery jitter does not end up in the data.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from firmware_bridge.protocol.v1 import (
    MAX_PAYLOAD,
    MIN_SAMPLE_RATE_HZ,
    ChannelInfo,
    Frame,
    FrameType,
    Hello,
    hello_payload,
)

__all__ = [
    "HostClock",
    "HostTimedProfile",
    "HostTimedStats",
    "Profile",
    "ProfileConfigBase",
    "ProfileStats",
    "RateLearner",
    "snap_rate",
]

_U32 = 0xFFFFFFFF
_IMU_HEADER = struct.Struct("<HBB")


class ProfileConfigBase(BaseModel):
    """Base of every profile's config: unknown keys are errors, as everywhere in the config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    #: Advertised GATT service that identifies the device family over BLE (None: no default).
    ble_service_uuid: ClassVar[str | None] = None
    #: Characteristic(s) whose notifications carry the data, used when the sensor sets none.
    ble_notify_uuids: ClassVar[tuple[str, ...]] = ()
    #: Baud rate the device family ships with, used when the sensor sets none.
    default_baudrate: ClassVar[int | None] = None


class HostTimedConfig(ProfileConfigBase):
    """Keys shared by profiles of devices that do not timestamp their samples."""

    rate_hz: float | None = Field(
        default=None,
        ge=MIN_SAMPLE_RATE_HZ,
        le=10_000,
        description="Output rate configured on the device, 0.1..10000 Hz; learned from the "
        "data when unset (about a second, longer for rates under 5 Hz).",
    )
    device_id: str | None = Field(
        default=None,
        max_length=255,
        description="Device id announced to the pipeline (default: the sensor name).",
    )


class ProfileStats(Protocol):
    """Counters every profile exposes; the daemon's health report reads these two."""

    crc_errors: int
    resyncs: int


class Profile(ABC):
    """One device family's decoder: bytes of one link in, protocol-v1 frames out.

    Never raises on any input; what it rejects is counted in :attr:`stats`.
    """

    protocol: ClassVar[str]
    stats: Any

    #: Kinds of refused input a profile reports, at most (each once, as first seen).
    MAX_REFUSALS = 16

    def __init__(self, config: Any, *, device_id: str) -> None:
        self.config = config
        self.device_id = device_id
        #: Each kind of input refused for making no sense, once, in the order first seen;
        #: the link reports new ones (the daemon as `sensor.rejected`).
        self.refusals: list[str] = []

    @abstractmethod
    def feed(self, data: bytes, recv_mono: float) -> list[Frame]:
        """Decode the bytes of one read that arrived at host time ``recv_mono``."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget a partial packet, e.g. after the link reconnected."""

    def counters(self) -> dict[str, Any]:
        """Every counter by name, for `sensors test` and health reports."""
        return dataclasses.asdict(self.stats)

    def rejected(self) -> int:
        """Inputs refused for making no sense (bad lines, values, lengths; checksums aside)."""
        return 0

    def _refused(self, reason: str) -> None:
        """Note a kind of refusal the first time it happens."""
        if reason not in self.refusals and len(self.refusals) < self.MAX_REFUSALS:
            self.refusals.append(reason)


# --------------------------------------------------------------------------------------------
# Host time for devices without a clock
# --------------------------------------------------------------------------------------------


def snap_rate(measured_hz: float, rates: Sequence[float], tolerance: float = 0.15) -> float:
    """Return the device rate nearest ``measured_hz`` if within ``tolerance``, else the measure.

    Vendor IMUs run at a handful of rates (a WT901: 0.2 … 200 Hz); snapping removes the few
    per cent a crystal and a host clock disagree by, so a 10 Hz model sees exactly 10 Hz.
    """
    best = min(rates, key=lambda r: abs(math.log(measured_hz / r)), default=None)
    if best is not None and abs(measured_hz - best) <= tolerance * best:
        return float(best)
    return float(round(measured_hz, 3))


class RateLearner:
    """Estimates a sample rate from (samples received, receive time) pairs.

    Samples in the first read arrived before its timestamp, so the rate counts only the
    samples after it: ``(n_last - n_first) / (t_last - t_first)``. Delivery jitter affects only
    the two ends of the span, so the estimate improves as the span grows.
    """

    def __init__(self, *, min_span_s: float = 1.0, min_samples: int = 5, window_s: float = 10.0):
        self.min_span_s = min_span_s
        self.min_samples = min_samples
        self.window_s = window_s
        self._points: deque[tuple[int, float]] = deque()
        self._total = 0

    def reset(self) -> None:
        """Start over, e.g. after an outage."""
        self._points.clear()

    def add(self, n: int, recv: float) -> None:
        """Record that ``n`` samples arrived at ``recv``."""
        self._total += n
        points = self._points
        points.append((self._total, recv))
        # Keep at least min_span_s worth, drop what is older than the window.
        while len(points) > 2 and recv - points[1][1] >= self.window_s:
            points.popleft()

    def rate(self) -> float | None:
        """The estimate in Hz, or None while the span or sample count is too small."""
        if len(self._points) < 2:
            return None
        (n0, t0), (n1, t1) = self._points[0], self._points[-1]
        span = t1 - t0
        if span < self.min_span_s or n1 - n0 < self.min_samples:
            return None
        return (n1 - n0) / span


class HostClock:
    """Evenly spaced timestamps for samples of a device that sends none.

    Each read of ``n`` samples at host time ``recv`` is predicted to end at
    ``next + (n - 1) * period``. Delivery only ever adds delay, so an arrival *earlier* than
    predicted moves the prediction back at once (min-delay tracking), while a later one pulls
    it forward slowly (``gain``): bursts from USB latency or BLE connection intervals are
    smoothed out instead of stamped into the data. An arrival later than ``reset_s`` past the
    prediction is an outage; the clock re-anchors and reports the samples missed.
    """

    def __init__(self, period_s: float, *, gain: float = 0.02, reset_s: float = 0.5) -> None:
        if not period_s > 0:
            raise ValueError(f"period must be positive, got {period_s}")
        self.period_s = period_s
        self.gain = gain
        self.reset_s = reset_s
        self._next: float | None = None
        self.resets = 0

    def restart(self) -> None:
        """Forget the phase, e.g. after the link reconnected."""
        self._next = None

    def skip(self, n: int) -> None:
        """``n`` samples were lost before the next ones (the device's counter says so)."""
        if self._next is not None:
            self._next += n * self.period_s

    def stamp(self, n: int, recv: float) -> tuple[float, int]:
        """Time of the first of ``n`` samples that arrived at ``recv``, and samples missed."""
        period = self.period_s
        nxt = self._next
        missed = 0
        if nxt is None:
            first = recv - (n - 1) * period
        else:
            err = recv - (nxt + (n - 1) * period)
            if err > max(self.reset_s, 4 * period):
                first = recv - (n - 1) * period
                missed = max(0, round((first - nxt) / period))
                self.resets += 1
            elif err < 0:
                # Never step back past half a period: stamps already given out stay ordered.
                first = nxt + max(err, -0.5 * period)
            else:
                first = nxt + err * self.gain
        self._next = first + n * period
        return first, missed


@dataclass
class HostTimedStats:
    """Counters of a host-timed profile (vendor packets in, synthesized v1 frames out).

    Attributes:
        bytes_in: Bytes fed.
        packets_ok: Packets accepted.
        crc_errors: Packets rejected by their checksum.
        resyncs: Times the decoder lost packet alignment and searched for the next header.
        garbage_bytes: Bytes skipped while resynchronising.
        unknown_packets: Well-formed packets of a type this profile does not use.
        incomplete_samples: Samples dropped because one of their packets was missing.
        samples: Samples delivered.
        samples_missed: Samples the host clock inferred were lost during outages.
        clock_resets: Times the host clock re-anchored after an outage.
        rate_hz: Rate announced in HELLO (0 until declared or learned).
        measured_rate_hz: Rate measured over the last seconds (0 until known).
    """

    bytes_in: int = 0
    packets_ok: int = 0
    crc_errors: int = 0
    resyncs: int = 0
    garbage_bytes: int = 0
    unknown_packets: int = 0
    incomplete_samples: int = 0
    samples: int = 0
    samples_missed: int = 0
    clock_resets: int = 0
    rate_hz: float = 0.0
    measured_rate_hz: float = 0.0


class HostTimedProfile(Profile):
    """A profile whose device sends bare samples: synthesizes HELLO, seq and timestamps.

    Subclasses decode bytes into an ``(n, channels)`` int16 array (:meth:`_decode`) and
    declare :attr:`channels` and :attr:`supported_rates`. This class announces the layout,
    learns the rate if the config does not declare it (holding the first second of samples
    back meanwhile, nothing is dropped), re-announces when the device's rate changes, and
    stamps every batch with :class:`HostClock`.
    """

    channels: tuple[ChannelInfo, ...]
    supported_rates: ClassVar[tuple[float, ...]] = ()
    #: How close (relative) a measured rate must be to a supported one to snap to it.
    snap_tolerance: ClassVar[float] = 0.15
    firmware: ClassVar[str] = "unknown"
    stats: HostTimedStats

    #: Samples held back while the rate is being learned, at most.
    MAX_PENDING = 100_000
    #: Samples in one IMU_BATCH frame, at most.
    MAX_BATCH = 512

    def __init__(self, config: Any, *, device_id: str) -> None:
        super().__init__(config, device_id=getattr(config, "device_id", None) or device_id)
        self.stats = HostTimedStats()
        #: Rates a learned rate snaps to (the class's, unless the config lists its own).
        self.rates: tuple[float, ...] = self.supported_rates
        declared = getattr(config, "rate_hz", None)
        self._declared: float | None = float(declared) if declared else None
        self._rate: float | None = self._declared
        self._learner = RateLearner()
        self._clock: HostClock | None = None
        self._origin: float | None = None
        self._pending: list[tuple[npt.NDArray[np.int16], float, list[tuple[int, int]]]] = []
        #: Gaps a device's own packet counter shows in the read being decoded, as
        #: (index of the first sample after the gap, samples lost); a subclass with a
        #: counter appends to it in :meth:`_decode`.
        self._read_gaps: list[tuple[int, int]] = []
        self._carried_gap = 0  # lost after the last sample of a read: goes with the next
        self._pending_n = 0
        self._seq = 0
        self._hello_due = True
        self._last_recv: float | None = None
        self._rate_checked = -math.inf
        self._rate_suspect = False
        if self._rate is not None:
            self.stats.rate_hz = self._rate

    @abstractmethod
    def _decode(self, data: bytes) -> npt.NDArray[np.int16]:
        """Decode bytes into complete samples, ``(n, len(channels))``; keep partial input."""

    def hello(self) -> Hello | None:
        """The layout this profile announces, once the rate is known."""
        if self._rate is None:
            return None
        return Hello(self.device_id, self.firmware, self._rate, self.channels)

    def reset(self) -> None:
        """After a reconnect: drop partial packets and re-announce the layout."""
        self._hello_due = True
        self._learner.reset()
        if self._clock is not None:
            self._clock.restart()

    def feed(self, data: bytes, recv_mono: float) -> list[Frame]:
        """Decode one read; returns HELLO (when due) and IMU_BATCH frames."""
        self.stats.bytes_in += len(data)
        samples = self._decode(data)
        n = len(samples)
        gaps, self._read_gaps = self._read_gaps, []
        if self._carried_gap:
            gaps.insert(0, (0, self._carried_gap))
            self._carried_gap = 0
        if n == 0:
            self._carried_gap = sum(k for _, k in gaps)
            return []
        gap = sorted(gaps)
        self.stats.samples += n
        self._observe_rate(n, recv_mono)
        if self._rate is None:
            if self._pending_n + n > self.MAX_PENDING:
                self._pending.clear()
                self._pending_n = 0
            self._pending.append((samples, recv_mono, gap))
            self._pending_n += n
            return []
        frames: list[Frame] = []
        if self._pending:
            pending, self._pending, self._pending_n = self._pending, [], 0
            for chunk, recv, lost in pending:
                frames.extend(self._batches(chunk, recv, lost))
        frames.extend(self._batches(samples, recv_mono, gap))
        return frames

    def _observe_rate(self, n: int, recv: float) -> None:
        last, self._last_recv = self._last_recv, recv
        if last is not None and self._rate is not None and recv - last > max(1.0, 4 / self._rate):
            self._learner.reset()  # an outage says nothing about the rate
        self._learner.add(n, recv)
        if self._rate is not None and recv - self._rate_checked < 0.5:
            return  # the estimate moves slowly; twice a second is plenty
        measured = self._learner.rate()
        if measured is None:
            return
        self._rate_checked = recv
        self.stats.measured_rate_hz = round(measured, 3)
        clock = self._clock
        if clock is not None and self._rate and abs(measured - self._rate) <= 0.1 * self._rate:
            clock.period_s = 1.0 / measured  # follow the device's crystal, not its nominal rate
        snapped = snap_rate(measured, self.rates, self.snap_tolerance)
        if self._rate is None:
            self._rate = snapped
        elif self._declared is None and abs(snapped - self._rate) > 0.1 * self._rate:
            if not self._rate_suspect:
                # Measure again from scratch, so the new figure holds no pre-change samples.
                self._rate_suspect = True
                self._learner.reset()
                return
            # The device was reconfigured: announce the new rate (the stream re-plans windows).
            self._rate = snapped
            self._hello_due = True
            self._clock = None
        else:
            self._rate_suspect = False
            return
        self._rate_suspect = False
        self.stats.rate_hz = self._rate

    def _batches(
        self,
        samples: npt.NDArray[np.int16],
        recv: float,
        gaps: Sequence[tuple[int, int]] = (),
    ) -> list[Frame]:
        """HELLO when due, then IMU_BATCH frames; split where the device's counter jumped."""
        frames: list[Frame] = []
        if self._hello_due:
            hello = self.hello()
            assert hello is not None
            frames.append(Frame(FrameType.HELLO, 0, self._next_seq(), 0, hello_payload(hello)))
            self._hello_due = False
        n = len(samples)
        segments: list[tuple[int, int, int]] = []  # (start, end, lost before start)
        start = 0
        lost = 0
        for index, k in gaps:
            at = min(max(index, start), n)
            if at > start:
                segments.append((start, at, lost))
                start, lost = at, 0
            lost += k
        if start < n:
            segments.append((start, n, lost))
        else:
            self._carried_gap += lost
        # Only the read's last sample arrived at `recv`: an earlier segment arrived as much
        # earlier as the samples (received or lost) that follow it take.
        period = 1.0 / self._rate if self._rate else 0.0
        after = 0
        arrivals: list[float] = []
        for begin, end, lost_before in reversed(segments):
            arrivals.append(recv - after * period)
            after += end - begin + lost_before
        for (begin, end, lost_before), arrival in zip(segments, reversed(arrivals), strict=True):
            frames += self._stamped(samples[begin:end], arrival, lost_before)
        return frames

    def _stamped(self, samples: npt.NDArray[np.int16], recv: float, lost: int) -> list[Frame]:
        """IMU_BATCH frames of consecutive samples, after ``lost`` ones the device counted."""
        rate = self._rate
        assert rate is not None
        frames: list[Frame] = []
        clock = self._clock
        if clock is None:
            clock = self._clock = HostClock(1.0 / rate)
        if self._origin is None:
            self._origin = recv
        n, channels = samples.shape
        if lost:
            clock.skip(lost)
            self.stats.samples_missed += lost
        first, missed = clock.stamp(n, recv)
        if missed:
            self.stats.samples_missed += missed
            self.stats.clock_resets += 1
        missed += lost
        period = clock.period_s
        limit = min(self.MAX_BATCH, (MAX_PAYLOAD - _IMU_HEADER.size) // (2 * channels))
        for start in range(0, n, limit):
            part = samples[start : start + limit]
            ts_us = round((first + start * period - self._origin) * 1e6) & _U32
            payload = _IMU_HEADER.pack(len(part), channels, 0) + part.astype("<i2").tobytes()
            frames.append(
                Frame(
                    FrameType.IMU_BATCH,
                    0,
                    self._next_seq(),
                    ts_us,
                    payload,
                    gap=missed if start == 0 else 0,
                )
            )
        return frames

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & _U32
        return seq
