"""Protocol v1 on the wire: sizes, limits, frame types, byte layouts and the error type."""

from __future__ import annotations

import enum
import struct
from typing import Any

import numpy as np

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
    "EmbeddingType",
    "FrameType",
    "PixelFormat",
    "ProtocolError",
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


_PIXEL_BYTES: dict[int, int] = {PixelFormat.GRAY8: 1, PixelFormat.RGB888: 3, PixelFormat.JPEG: 0}
