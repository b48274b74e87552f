"""Wire protocol v1 between sensor firmware and the gateway: SLIP-framed, CRC-checked frames.

A frame on the wire is ``END <escaped(header + payload + crc)> END``. SLIP (RFC 1055) was
chosen over COBS because the gateway can undo it with two ``bytes.replace`` calls and split
a read on ``END`` with one ``bytes.split``, all at C speed; COBS needs a Python loop per zero
byte and int16 IMU data is full of zeros. The byte layout is specified in ``docs/protocol.md``;
this module is the reference implementation of both directions.

The decoder is the hot path of ingest, so it avoids per-byte Python work entirely and never
raises on bad input: every rejected byte is accounted for in :class:`DecoderStats`.
"""

from __future__ import annotations

import enum
import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "END",
    "ESC",
    "ESC_END",
    "ESC_ESC",
    "HEADER_SIZE",
    "MAX_CHANNELS",
    "MAX_CROP_BYTES",
    "MAX_CROP_CHUNK",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "MAX_SAMPLE_RATE_HZ",
    "MAX_SCALE",
    "MIN_SAMPLE_RATE_HZ",
    "MIN_SCALE",
    "VERSION",
    "ChannelInfo",
    "CropAssembler",
    "CropChunk",
    "CropStats",
    "Decoder",
    "DecoderStats",
    "Embedding",
    "EmbeddingType",
    "FaceCrop",
    "Frame",
    "FrameType",
    "Hello",
    "PixelFormat",
    "ProtocolError",
    "Status",
    "embedding_payload",
    "encode_frame",
    "face_crop_payloads",
    "hello_payload",
    "hello_problem",
    "imu_payload",
    "iter_frames",
    "status_payload",
]

VERSION = 1
"""Value of the version byte of every v1 frame."""

MAX_FRAME = 16384
"""Largest unescaped frame (header + payload + CRC) a v1 receiver accepts, in bytes."""

HEADER_SIZE = 14
"""Bytes before the payload: version, type, stream, flags, seq, timestamp, payload length."""

_CRC_SIZE = 4
_OVERHEAD = HEADER_SIZE + _CRC_SIZE

MAX_PAYLOAD = MAX_FRAME - _OVERHEAD
"""Largest payload that fits in :data:`MAX_FRAME`."""

END = b"\xc0"
"""SLIP frame delimiter."""
ESC = b"\xdb"
"""SLIP escape byte."""
ESC_END = b"\xdb\xdc"
"""How a payload byte 0xC0 travels on the wire."""
ESC_ESC = b"\xdb\xdd"
"""How a payload byte 0xDB travels on the wire."""

_U32 = 0xFFFFFFFF
_HALF_U32 = 0x80000000
# An escaped frame is at most twice its unescaped size; a tail longer than that can never end
# in a valid frame, so the decoder stops buffering it.
_MAX_ESCAPED = 2 * MAX_FRAME

# CRC-32 (IEEE) has a fixed residue: running it over a message followed by that message's own
# CRC (little-endian, as sent) always gives this constant. Checking the residue validates a
# frame with one crc32 call over the whole body and no slicing.
_CRC_RESIDUE = 0x2144DF1C

_HEADER = struct.Struct("<BBBBIIH")
_CRC = struct.Struct("<I")
_IMU_HEADER = struct.Struct("<HBB")
_STATUS = struct.Struct("<IHhII")
_F32 = struct.Struct("<f")
_CHANNEL_SCALE = struct.Struct("<f")
_HELLO_TAIL = struct.Struct("<fB")

_BATTERY_UNKNOWN = 0xFFFF
_TEMPERATURE_UNKNOWN = 0x7FFF

# FACE_CROP: crop id, chunk index, chunk count, pixel format, flags, width, height, image bytes.
_CROP_HEADER = struct.Struct("<HHHBBHHI")
# EMBEDDING, after the model reference: element type, flags, dimension, int8 scale.
_EMBEDDING_HEAD = struct.Struct("<BBHf")

MAX_CROP_CHUNK = MAX_PAYLOAD - _CROP_HEADER.size
"""Most image bytes one FACE_CROP frame carries."""

MAX_CROP_BYTES = 1 << 20
"""Largest image a gateway reassembles by default (1 MiB); bigger crops are counted, dropped."""

MIN_SAMPLE_RATE_HZ = 0.1
"""Slowest sample rate a HELLO may announce (0 exactly marks a stream without samples)."""
MAX_SAMPLE_RATE_HZ = 20_000.0
"""Fastest sample rate a HELLO may announce."""
MAX_CHANNELS = 64
"""Most channels a HELLO may announce (the wire format would carry 255)."""
MIN_SCALE = 1e-12
"""Smallest magnitude of a channel scale (physical value of one LSB)."""
MAX_SCALE = 1e6
"""Largest magnitude of a channel scale: int16 × scale stays far inside float32."""


class FrameType(enum.IntEnum):
    """Frame types of protocol v1; other values are reserved and skipped by receivers."""

    HELLO = 1
    """Device identity and channel layout; sent at start and periodically."""
    IMU_BATCH = 2
    """A batch of int16 samples, sample-major."""
    STATUS = 3
    """Device health: uptime, battery, temperature, error flags, overflow counter."""
    FACE_CROP = 4
    """One chunk of a face image (GRAY8, RGB888 or JPEG) cut out by a camera module."""
    EMBEDDING = 5
    """A face embedding computed on the camera module, tagged with the model that made it."""


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class PixelFormat(enum.IntEnum):
    """How the image bytes of a FACE_CROP are encoded."""

    GRAY8 = 1
    """One byte per pixel, row-major, top row first."""
    RGB888 = 2
    """Three bytes per pixel in R, G, B order, row-major, top row first."""
    JPEG = 3
    """A baseline JPEG file; width and height repeat what its header says."""


class EmbeddingType(enum.IntEnum):
    """Element type of the values of an EMBEDDING frame."""

    FLOAT32 = 1
    FLOAT16 = 2
    INT8 = 3
    """Symmetric int8: value = q × scale."""


_ELEMENT_DTYPES: dict[int, np.dtype[Any]] = {
    EmbeddingType.FLOAT32: np.dtype("<f4"),
    EmbeddingType.FLOAT16: np.dtype("<f2"),
    EmbeddingType.INT8: np.dtype("i1"),
}


class ProtocolError(ValueError):
    """A frame passed the CRC check but its payload does not match the layout of its type."""


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


class Frame:
    """One decoded frame whose CRC, version and length were valid.

    Kept as a plain slotted class because the decoder builds one per frame on the hot path.
    Payloads are parsed lazily by :meth:`samples`, :meth:`hello` and :meth:`status`.

    Attributes:
        frame_type: Frame type byte (a :class:`FrameType` value for delivered frames).
        stream_id: Sensor stream on the device, 0..255.
        seq: Per-stream sequence number, u32.
        timestamp_us: Device clock in µs (of the first sample for IMU_BATCH), u32.
        payload: The unescaped payload bytes.
        gap: Frames missing on this stream just before this one, as seen by the decoder.
    """

    __slots__ = ("frame_type", "gap", "payload", "seq", "stream_id", "timestamp_us")

    def __init__(
        self,
        frame_type: int,
        stream_id: int,
        seq: int,
        timestamp_us: int,
        payload: bytes,
        *,
        gap: int = 0,
    ) -> None:
        self.frame_type = frame_type
        self.stream_id = stream_id
        self.seq = seq
        self.timestamp_us = timestamp_us
        self.payload = payload
        self.gap = gap

    def __repr__(self) -> str:
        return (
            f"Frame(type={self.frame_type}, stream={self.stream_id}, seq={self.seq}, "
            f"ts={self.timestamp_us}, payload={len(self.payload)}B, gap={self.gap})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.frame_type == other.frame_type
            and self.stream_id == other.stream_id
            and self.seq == other.seq
            and self.timestamp_us == other.timestamp_us
            and self.payload == other.payload
            and self.gap == other.gap
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def samples(self) -> npt.NDArray[np.int16]:
        """Return the IMU_BATCH samples as a read-only ``(n_samples, n_channels)`` int16 view.

        The array shares memory with :attr:`payload` (no copy); multiply by the channel scales
        from HELLO to get physical values.

        Raises:
            ProtocolError: The frame is not an IMU_BATCH or its payload length does not match
                its sample and channel counts.
        """
        if self.frame_type != FrameType.IMU_BATCH:
            raise ProtocolError(f"frame type {self.frame_type} carries no samples")
        payload = self.payload
        if len(payload) < _IMU_HEADER.size:
            raise ProtocolError(f"IMU_BATCH payload of {len(payload)} bytes has no header")
        n_samples, n_channels, _reserved = _IMU_HEADER.unpack_from(payload)
        count = n_samples * n_channels
        expected = _IMU_HEADER.size + 2 * count
        if n_channels == 0 or len(payload) != expected:
            raise ProtocolError(
                f"IMU_BATCH declares {n_samples} samples × {n_channels} channels "
                f"({expected} bytes) but the payload has {len(payload)} bytes"
            )
        values = np.frombuffer(payload, dtype="<i2", count=count, offset=_IMU_HEADER.size)
        return values.reshape(n_samples, n_channels)

    def hello(self) -> Hello:
        """Parse a HELLO payload.

        Bytes after the last channel are ignored so later firmware can append fields.

        Raises:
            ProtocolError: The frame is not a HELLO or its payload is truncated or not UTF-8.
        """
        if self.frame_type != FrameType.HELLO:
            raise ProtocolError(f"frame type {self.frame_type} is not HELLO")
        reader = _PayloadReader(self.payload, "HELLO")
        device_id = reader.text("device id")
        firmware = reader.text("firmware version")
        sample_rate_hz, n_channels = reader.unpack(_HELLO_TAIL, "sample rate")
        channels = []
        for index in range(n_channels):
            name = reader.text(f"channel {index} name")
            unit = reader.text(f"channel {index} unit")
            (scale,) = reader.unpack(_CHANNEL_SCALE, f"channel {index} scale")
            channels.append(ChannelInfo(name, unit, scale))
        return Hello(device_id, firmware, sample_rate_hz, tuple(channels))

    def status(self) -> Status:
        """Parse a STATUS payload.

        Bytes after the known fields are ignored so later firmware can append fields.

        Raises:
            ProtocolError: The frame is not a STATUS or its payload is truncated.
        """
        if self.frame_type != FrameType.STATUS:
            raise ProtocolError(f"frame type {self.frame_type} is not STATUS")
        reader = _PayloadReader(self.payload, "STATUS")
        uptime_s, battery_mv, temperature, error_flags, dropped = reader.unpack(_STATUS, "fields")
        return Status(
            uptime_s=uptime_s,
            battery_mv=None if battery_mv == _BATTERY_UNKNOWN else battery_mv,
            temperature_c=None if temperature == _TEMPERATURE_UNKNOWN else temperature / 100,
            error_flags=error_flags,
            dropped_samples=dropped,
        )

    def crop_chunk(self) -> CropChunk:
        """Parse a FACE_CROP payload.

        Raises:
            ProtocolError: The frame is not a FACE_CROP, its header is truncated or its
                fields contradict each other (unknown pixel format, index past the count,
                a raw image whose size is not width × height × bytes per pixel).
        """
        if self.frame_type != FrameType.FACE_CROP:
            raise ProtocolError(f"frame type {self.frame_type} is not FACE_CROP")
        payload = self.payload
        if len(payload) < _CROP_HEADER.size:
            raise ProtocolError(f"FACE_CROP payload of {len(payload)} bytes has no header")
        crop_id, index, count, fmt, _flags, width, height, total = _CROP_HEADER.unpack_from(payload)
        if fmt not in _PIXEL_BYTES:
            raise ProtocolError(
                f"FACE_CROP pixel format {fmt} is unknown (1 GRAY8, 2 RGB888, 3 JPEG)"
            )
        if count == 0 or index >= count:
            raise ProtocolError(f"FACE_CROP chunk {index} of {count} is out of range")
        if width == 0 or height == 0:
            raise ProtocolError(f"FACE_CROP image of {width}×{height} pixels is empty")
        per_pixel = _PIXEL_BYTES[fmt]
        if per_pixel and total != width * height * per_pixel:
            raise ProtocolError(
                f"FACE_CROP {PixelFormat(fmt).name} {width}×{height} needs "
                f"{width * height * per_pixel} bytes, header says {total}"
            )
        data = payload[_CROP_HEADER.size :]
        if len(data) > total:
            raise ProtocolError(f"FACE_CROP chunk of {len(data)} bytes exceeds the image ({total})")
        return CropChunk(crop_id, index, count, fmt, width, height, total, data)

    def embedding(self) -> Embedding:
        """Parse an EMBEDDING payload.

        Raises:
            ProtocolError: The frame is not an EMBEDDING, or its payload is truncated, of an
                unknown element type, of the wrong length or holds non-finite values.
        """
        if self.frame_type != FrameType.EMBEDDING:
            raise ProtocolError(f"frame type {self.frame_type} is not EMBEDDING")
        reader = _PayloadReader(self.payload, "EMBEDDING")
        model = reader.text("model reference")
        element_type, _flags, dim, scale = reader.unpack(_EMBEDDING_HEAD, "header")
        dtype = _ELEMENT_DTYPES.get(element_type)
        if dtype is None:
            raise ProtocolError(
                f"EMBEDDING element type {element_type} is unknown (1 float32, 2 float16, 3 int8)"
            )
        offset = reader.offset
        expected = offset + dim * dtype.itemsize
        if dim == 0 or len(self.payload) != expected:
            raise ProtocolError(
                f"EMBEDDING of {dim} {dtype.name} values needs {expected} bytes, "
                f"the payload has {len(self.payload)}"
            )
        raw = np.frombuffer(self.payload, dtype=dtype, count=dim, offset=offset)
        values = raw.astype(np.float32)
        if element_type == EmbeddingType.INT8:
            values *= np.float32(scale)
        if not np.all(np.isfinite(values)):
            raise ProtocolError("EMBEDDING holds values that are not finite numbers")
        return Embedding(model, element_type, values)


_PIXEL_BYTES: dict[int, int] = {PixelFormat.GRAY8: 1, PixelFormat.RGB888: 3, PixelFormat.JPEG: 0}


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


# --------------------------------------------------------------------------------------------
# Encoding (what the firmware does; used by the emulator, tests and replay tools)
# --------------------------------------------------------------------------------------------


def encode_frame(
    frame_type: int, stream_id: int, seq: int, timestamp_us: int, payload: bytes
) -> bytes:
    """Build one wire frame, including the leading and trailing END bytes.

    Args:
        frame_type: Frame type byte, 0..255 (see :class:`FrameType`).
        stream_id: Stream on the device, 0..255.
        seq: Sequence number; masked to 32 bits so callers can just keep counting.
        timestamp_us: Device time in µs; masked to 32 bits (wraps every ~71.6 min).
        payload: Unescaped payload, at most :data:`MAX_PAYLOAD` bytes.

    Raises:
        ValueError: A field is out of range or the payload is too large.
    """
    if not 0 <= frame_type <= 0xFF:
        raise ValueError(f"frame type {frame_type} does not fit in a byte")
    if not 0 <= stream_id <= 0xFF:
        raise ValueError(f"stream id {stream_id} does not fit in a byte")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = (
        _HEADER.pack(
            VERSION, frame_type, stream_id, 0, seq & _U32, timestamp_us & _U32, len(payload)
        )
        + payload
    )
    body += _CRC.pack(zlib.crc32(body))
    # Escape ESC before END: escaping END introduces new ESC bytes that must not be re-escaped.
    return END + body.replace(ESC, ESC_ESC).replace(END, ESC_END) + END


def _short_text(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFF:
        raise ValueError(f"{what} is {len(raw)} bytes of UTF-8; at most 255 fit")
    return bytes((len(raw),)) + raw


def hello_payload(hello: Hello) -> bytes:
    """Serialize a HELLO payload.

    Raises:
        ValueError: A string is longer than 255 UTF-8 bytes or there are not 1..255 channels.
    """
    if not 1 <= len(hello.channels) <= 0xFF:
        raise ValueError(f"HELLO needs 1..255 channels, got {len(hello.channels)}")
    parts = [
        _short_text(hello.device_id, "device id"),
        _short_text(hello.firmware, "firmware version"),
        _HELLO_TAIL.pack(hello.sample_rate_hz, len(hello.channels)),
    ]
    for channel in hello.channels:
        parts.append(_short_text(channel.name, f"channel name {channel.name!r}"))
        parts.append(_short_text(channel.unit, f"unit of channel {channel.name!r}"))
        parts.append(_CHANNEL_SCALE.pack(channel.scale))
    return b"".join(parts)


def imu_payload(samples: npt.NDArray[np.integer]) -> bytes:
    """Serialize an IMU_BATCH payload from an ``(n_samples, n_channels)`` integer array.

    Raises:
        TypeError: The array is not of an integer dtype.
        ValueError: The shape is wrong, a value does not fit int16 or the frame would be too big.
    """
    array = np.asarray(samples)
    if array.ndim != 2:
        raise ValueError(f"samples must be (n_samples, n_channels), got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"samples must be integers, got {array.dtype}")
    n_samples, n_channels = array.shape
    if not 1 <= n_channels <= 0xFF:
        raise ValueError(f"IMU_BATCH needs 1..255 channels, got {n_channels}")
    if n_samples > 0xFFFF or _IMU_HEADER.size + 2 * array.size > MAX_PAYLOAD:
        raise ValueError(f"{n_samples} × {n_channels} samples do not fit in one frame")
    if array.dtype != np.int16 and array.size and (array.min() < -32768 or array.max() > 32767):
        raise ValueError("sample values must fit in int16")
    return _IMU_HEADER.pack(n_samples, n_channels, 0) + array.astype("<i2", copy=False).tobytes()


def status_payload(status: Status) -> bytes:
    """Serialize a STATUS payload; None maps to the protocol's "unknown" sentinels.

    Temperatures are rounded to 0.01 °C and clamped so they never collide with the sentinel.
    """
    battery = _BATTERY_UNKNOWN if status.battery_mv is None else status.battery_mv
    if status.temperature_c is None:
        temperature = _TEMPERATURE_UNKNOWN
    else:
        temperature = min(max(round(status.temperature_c * 100), -0x8000), _TEMPERATURE_UNKNOWN - 1)
    return _STATUS.pack(
        status.uptime_s & _U32,
        battery,
        temperature,
        status.error_flags & _U32,
        status.dropped_samples & _U32,
    )


def face_crop_payloads(
    data: bytes,
    pixel_format: int,
    width: int,
    height: int,
    crop_id: int,
    *,
    chunk_size: int = MAX_CROP_CHUNK,
) -> list[bytes]:
    """Cut one image into FACE_CROP payloads, in the order they must be sent.

    Args:
        data: Raw pixels (GRAY8: width × height bytes; RGB888: × 3) or a JPEG file.
        pixel_format: A :class:`PixelFormat` value.
        width: Image width in pixels, 1..65535.
        height: Image height in pixels, 1..65535.
        crop_id: The device's image counter; masked to 16 bits.
        chunk_size: Most image bytes per frame (smaller suits a slow BLE link).

    Raises:
        ValueError: The format is unknown, the size does not match the format, or the
            image needs more than 65535 chunks.
    """
    if pixel_format not in _PIXEL_BYTES:
        raise ValueError(f"unknown pixel format {pixel_format} (1 GRAY8, 2 RGB888, 3 JPEG)")
    if not (1 <= width <= 0xFFFF and 1 <= height <= 0xFFFF):
        raise ValueError(f"image of {width}×{height} pixels is out of range")
    per_pixel = _PIXEL_BYTES[pixel_format]
    if per_pixel and len(data) != width * height * per_pixel:
        raise ValueError(
            f"{PixelFormat(pixel_format).name} {width}×{height} needs "
            f"{width * height * per_pixel} bytes, got {len(data)}"
        )
    if not data or len(data) > _U32:
        raise ValueError(f"image of {len(data)} bytes cannot be sent")
    if not 1 <= chunk_size <= MAX_CROP_CHUNK:
        raise ValueError(f"chunk size must be 1..{MAX_CROP_CHUNK}, got {chunk_size}")
    count = -(-len(data) // chunk_size)
    if count > 0xFFFF:
        raise ValueError(f"{len(data)} bytes need {count} chunks; at most 65535 fit")
    return [
        _CROP_HEADER.pack(crop_id & 0xFFFF, i, count, pixel_format, 0, width, height, len(data))
        + data[i * chunk_size : (i + 1) * chunk_size]
        for i in range(count)
    ]


def embedding_payload(
    model: str,
    values: npt.NDArray[np.floating],
    element_type: int = EmbeddingType.FLOAT32,
) -> bytes:
    """Serialize an EMBEDDING payload.

    Args:
        model: ``name@version`` of the model that computed the vector.
        values: The vector, any float dtype; converted to ``element_type``.
        element_type: How to send the values; int8 uses one symmetric scale (max |v| / 127).

    Raises:
        ValueError: The vector is empty, not 1-D, not finite or too long for one frame.
    """
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1 or not 1 <= vector.size <= 0xFFFF:
        raise ValueError(f"an embedding is a 1-D vector of 1..65535 values, got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("embedding values must be finite")
    dtype = _ELEMENT_DTYPES.get(element_type)
    if dtype is None:
        raise ValueError(f"unknown element type {element_type} (1 float32, 2 float16, 3 int8)")
    scale = 1.0
    body: bytes
    if element_type == EmbeddingType.INT8:
        peak = float(np.abs(vector).max())
        scale = peak / 127 if peak > 0 else 1.0
        body = np.clip(np.rint(vector / scale), -127, 127).astype(dtype).tobytes()
    else:
        body = vector.astype(dtype).tobytes()
    payload = (
        _short_text(model, "model reference")
        + _EMBEDDING_HEAD.pack(element_type, 0, vector.size, scale)
        + body
    )
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"embedding of {vector.size} values does not fit in one frame")
    return payload


# --------------------------------------------------------------------------------------------
# Decoding (the gateway side)
# --------------------------------------------------------------------------------------------


@dataclass
class DecoderStats:
    """What a :class:`Decoder` has seen; every byte fed is either in a frame or counted here.

    Attributes:
        bytes_in: Bytes passed to :meth:`Decoder.feed`.
        frames_ok: Frames delivered to the caller.
        crc_errors: Frames rejected by the CRC check; this includes frames with an invalid
            escape sequence, which can only come from corruption on the link.
        malformed: Fragments shorter than a header plus CRC, and frames with a valid CRC but a
            wrong version byte or a payload length that disagrees with the frame size.
        oversize: Frames, or unterminated runs of bytes, larger than :data:`MAX_FRAME` allows.
        resyncs: Times the decoder lost sync and skipped bytes to reach the next valid frame;
            a run of consecutive rejected frames counts once.
        unknown_types: Valid frames of a reserved type; skipped, but their seq is tracked.
        seq_gaps: Gap events: a frame whose seq jumped forward by more than one.
        frames_lost: Sum of the missing sequence numbers over all gap events.
        duplicates: Frames whose seq repeated or went backwards. Such frames are dropped,
            except HELLO, which is delivered because it marks a device restart.
        restarts: HELLO frames whose seq repeated or went backwards; the stream's sequence
            tracking restarts from them.
    """

    bytes_in: int = 0
    frames_ok: int = 0
    crc_errors: int = 0
    malformed: int = 0
    oversize: int = 0
    resyncs: int = 0
    unknown_types: int = 0
    seq_gaps: int = 0
    frames_lost: int = 0
    duplicates: int = 0
    restarts: int = 0


class Decoder:
    """Incremental v1 decoder for one byte stream (one serial port or BLE characteristic).

    Feed it whatever the link read; it returns the complete valid frames, keeps a partial
    frame between calls and never raises on any input. It also tracks the sequence number of
    each stream so every delivered :class:`Frame` carries ``gap``, the number of frames lost
    just before it.

    Attributes:
        stats: Running counters; see :class:`DecoderStats`.
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        # Unterminated bytes, kept as pieces so many small reads of one big frame are joined
        # once (a bytes += per read would copy the frame again on every read).
        self._tail: list[bytes] = []
        self._tail_size = 0
        # Bytes before the first END (a reader opening mid-frame) or after an overlong run are
        # not a frame error, just a resync; _presync marks that the next chunk is such bytes.
        self._presync = True
        self._in_sync = True
        self._last_seq: dict[int, int] = {}

    def reset(self) -> None:
        """Forget a partial frame, e.g. after the link reconnected.

        Sequence tracking is kept on purpose, so frames lost while the link was down still show
        up as a gap on the first frame after the reconnect.
        """
        self._tail.clear()
        self._tail_size = 0
        self._presync = True

    def last_seq(self, stream_id: int) -> int | None:
        """Return the seq of the last frame accepted on a stream, or None if none was seen."""
        return self._last_seq.get(stream_id)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume bytes from the link and return the frames they completed, in order.

        Any buffer type is accepted (BLE stacks hand out bytearrays); frames always carry
        immutable ``bytes`` payloads.
        """
        if type(data) is not bytes:
            data = bytes(data)
        stats = self.stats
        stats.bytes_in += len(data)
        tail = self._tail
        if END not in data:
            if data:
                tail.append(data)
                self._tail_size += len(data)
                if self._tail_size > _MAX_ESCAPED:
                    self._drop_tail()
            return []
        if tail:
            tail.append(data)
            data = b"".join(tail)
            tail.clear()
        chunks = data.split(END)
        # The last piece is not terminated yet; keep it for the next call.
        rest = chunks.pop()
        self._tail_size = len(rest)
        if rest:
            tail.append(rest)

        frames: list[Frame] = []
        append = frames.append
        last_seq = self._last_seq
        quiet = self._presync
        self._presync = False
        for chunk in chunks:
            if not chunk:  # back-to-back END bytes, the normal frame start
                quiet = False
                continue
            # Unescape ESC_END before ESC_ESC. In a valid frame every ESC starts a pair, so
            # the first pass only matches real ESC_END pairs (the DD of an ESC_ESC pair is never
            # a DC). The reverse order is wrong: data bytes DB DC travel as DB DD DC, and
            # turning DB DD into DB first would create a false DB DC that then became C0.
            # An ESC followed by any other byte is left as is; the CRC then rejects the frame.
            body = chunk.replace(ESC_END, END).replace(ESC_ESC, ESC)
            size = len(body)
            if size < _OVERHEAD or size > MAX_FRAME or zlib.crc32(body) != _CRC_RESIDUE:
                self._reject(body, quiet)
                quiet = False
                continue
            version, frame_type, stream_id, _flags, seq, timestamp_us, length = _HEADER.unpack_from(
                body
            )
            if version != VERSION or length != size - _OVERHEAD:
                self._reject(body, quiet)
                quiet = False
                continue
            quiet = False
            self._in_sync = True

            last = last_seq.get(stream_id)
            gap = 0
            if last is not None:
                delta = (seq - last) & _U32
                if delta != 1:
                    if delta == 0 or delta >= _HALF_U32:
                        stats.duplicates += 1
                        if frame_type != FrameType.HELLO:
                            continue
                        stats.restarts += 1
                    else:
                        gap = delta - 1
                        stats.seq_gaps += 1
                        stats.frames_lost += gap
            last_seq[stream_id] = seq

            if frame_type not in _KNOWN_TYPES:
                stats.unknown_types += 1
                continue
            append(
                Frame(
                    frame_type, stream_id, seq, timestamp_us, body[HEADER_SIZE:-_CRC_SIZE], gap=gap
                )
            )
        stats.frames_ok += len(frames)
        if self._tail_size > _MAX_ESCAPED:
            self._drop_tail()
        return frames

    def _reject(self, body: bytes, quiet: bool) -> None:
        """Count a chunk that is not a valid frame (rare path, kept out of the loop)."""
        stats = self.stats
        if not quiet:
            size = len(body)
            if size > MAX_FRAME:
                stats.oversize += 1
            elif size < _OVERHEAD:
                stats.malformed += 1
            elif zlib.crc32(body) != _CRC_RESIDUE:
                stats.crc_errors += 1
            else:
                stats.malformed += 1
        if self._in_sync:
            stats.resyncs += 1
            self._in_sync = False

    def _drop_tail(self) -> None:
        """Discard an unterminated run that is already too long to be a frame."""
        self.stats.oversize += 1
        if self._in_sync:
            self.stats.resyncs += 1
            self._in_sync = False
        self._tail.clear()
        self._tail_size = 0
        # What follows up to the next END is the rest of the same run: skip it silently.
        self._presync = True


@dataclass
class CropStats:
    """What a :class:`CropAssembler` has seen.

    Attributes:
        chunks: FACE_CROP frames fed.
        crops: Images completed.
        incomplete: Images abandoned because a chunk was lost, came out of order, another
            image started first or the rest did not arrive in time.
        oversize: Images larger than the assembler accepts.
        malformed: Chunks whose payload is invalid (see :meth:`Frame.crop_chunk`).
    """

    chunks: int = 0
    crops: int = 0
    incomplete: int = 0
    oversize: int = 0
    malformed: int = 0


@dataclass
class _Partial:
    first: CropChunk
    parts: list[bytes]
    size: int
    timestamp_us: int
    seq: int
    started: float


class CropAssembler:
    """Joins FACE_CROP chunks into whole images, per stream; never raises on bad input.

    Chunks of an image are sent back to back in index order, so an image is complete when
    its last chunk arrives after all the others; a lost chunk (a seq gap on the stream), a
    chunk out of order, a different image starting or a timeout abandons the image, counted
    in ``stats.incomplete``. Memory is bounded by ``max_bytes`` per stream.

    Args:
        max_bytes: Largest image accepted.
        timeout_s: An image whose chunks stop arriving for this long is abandoned.
    """

    def __init__(self, max_bytes: int = MAX_CROP_BYTES, timeout_s: float = 2.0) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.stats = CropStats()
        self._partial: dict[int, _Partial] = {}
        # Per stream, the id of an image already counted as incomplete: its remaining
        # chunks are skipped quietly, so one lost image counts once.
        self._skipping: dict[int, int] = {}
        self.last_error: str | None = None

    def feed(self, frame: Frame, now: float) -> FaceCrop | None:
        """Take one FACE_CROP frame (``now``: host monotonic seconds); returns a finished image."""
        stats = self.stats
        stats.chunks += 1
        stream = frame.stream_id
        partial = self._partial.get(stream)
        if partial is not None and (frame.gap or now - partial.started > self.timeout_s):
            self._abandon(stream, "a chunk was lost" if frame.gap else "chunks stopped arriving")
            partial = None
        try:
            chunk = frame.crop_chunk()
        except ProtocolError as err:
            stats.malformed += 1
            self.last_error = str(err)
            if partial is not None:
                self._abandon(stream, "a malformed chunk arrived")
            return None
        if chunk.total_bytes > self.max_bytes:
            stats.oversize += 1
            self.last_error = (
                f"image of {chunk.total_bytes} bytes exceeds the {self.max_bytes}-byte limit"
            )
            if partial is not None:
                self._abandon(stream, "an oversize image started")
            return None
        if partial is not None:
            first = partial.first
            same = (
                chunk.crop_id == first.crop_id
                and chunk.count == first.count
                and chunk.index == len(partial.parts)
                and (chunk.pixel_format, chunk.width, chunk.height, chunk.total_bytes)
                == (first.pixel_format, first.width, first.height, first.total_bytes)
            )
            if not same:
                self._abandon(stream, f"chunk {chunk.index} of image {chunk.crop_id} broke in")
                partial = None
        if partial is None:
            if chunk.index != 0:
                if self._skipping.get(stream) != chunk.crop_id:
                    self._skipping[stream] = chunk.crop_id
                    stats.incomplete += 1
                    self.last_error = f"image {chunk.crop_id} arrived without its first chunk"
                return None
            self._skipping.pop(stream, None)
            partial = _Partial(chunk, [], 0, frame.timestamp_us, frame.seq, now)
            self._partial[stream] = partial
        partial.parts.append(chunk.data)
        partial.size += len(chunk.data)
        if partial.size > chunk.total_bytes:
            self._abandon(stream, f"image {chunk.crop_id} has more bytes than announced")
            return None
        if chunk.index + 1 < chunk.count:
            return None
        del self._partial[stream]
        if partial.size != chunk.total_bytes:
            stats.incomplete += 1
            self.last_error = (
                f"image {chunk.crop_id} ended at {partial.size} of {chunk.total_bytes} bytes"
            )
            return None
        stats.crops += 1
        return FaceCrop(
            stream,
            chunk.crop_id,
            chunk.pixel_format,
            chunk.width,
            chunk.height,
            b"".join(partial.parts),
            partial.timestamp_us,
            partial.seq,
        )

    def _abandon(self, stream: int, reason: str) -> None:
        partial = self._partial.pop(stream, None)
        if partial is not None:
            self._skipping[stream] = partial.first.crop_id
        self.stats.incomplete += 1
        self.last_error = reason


def iter_frames(chunks: Iterable[bytes], decoder: Decoder | None = None) -> Iterator[Frame]:
    """Decode an iterable of byte chunks (a recording, a file read in blocks) frame by frame.

    Args:
        chunks: Byte chunks in stream order; boundaries need not align with frames.
        decoder: Decoder to use, e.g. to inspect its stats afterwards; a new one by default.
    """
    decoder = Decoder() if decoder is None else decoder
    for chunk in chunks:
        yield from decoder.feed(chunk)
