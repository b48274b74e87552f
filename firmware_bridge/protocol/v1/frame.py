"""One decoded frame of protocol v1, with its payload parsed on demand."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from firmware_bridge.protocol.v1.payloads import (
    ChannelInfo,
    CropChunk,
    Embedding,
    Hello,
    Status,
    _PayloadReader,
)
from firmware_bridge.protocol.v1.wire import (
    _BATTERY_UNKNOWN,
    _CHANNEL_SCALE,
    _CROP_HEADER,
    _ELEMENT_DTYPES,
    _EMBEDDING_HEAD,
    _HELLO_TAIL,
    _IMU_HEADER,
    _PIXEL_BYTES,
    _STATUS,
    _TEMPERATURE_UNKNOWN,
    EmbeddingType,
    FrameType,
    PixelFormat,
    ProtocolError,
)

__all__ = ["Frame"]


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
