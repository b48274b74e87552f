"""Encoding protocol v1: what the firmware does (used by the emulator, tests and replay tools)."""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from firmware_bridge.protocol.v1.payloads import Hello, Status
from firmware_bridge.protocol.v1.wire import (
    _BATTERY_UNKNOWN,
    _CHANNEL_SCALE,
    _CRC,
    _CROP_HEADER,
    _ELEMENT_DTYPES,
    _EMBEDDING_HEAD,
    _HEADER,
    _HELLO_TAIL,
    _IMU_HEADER,
    _PIXEL_BYTES,
    _STATUS,
    _TEMPERATURE_UNKNOWN,
    _U32,
    END,
    ESC,
    ESC_END,
    ESC_ESC,
    MAX_CROP_CHUNK,
    MAX_PAYLOAD,
    VERSION,
    EmbeddingType,
    PixelFormat,
)

__all__ = [
    "embedding_payload",
    "encode_frame",
    "face_crop_payloads",
    "hello_payload",
    "imu_payload",
    "status_payload",
]


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
