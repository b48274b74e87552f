"""What the payloads of protocol v1 carry, as values: HELLO, STATUS, face crops, embeddings."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bridge.protocol.v1.wire import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE_HZ,
    MAX_SCALE,
    MIN_SAMPLE_RATE_HZ,
    MIN_SCALE,
    ProtocolError,
)

__all__ = ["ChannelInfo", "CropChunk", "Embedding", "FaceCrop", "Hello", "Status", "hello_problem"]


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One channel of a sensor stream as announced in HELLO.

    Attributes:
        name: Short channel name, e.g. ``"ax"``.
        unit: Physical unit, e.g. ``"m/s^2"``.
        scale: Physical value of one LSB of the int16 sample.
    """

    name: str
    unit: str
    scale: float


@dataclass(frozen=True, slots=True)
class Hello:
    """Payload of a HELLO frame: who the device is and how to read its IMU_BATCH frames.

    Attributes:
        device_id: Stable identifier of the device (serial number, MAC, ...).
        firmware: Firmware version string.
        sample_rate_hz: Nominal sample rate of the stream.
        channels: Channel layout, in the order samples are interleaved.
    """

    device_id: str
    firmware: str
    sample_rate_hz: float
    channels: tuple[ChannelInfo, ...]


def hello_problem(hello: Hello) -> str | None:
    """Why a well-formed HELLO still makes no sense, or None when it does.

    A HELLO that passed the CRC and parses can still announce nonsense a receiver must not
    act on: a NaN, infinite, zero or absurd sample rate (the sample period is ``1 / rate``),
    no channels or more than :data:`MAX_CHANNELS`, channels without a name or named twice,
    a scale that is not a finite number within :data:`MIN_SCALE` … :data:`MAX_SCALE` in
    magnitude. The one exception is a rate of exactly 0, which announces a stream that
    carries no IMU samples (a camera, §11); receivers refuse IMU_BATCH frames on it.

    Returns:
        A short reason naming the field and the accepted range.
    """
    rate = hello.sample_rate_hz
    if not math.isfinite(rate) or (
        rate != 0 and not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ
    ):
        return (
            f"sample rate {rate:g} Hz is outside {MIN_SAMPLE_RATE_HZ:g}..{MAX_SAMPLE_RATE_HZ:g} Hz "
            "(or 0 for a stream without samples)"
        )
    channels = hello.channels
    if not 1 <= len(channels) <= MAX_CHANNELS:
        return f"{len(channels)} channels; a HELLO announces 1..{MAX_CHANNELS}"
    seen: set[str] = set()
    for index, channel in enumerate(channels):
        if not channel.name.strip():
            return f"channel {index} has no name"
        if channel.name in seen:
            return f"channel name {channel.name[:32]!r} appears twice"
        seen.add(channel.name)
        scale = channel.scale
        if not math.isfinite(scale) or not MIN_SCALE <= abs(scale) <= MAX_SCALE:
            return (
                f"channel {channel.name[:32]!r} has scale {scale:g}; a scale is a finite "
                f"number with magnitude {MIN_SCALE:g}..{MAX_SCALE:g}"
            )
    return None


@dataclass(frozen=True, slots=True)
class Status:
    """Payload of a STATUS frame.

    Attributes:
        uptime_s: Seconds since the device booted.
        battery_mv: Battery voltage in millivolts, or None if the device does not know.
        temperature_c: Device temperature in °C (0.01 °C resolution), or None if unknown.
        error_flags: Device-specific error bit field; 0 means healthy.
        dropped_samples: Samples the device discarded because its output could not keep up.
    """

    uptime_s: int
    battery_mv: int | None
    temperature_c: float | None
    error_flags: int
    dropped_samples: int


@dataclass(frozen=True, slots=True)
class CropChunk:
    """Payload of one FACE_CROP frame: a piece of one image.

    Attributes:
        crop_id: Per-stream image counter (u16, wraps); every chunk of one image shares it.
        index: Position of this chunk, 0-based.
        count: Chunks of the whole image.
        pixel_format: A :class:`PixelFormat` value.
        width: Image width in pixels.
        height: Image height in pixels.
        total_bytes: Size of the whole image's bytes, over all chunks.
        data: This chunk's bytes.
    """

    crop_id: int
    index: int
    count: int
    pixel_format: int
    width: int
    height: int
    total_bytes: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FaceCrop:
    """A whole face image, reassembled from its FACE_CROP chunks by :class:`CropAssembler`.

    Attributes:
        stream_id: Camera stream it came from.
        crop_id: The device's image counter.
        pixel_format: A :class:`PixelFormat` value.
        width: Width in pixels.
        height: Height in pixels.
        data: The image bytes (raw pixels or a JPEG file).
        timestamp_us: Device time of the capture (the first chunk's frame timestamp).
        seq: Sequence number of the first chunk.
    """

    stream_id: int
    crop_id: int
    pixel_format: int
    width: int
    height: int
    data: bytes
    timestamp_us: int
    seq: int


@dataclass(frozen=True, slots=True)
class Embedding:
    """Payload of an EMBEDDING frame.

    Attributes:
        model: ``name@version`` of the model that computed it; a gateway refuses to compare
            it with templates of another model.
        element_type: How the values travelled (an :class:`EmbeddingType` value).
        values: The vector as float32 (int8 already multiplied by its scale).
    """

    model: str
    element_type: int
    values: npt.NDArray[np.float32]


class _PayloadReader:
    """Cursor over a payload that turns truncation into a :class:`ProtocolError`."""

    __slots__ = ("_data", "_kind", "_offset")

    def __init__(self, data: bytes, kind: str) -> None:
        self._data = data
        self._kind = kind
        self._offset = 0

    @property
    def offset(self) -> int:
        return self._offset

    def unpack(self, layout: struct.Struct, what: str) -> tuple[Any, ...]:
        if self._offset + layout.size > len(self._data):
            raise ProtocolError(f"{self._kind} payload truncated in {what}")
        values: tuple[Any, ...] = layout.unpack_from(self._data, self._offset)
        self._offset += layout.size
        return values

    def text(self, what: str) -> str:
        if self._offset >= len(self._data):
            raise ProtocolError(f"{self._kind} payload truncated before {what}")
        length = self._data[self._offset]
        start = self._offset + 1
        end = start + length
        if end > len(self._data):
            raise ProtocolError(f"{self._kind} payload truncated in {what}")
        self._offset = end
        try:
            return self._data[start:end].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"{self._kind} {what} is not valid UTF-8") from err
