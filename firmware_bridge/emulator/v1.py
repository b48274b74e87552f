"""Protocol v1 frames from a motion source, the way our firmware produces them.

Shared by the live emulator and :func:`encode_stream`, which gives benchmarks and tests
reproducible bytes without a pty or a thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from firmware_bridge.emulator.motion import MotionSource, default_scales
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

__all__ = ["StreamEncoder", "encode_stream"]

_U32 = 0xFFFFFFFF


class StreamEncoder:
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
    encoder = StreamEncoder(
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
